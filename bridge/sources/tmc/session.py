"""Sans-I/O TMC client session: frames in, events and frames out (docs/protocol.md
§5-§6).

:class:`ClientSession` is what the bridge speaks (the simulator's side is
:mod:`bridge.sources.tmc.server`). It touches no socket, clock or asyncio: the caller
passes the current time where the protocol needs it, so it is tested with bytes alone.
Frames are composed from :mod:`~bridge.sources.tmc.codec` pieces; the byte layout is
the codec's alone. A push is validated field by field here (:func:`int_field`,
:func:`str_field`, the gzip content): a bad field marks the message malformed.
"""

from __future__ import annotations

import enum
import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from bridge.errors import FrameError, LoginError, ProtocolError
from bridge.model import SourceMessage
from bridge.numbers import INT64_MAX, INT64_MIN, MAX_TIME_MS, decimal_int64
from bridge.sources.tmc import codec
from bridge.sources.tmc.codec import Fmt, Frame, MessageType, Value


class Kind(enum.IntEnum):
    """Values of the ``__kind`` Custom key (§6)."""

    NONE = 0
    PULL_REQUEST = 1
    CONFIRM = 2
    DATA = 3
    FAILED = 20


#: The recent Java SDK truncates the Failed reason to 128 characters (§6.3).
FAILED_MSG_MAX = 128


def sign(secret: str, app_key: str, group_name: str, timestamp: str) -> str:
    """CONNECT ``sign`` (§5.3): upper hex MD5 of secret + sorted key/value pairs + secret."""
    base = f"{secret}app_key{app_key}group_name{group_name}timestamp{timestamp}{secret}"
    # MD5 is what the platform mandates here; it is a signature scheme, not our choice.
    return hashlib.md5(base.encode("utf-8"), usedforsecurity=False).hexdigest().upper()


@dataclass(frozen=True, slots=True)
class LoggedIn:
    token: str


@dataclass(frozen=True, slots=True)
class Push:
    message: SourceMessage
    #: Delivery attempt counter sent by the server (``retried``), when present.
    retried: int | None = None


@dataclass(frozen=True, slots=True)
class Ignored:
    """A frame that is valid but carries nothing for us (logged by the driver)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A data push that can never be confirmed (no id, or one that is not an int64):
    it cannot be dead-lettered either, so the driver logs it and skips the frame.
    ``message_id`` is the id's text as received, when there was one, for the log."""

    reason: str
    message_id: str | None = None


ClientEvent = LoggedIn | Push | Ignored | Rejected

#: CONNECT ``minor_group`` and ``filter_exp`` as the official Java client sends them (§5.2).
DEFAULT_MINOR_GROUP = "default"
DEFAULT_FILTER_EXP = "*"
#: Default for the inflated size of gzip ByteArray content (source.tmc.max_content_bytes).
DEFAULT_MAX_CONTENT_BYTES = 4 * 1024 * 1024
#: ``content`` is kept as the bytes received, never decoded and re-encoded.
_RAW_STRINGS = frozenset({"content"})


class State(enum.Enum):
    IDLE = "idle"
    AWAIT_CONNECTACK = "await_connectack"
    ONLINE = "online"


