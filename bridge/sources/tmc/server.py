"""Sans-I/O TMC server session: the simulator's side of one socket (shared/tmc-protocol.md
§5-§6, §11).

:class:`ServerSession` takes the client's frames and answers them; :func:`push_body`
(:func:`push_static` once per message, :func:`push_extras` per attempt) encodes the
Custom entries of a data push in the canonical formats. Like the client's
:mod:`~bridge.sources.tmc.session`, it touches no socket, clock or asyncio, and leaves
the byte layout to :mod:`~bridge.sources.tmc.codec`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from bridge.errors import ProtocolError
from bridge.sources.tmc import codec
from bridge.sources.tmc.codec import Fmt, Frame, MessageType, Value
from bridge.sources.tmc.session import Kind, sign, str_field


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    app_key: str
    group_name: str
    timestamp: str
    flag: int
    sign_ok: bool
    sdk: str | None


@dataclass(frozen=True, slots=True)
class PullRequest:
    pass


@dataclass(frozen=True, slots=True)
class Confirm:
    message_id: int


@dataclass(frozen=True, slots=True)
class Failed:
    message_id: int
    reason: str | None


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    content: str
    flag: int


ServerEvent = ConnectRequest | PullRequest | Confirm | Failed | Publish


class ServerSession:
    """The server side of one socket (simulator, §11): AWAIT_CONNECT -> ONLINE.

    ``secrets`` maps app keys to secrets; an unknown app key fails the sign check.
    ``strict`` requires the token on every SEND and Int64 ids; lenient mode accepts the
    variants seen in the wild (§6.3: Failed as SENDACK or without token).
    """

    def __init__(self, secrets: dict[str, str], *, strict: bool = False) -> None:
        self._secrets = secrets
        self.strict = strict
        self.token: str | None = None
        self.app_key: str | None = None
        self.group_name: str | None = None
        self.version = codec.PROTOCOL_VERSION
        self._push_head = b""

    @property
    def online(self) -> bool:
        return self.token is not None

    def receive(self, data: bytes) -> ServerEvent:
        frame = codec.decode(data, strict_utf8=True)
        if not self.online:
            if frame.type is not MessageType.CONNECT:
                raise ProtocolError(f"expected CONNECT, got {frame.type.name}")
            return self._connect_request(frame)
        if frame.type is MessageType.CONNECT:
            raise ProtocolError("only allow sinle endpoint connected on a channel")  # sic, §5.5
        if frame.type not in (MessageType.SEND, MessageType.SENDACK):
            raise ProtocolError(f"unexpected {frame.type.name} from a client")
        if frame.token != self.token and (self.strict or frame.token is not None):
            raise ProtocolError("SEND with a wrong or missing token")
        kind = frame.custom.get("__kind")
        if kind is None:
            raise ProtocolError("SEND without __kind")
        if kind.fmt is not Fmt.BYTE and self.strict:
            raise ProtocolError(f"__kind has format {kind.fmt.name}, expected Byte")
        kind_value = _kind_value(kind.data)
        if kind_value == Kind.PULL_REQUEST:
            return PullRequest()
        if kind_value in (Kind.CONFIRM, Kind.FAILED):
            id_value = frame.custom.get("id")
            if id_value is None or not isinstance(id_value.data, int):
                raise ProtocolError("confirm/failed without an integer id")
            if self.strict and id_value.fmt is not Fmt.INT64:
                raise ProtocolError(f"id has format {id_value.fmt.name}, expected Int64")
            if kind_value == Kind.CONFIRM:
                return Confirm(id_value.data)
            return Failed(id_value.data, str_field(frame, "msg"))
        if kind_value == Kind.DATA:
            return Publish(
                str_field(frame, "topic") or "", str_field(frame, "content") or "", frame.flag
            )
        raise ProtocolError(f"unknown __kind {kind.data!r}")

    def _connect_request(self, frame: Frame) -> ConnectRequest:
        self.version = frame.version
        fields = {}
        for key in ("app_key", "group_name", "timestamp", "sign"):
            value = str_field(frame, key)
            if not value:
                raise ProtocolError(f"CONNECT without {key!r}")
            fields[key] = value
        secret = self._secrets.get(fields["app_key"])
        # Bytes, not str: compare_digest refuses non-ASCII text, and a sign is whatever
        # the client sent.
        sign_ok = secret is not None and hmac.compare_digest(
            sign(secret, fields["app_key"], fields["group_name"], fields["timestamp"]).encode(),
            fields["sign"].upper().encode("utf-8", "replace"),
        )
        return ConnectRequest(
            app_key=fields["app_key"],
            group_name=fields["group_name"],
            timestamp=fields["timestamp"],
            flag=frame.flag,
            sign_ok=sign_ok,
            sdk=str_field(frame, "sdk"),
        )

    def accept(self, request: ConnectRequest, token: str) -> bytes:
        """CONNECTACK success: the CONNECT's Flag echoed and a token (§5.4)."""
        self.token = token
        self.app_key = request.app_key
        self.group_name = request.group_name
        self._push_head = codec.send_head(token, self.version) + _KIND_DATA
        return codec.encode(
            Frame(MessageType.CONNECTACK, version=self.version, flag=request.flag, token=token)
        )

    def reject(self, flag: int, status_code: int, status_phrase: str) -> bytes:
        """CONNECTACK failure: StatusCode/StatusPhrase, Flag echoed, no token (§5.5)."""
        return codec.encode(
            Frame(
                MessageType.CONNECTACK,
                version=self.version,
                status_code=status_code,
                status_phrase=status_phrase,
                flag=flag,
            )
        )

    def push(self, body: bytes) -> bytes:
        """A data push: token + ``__kind`` 3 + the Custom entries from :func:`push_body`."""
        if not self.online:
            raise ProtocolError("cannot push before the session is online")
        return self._push_head + body + codec.END_OF_HEADERS