class ClientSession:
    """One TMC login at a time. Call :meth:`connect` for every new socket.

    The Flag counter survives reconnects (1, 2, 3 ...), like the Java SDK's, so a late
    CONNECTACK from an old socket can never be taken for the current one (§5.4).
    """

    def __init__(
        self,
        app_key: str,
        app_secret: str,
        group_name: str,
        *,
        sdk: str = "tmc-bridge",
        intranet_ip: str | None = None,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
        minor_group: str = DEFAULT_MINOR_GROUP,
        filter_exp: str = DEFAULT_FILTER_EXP,
    ) -> None:
        self.app_key = app_key
        self.minor_group = minor_group
        self.filter_exp = filter_exp
        self.max_content_bytes = max_content_bytes
        self._secret = app_secret
        self.group_name = group_name
        self.sdk = sdk
        self.intranet_ip = intranet_ip
        self.state = State.IDLE
        self.token: str | None = None
        self._flag = 0
        # The SEND head of the current login, built by the codec once per login: confirms
        # are one per message (§6.2) and only append the id to prebuilt parts.
        self._send_head = b""

    def connect(
        self, now_ms: int, *, intranet_ip: str | None = None, token: str | None = None
    ) -> bytes:
        """The CONNECT frame for a new socket; forgets any previous session token (§8.3).

        It carries the keys the official Java client 2.0.0 sends, in the order its map
        writes them: ``app_key``, ``group_name``, ``filter_exp``, ``minor_group``,
        ``sign``, ``sdk``, ``intranet_ip``, ``timestamp`` and ``token``: the auth token
        from ``taobao.tmc.auth.get`` as a String when the caller has one, else Void (as
        that client sends it off production). ``intranet_ip`` (the socket's local
        address, when the caller knows it) overrides the one given at construction; with
        neither it is left out. Neither ``token`` nor ``intranet_ip`` is signed (§5.3).
        """
        self._flag += 1
        self.token = None
        self.state = State.AWAIT_CONNECTACK
        timestamp = str(now_ms)
        custom: dict[str, Value] = {
            "app_key": codec.string(self.app_key),
            "group_name": codec.string(self.group_name),
            "filter_exp": codec.string(self.filter_exp),
            "minor_group": codec.string(self.minor_group),
            "sign": codec.string(sign(self._secret, self.app_key, self.group_name, timestamp)),
            "sdk": codec.string(self.sdk),
        }
        ip = intranet_ip or self.intranet_ip
        if ip:
            custom["intranet_ip"] = codec.string(ip)
        custom["timestamp"] = codec.string(timestamp)
        custom["token"] = codec.string(token) if token else Value(Fmt.VOID, None)
        return codec.encode(Frame(MessageType.CONNECT, flag=self._flag, custom=custom))

    def receive(self, data: bytes, *, received_ns: int = 0) -> ClientEvent:
        """Process one binary WebSocket message from the server.

        ``received_ns`` (a monotonic clock reading from the caller) is stamped on pushes.

        Raises FrameError (malformed bytes), LoginError (CONNECT refused) or ProtocolError
        (a frame that cannot be right in this state), and nothing else. Unknown extras
        are ignored. A push with a valid id never raises: whatever else is wrong with it
        becomes :attr:`SourceMessage.malformed`, so it is dead-lettered and confirmed.
        """
        frame = codec.decode(data, raw_strings=_RAW_STRINGS)
        return self._receive_frame(frame, received_ns)

    def receive_oversized(
        self, head: bytes, size: int, limit: int, *, received_ns: int = 0
    ) -> ClientEvent:
        """A frame of ``size`` bytes that was over ``limit`` and not read whole: ``head``
        holds its first bytes. When they carry a data push with a valid id, the push is
        returned marked malformed (dead-lettered with the reason, then confirmed, so it
        does not come back every few minutes); otherwise the frame is :class:`Rejected`.
        """
        reason = (
            f"frame of {size} bytes is over source.tmc.max_frame_bytes ({limit}); "
            "its content was not read"
        )
        if self.state is not State.ONLINE:
            raise ProtocolError(reason)
        try:
            frame = codec.decode_head(head, raw_strings=_RAW_STRINGS)
        except FrameError as exc:
            return Rejected(f"{reason} ({exc})")
        frame.custom.pop("content", None)
        event = self._receive_frame(frame, received_ns)
        if isinstance(event, Push):
            event.message.malformed = reason
        elif isinstance(event, Rejected):
            return Rejected(f"{reason}; {event.reason}", event.message_id)
        return event

    def _receive_frame(self, frame: Frame, received_ns: int) -> ClientEvent:  # noqa: PLR0911
        # The traffic first: a data push on the current login (once per message).
        if (
            frame.type is _SEND
            and self.state is _ONLINE
            and frame.token == self.token
            and frame.custom.get("__kind") == _KIND_DATA
        ):
            return _push_fast(frame, received_ns) or _push_from(
                frame, received_ns, self.max_content_bytes
            )
        if self.state is State.AWAIT_CONNECTACK:
            return self._on_connectack(frame)
        if self.state is not State.ONLINE:
            raise ProtocolError(f"{frame.type.name} received before CONNECT was sent")
        if frame.type is MessageType.SENDACK:
            if frame.status_code > 0 or frame.status_phrase:
                return Ignored(f"server error reply: {frame.status_code} {frame.status_phrase}")
            return Ignored("SENDACK")
        if frame.type is not MessageType.SEND:
            raise ProtocolError(f"unexpected {frame.type.name} while online")
        if frame.token != self.token:
            # The Java client closes the socket here; we keep it and drop the frame (§12).
            return Ignored("SEND with a foreign token")
        kind = frame.get("__kind")
        if kind == Kind.DATA or (kind is None and "topic" in frame.custom):
            return _push_fast(frame, received_ns) or _push_from(
                frame, received_ns, self.max_content_bytes
            )
        return Ignored(f"SEND with __kind={kind!r:.40}")

    def _on_connectack(self, frame: Frame) -> ClientEvent:
        if frame.type is not MessageType.CONNECTACK:
            raise ProtocolError(f"expected CONNECTACK, got {frame.type.name}")
        if frame.status_code > 0 or frame.status_phrase:
            self.state = State.IDLE
            raise LoginError(frame.status_code, frame.status_phrase)
        if frame.flag != self._flag:
            raise ProtocolError(f"CONNECTACK flag {frame.flag} does not echo {self._flag}")
        if not frame.token:
            raise ProtocolError("CONNECTACK without status and without token")
        self.token = frame.token
        self.state = State.ONLINE
        self._send_head = codec.send_head(frame.token)
        return LoggedIn(frame.token)

    def _online_head(self) -> bytes:
        if self.state is not State.ONLINE:
            raise ProtocolError("not logged in: nothing may be sent before CONNECTACK (§5.1)")
        return self._send_head

    def pull(self) -> bytes:
        """Pull request (§6.4, vector §7.5)."""
        return self._online_head() + _PULL_BODY

    def confirm(self, message_id: int) -> bytes:
        """Confirm one message id (§6.2, vector §7.4). Always Int64."""
        return self._online_head() + _CONFIRM_ID + _id_value(message_id) + _END

    def fail(self, message_id: int, reason: str | None) -> bytes:
        """Failed / nack (§6.3, vector §7.6): SEND with token, kind 20, id, msg <= 128 chars."""
        msg = codec.encode_custom("msg", codec.string(reason[:FAILED_MSG_MAX] if reason else None))
        return self._online_head() + _FAILED_ID + _id_value(message_id) + msg + _END

    def lost(self) -> None:
        """The socket is gone: drop the token; nothing may be sent until the next login."""
        self.state = State.IDLE
        self.token = None


# Constant frame parts, built by the codec once: a frame is a send head, these, the
# values and END_OF_HEADERS.
_END = codec.END_OF_HEADERS
_PULL_BODY = codec.encode_custom("__kind", codec.byte(Kind.PULL_REQUEST)) + _END
_CONFIRM_ID = codec.encode_custom("__kind", codec.byte(Kind.CONFIRM)) + codec.custom_head(
    "id", Fmt.INT64
)
_FAILED_ID = codec.encode_custom("__kind", codec.byte(Kind.FAILED)) + codec.custom_head(
    "id", Fmt.INT64
)


def _id_value(message_id: int) -> bytes:
    # Pushes are validated on arrival, so only a bug gets here; it must not be a
    # struct.error that ends the connection task (or the pipeline confirming it).
    try:
        return codec.int64_value(message_id)
    except FrameError:
        raise ProtocolError(
            f"message id {message_id} does not fit Int64; cannot confirm it"
        ) from None


_F = TypeVar("_F")


class _BadField(ProtocolError):
    """One field of a push has a value the bridge cannot take (the reason is the text)."""


def int_field(frame: Frame, key: str) -> int | None:
    """An integer field: any integer format, or a String of ASCII digits within Int64;
    None when absent or Void. Anything else raises ProtocolError (the reason).

    Fixed-width formats fit Int64 by construction; a String is read by
    :func:`~bridge.numbers.decimal_int64`.
    """
    value = frame.custom.get(key)
    if value is None or value.data is None:
        return None
    data = value.data
    if isinstance(data, int):
        return data
    if value.fmt is Fmt.STRING:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        number = decimal_int64(text)
        if number is not None:
            return number
        raise _BadField(f"field {key!r} is the String {text[:40]!r}, not a decimal Int64")
    raise _BadField(f"field {key!r} has format {value.fmt.name}, expected an integer")