def _kind_value(data: object) -> int:
    """``__kind`` as an int: any integer format, or (lenient, tmc.js style) a String of
    one or two ASCII digits; anything else is -1, an unknown kind."""
    if isinstance(data, int):
        return data
    if isinstance(data, str) and 0 < len(data) <= 2 and data.isascii() and data.isdigit():
        return int(data)
    return -1


def push_static(
    message_id: int,
    topic: str,
    content: str | bytes,
    *,
    publish_time_ms: int,
    publisher: str,
    user_id: int,
    nick: str,
    data_id: int | None,
) -> bytes:
    """The Custom entries of a push that do not change between attempts, in the canonical
    formats of §4.5 / §6.1 (``id`` Int64, ``time`` Date, ...). Encoded once per message."""
    parts = [
        codec.encode_custom("id", codec.int64(message_id)),
        codec.encode_custom("topic", codec.string(topic)),
        codec.encode_custom(
            "content",
            Value(Fmt.BYTE_ARRAY, content) if isinstance(content, bytes) else codec.string(content),
        ),
        codec.encode_custom("time", codec.date_ms(publish_time_ms)),
        codec.encode_custom("publisher", codec.string(publisher)),
        codec.encode_custom("userid", codec.int64(user_id)),
        codec.encode_custom("nick", codec.string(nick)),
    ]
    if data_id is not None:
        parts.append(codec.encode_custom("dataid", codec.int64(data_id)))
    return b"".join(parts)


_KIND_DATA = codec.encode_custom("__kind", codec.byte(Kind.DATA))
_OUTTIME_HEAD = codec.custom_head("outtime", Fmt.DATE)
_RETRIED_HEAD = codec.custom_head("retried", Fmt.BYTE)


def push_extras(out_time_ms: int, retried: int | None = None) -> bytes:
    """The per-attempt entries: ``outtime`` (Date) and, on redelivery, ``retried`` (Byte)."""
    extra = _OUTTIME_HEAD + codec.int64_value(out_time_ms)
    if retried is not None:
        extra += _RETRIED_HEAD + codec.byte_value(min(retried, 127))
    return extra


def push_body(
    message_id: int,
    topic: str,
    content: str | bytes,
    *,
    publish_time_ms: int,
    out_time_ms: int,
    publisher: str,
    user_id: int,
    nick: str,
    data_id: int | None,
    retried: int | None = None,
) -> bytes:
    """All Custom entries of one push attempt (static part + per-attempt part)."""
    return push_static(
        message_id,
        topic,
        content,
        publish_time_ms=publish_time_ms,
        publisher=publisher,
        user_id=user_id,
        nick=nick,
        data_id=data_id,
    ) + push_extras(out_time_ms, retried)


__all__ = [
    "Confirm",
    "ConnectRequest",
    "Failed",
    "Publish",
    "PullRequest",
    "ServerEvent",
    "ServerSession",
    "push_body",
    "push_extras",
    "push_static",
]