def str_field(frame: Frame, key: str) -> str | None:
    """A String field (an integer one as its text); None when absent or Void. A ByteArray
    raises ProtocolError (the reason)."""
    data = frame.get(key)
    if data is None or isinstance(data, str):
        return data
    if isinstance(data, bytes):
        raise _BadField(f"field {key!r} is a ByteArray, expected a String")
    return str(data)


def _inflate(raw: bytes, limit: int) -> bytes:
    """Gunzip ``raw``, refusing to produce more than ``limit`` bytes: a small bomb must
    not take the pod's memory. Like Java's GZIPInputStream, concatenated members are
    read in turn and bytes after the last member that do not start another one are
    ignored."""
    out: list[bytes] = []
    total = 0
    data = raw
    for _member in range(_GZIP_MAX_MEMBERS):
        inflater = zlib.decompressobj(wbits=31)
        chunk = inflater.decompress(data, limit - total + 1)
        total += len(chunk)
        if total > limit or inflater.unconsumed_tail:
            raise _BadField(
                f"gzip content inflates to more than source.tmc.max_content_bytes ({limit})"
            )
        out.append(chunk)
        if not inflater.eof:
            raise _BadField("gzip content is truncated")
        data = inflater.unused_data
        if not data.startswith(_GZIP_MAGIC):
            return b"".join(out)
    # Each member copies what follows it (unused_data): many tiny members would cost
    # time quadratic in the frame size, on the event loop. Real content has one.
    raise _BadField(f"gzip content has more than {_GZIP_MAX_MEMBERS} members")


_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_MAX_MEMBERS = 16


def _content(frame: Frame, limit: int) -> bytes:
    value = frame.custom.get("content")
    if value is None or value.data is None:
        return b""
    data = value.data
    if value.fmt is Fmt.STRING:
        # Kept undecoded by the codec: forwarded byte for byte (raw_strings).
        return data if isinstance(data, bytes) else str(data).encode()
    if value.fmt is Fmt.BYTE_ARRAY and isinstance(data, bytes):
        # ByteArray content is gzip-compressed UTF-8 JSON (§4.5, §6.1).
        try:
            return _inflate(data, limit)
        except zlib.error as exc:
            raise _BadField(f"content is a ByteArray that is not gzip: {exc}") from None
    raise _BadField(f"content has format {value.fmt.name}, expected a String or gzip ByteArray")


_STRING, _BYTE_ARRAY = Fmt.STRING, Fmt.BYTE_ARRAY
_SEND, _ONLINE = MessageType.SEND, State.ONLINE
#: ``__kind`` 3 as the codec reads it (a Byte).
_KIND_DATA = Value(Fmt.BYTE, Kind.DATA)
_VOID = Value(Fmt.VOID, None)


def _push_fast(frame: Frame, received_ns: int) -> Push | None:
    """:func:`_push_from` for a push whose every field has its canonical format (what TMC
    sends): integer fields integers, text fields strings, the content a String, the time a
    date. None for anything else, which :func:`_push_from` then reads field by field
    with its reasons. Same result, without a function call per field."""
    get = frame.custom.get
    message_id = get("id", _VOID).data
    topic = get("topic", _VOID)
    content = get("content", _VOID)
    if (
        type(message_id) is not int
        or topic.fmt is not _STRING
        or not topic.data
        or content.fmt is not _STRING
    ):
        return None
    publish_time = get("time", _VOID).data
    data_id = get("dataid", _VOID).data
    if data_id is None:
        data_id = get("data_id", _VOID).data
    user_id = get("userid", _VOID).data
    retried = get("retried", _VOID).data
    publisher = get("publisher", _VOID)
    nick = get("nick", _VOID)
    if (
        (
            publish_time is not None
            and (type(publish_time) is not int or not 0 <= publish_time <= MAX_TIME_MS)
        )
        or (data_id is not None and type(data_id) is not int)
        or (user_id is not None and type(user_id) is not int)
        or (retried is not None and type(retried) is not int)
        or (publisher.data is not None and publisher.fmt is not _STRING)
        or (nick.data is not None and nick.fmt is not _STRING)
        or type(content.data) is not bytes
        or type(topic.data) is not str
    ):
        return None
    return Push(
        SourceMessage(
            "tmc",
            message_id,
            topic.data,
            content.data,
            publish_time,
            publisher.data,  # type: ignore[arg-type]  # checked: a String
            user_id,
            nick.data,  # type: ignore[arg-type]  # checked: a String
            data_id,
            None,
            received_ns,
        ),
        retried,
    )


def _push_from(frame: Frame, received_ns: int, max_content_bytes: int) -> Push | Rejected:
    """A data push -> SourceMessage. Without a valid id it is Rejected (nothing can
    confirm it); any other bad field marks it malformed (dead-lettered, then confirmed).
    The first problem found is the reason; the message keeps whatever else was valid."""
    try:
        message_id = int_field(frame, "id")
    except _BadField as exc:
        return Rejected(f"data push not confirmable: {exc}", _raw_text(frame, "id"))
    if message_id is None:
        return Rejected("data push without an id: it could never be confirmed")
    problems: list[str] = []

    def field(read: Callable[[Frame, str], _F], key: str) -> _F | None:
        try:
            return read(frame, key)
        except _BadField as exc:
            problems.append(str(exc))
            return None

    topic = field(str_field, "topic")
    if not topic:
        problems.append("data push without a topic")
        topic = "unknown"
    try:
        content = _content(frame, max_content_bytes)
    except _BadField as exc:
        problems.append(str(exc))
        raw = frame.get("content")
        content = raw if isinstance(raw, bytes) else b""
    publish_time = field(int_field, "time")
    if publish_time is not None and not 0 <= publish_time <= MAX_TIME_MS:
        problems.append(f"field 'time' is {publish_time}, not a date (ms since 1970)")
        publish_time = None
    data_id = field(int_field, "dataid")
    if data_id is None:
        data_id = field(int_field, "data_id")
    user_id = field(int_field, "userid")
    publisher = field(str_field, "publisher")
    nick = field(str_field, "nick")
    # Counted only, never written anywhere: a bad value is dropped, not a reason.
    try:
        retried = int_field(frame, "retried")
    except _BadField:
        retried = None
    return Push(
        SourceMessage(
            source="tmc",
            message_id=message_id,
            topic=topic,
            content=content,
            publish_time_ms=publish_time,
            publisher=publisher,
            user_id=user_id,
            nick=nick,
            data_id=data_id,
            malformed=problems[0] if problems else None,
            received_ns=received_ns,
        ),
        retried=retried,
    )


def _raw_text(frame: Frame, key: str) -> str | None:
    data = frame.get(key)
    if data is None:
        return None
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    return text[:40]


__all__ = [
    "DEFAULT_FILTER_EXP",
    "DEFAULT_MAX_CONTENT_BYTES",
    "DEFAULT_MINOR_GROUP",
    "FAILED_MSG_MAX",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_TIME_MS",
    "ClientEvent",
    "ClientSession",
    "Ignored",
    "Kind",
    "LoggedIn",
    "Push",
    "Rejected",
    "State",
    "int_field",
    "sign",
    "str_field",
]
