"""Sans-I/O TMC server session: the simulator's side of one socket (docs/protocol.md
§5-§6, §10-§11, §14).

:class:`ServerSession` takes the client's frames and decides what to answer.
:meth:`ServerSession.handle` is the whole decision for one frame: a :class:`Decision`
holds the bytes to send back (if any), whether to close the socket, the request the
simulator has to act on (a :data:`ServerEvent`) and the facts to log and count: a stable
``reason`` key and the :class:`Deviation` list, each naming the offending field.

Every CONNECT is answered: a CONNECTACK with a token, or a failed CONNECTACK (StatusCode
and StatusPhrase, the CONNECT's Flag echoed, no token). A publish ("To Taobao") that
carries a Flag gets its SENDACK, which the official Java client waits for.

Two modes. *Lenient* (the default) takes what real clients send although it is not the
canonical encoding: an ``id`` in a narrower integer format (tmcpy, PHP), a Failed without
token (PHP) or sent as SENDACK (tmc.js), a ``__kind`` written as a String, a sign in
lower-case hex. Each such departure is still reported (:attr:`Decision.tolerated`).
*Strict* (for client authors) refuses the frame instead and reports each departure as a
protocol error. Custom entries are a map in both modes: their order never matters.

:func:`push_body` (:func:`push_static` once per message, :func:`push_extras` per attempt)
encodes the Custom entries of a data push in the canonical formats;
:attr:`ServerSession.confirm_reader` takes the id out of the canonical confirm without a
full decode (any other frame goes to :meth:`~ServerSession.handle`). Like the client's
:mod:`~bridge.sources.tmc.session`, this module touches no socket, clock or asyncio and
leaves the byte layout to :mod:`~bridge.sources.tmc.codec`.

:meth:`ServerSession.receive` / :meth:`~ServerSession.accept` /
:meth:`~ServerSession.reject` are the older, lower-level interface (an event or a
:class:`~bridge.errors.TmcError`, the caller answers); they stay for callers that use it.
"""

from __future__ import annotations

import enum
import hmac
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bridge.errors import FrameError, ProtocolError
from bridge.sources.tmc import codec, sim_frames
from bridge.sources.tmc.codec import Fmt, Frame, MessageType
from bridge.sources.tmc.session import Kind, sign


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    app_key: str
    group_name: str
    timestamp: str
    flag: int
    sign_ok: bool
    sdk: str | None
    intranet_ip: str | None = None
    #: Protocol version byte of the CONNECT (the reply uses the same).
    version: int = codec.PROTOCOL_VERSION
    #: The secret is known for this app key (False: the sign could not be checked).
    app_known: bool = True
    #: The CONNECT's ``token`` (from ``taobao.tmc.auth.get``); None when Void or absent.
    auth_token: str | None = None


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
    """A client's publish ("To Taobao", kind 3 sent by the client)."""

    topic: str
    content: str
    flag: int
    #: The publisher's login: the simulator queues the message for this app and group.
    app_key: str = ""
    group_name: str = ""
    #: The optional user ``session`` the client attached (user-scoped topics).
    session: str | None = None


ServerEvent = ConnectRequest | PullRequest | Confirm | Failed | Publish


@dataclass(frozen=True, slots=True)
class Deviation:
    """One thing in a client frame that is not what the protocol asks for.

    ``field`` names the offending part: a Custom key (``id``, ``__kind``, ``sign`` ...),
    a header (``token``, ``flag``), ``type`` (the message type byte), ``version`` or
    ``frame`` (bytes that do not decode). ``reason`` is a stable key to count by
    (e.g. ``id_not_int64``); ``detail`` is the sentence for the log.
    """

    field: str
    reason: str
    detail: str


class Outcome(enum.StrEnum):
    #: A CONNECT was accepted: the session is online; ``reply`` is the CONNECTACK.
    LOGIN = "login"
    #: A login was refused: ``reply`` is the failed CONNECTACK.
    LOGIN_FAILED = "login_failed"
    #: A request to act on (``event``); ``reply`` is its SENDACK when one is due.
    REQUEST = "request"
    #: A frame refused after login; nothing to act on (``reply``: an error reply, if any).
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do about one client frame (:meth:`ServerSession.handle`)."""

    outcome: Outcome
    #: Stable key for logs and counters: ``ok``, or the reason of the refusal.
    reason: str = "ok"
    #: What the client asked for (a ConnectRequest also on a failed login, when the
    #: CONNECT could be read, so the log can name the app key and group).
    event: ServerEvent | None = None
    #: The frame to send back now, or None.
    reply: bytes | None = None
    #: Close the socket after sending ``reply``.
    close: bool = False
    #: Log sentence; empty when all went well.
    detail: str = ""
    #: Protocol errors: what made the frame refused (each counted once by reason).
    protocol_errors: tuple[Deviation, ...] = ()
    #: Departures accepted in lenient mode (the frame was acted on anyway).
    tolerated: tuple[Deviation, ...] = ()

    def log_fields(self) -> dict[str, object]:
        """Flat key/values for a structured log line."""
        out: dict[str, object] = {"outcome": str(self.outcome), "reason": self.reason}
        if self.detail:
            out["detail"] = self.detail
        if isinstance(self.event, ConnectRequest):
            out.update(app_key=self.event.app_key, group=self.event.group_name)
            if self.event.sdk:
                out["sdk"] = self.event.sdk
            if self.event.intranet_ip:
                out["intranet_ip"] = self.event.intranet_ip
        bad = self.protocol_errors or self.tolerated
        if bad:
            out["fields"] = ",".join(dict.fromkeys(d.field for d in bad))
        return out


#: StatusCode and StatusPhrase of each failed CONNECTACK, by reason. The real server's
#: codes are not public; every reason uses code 1 (any code > 0 is a failure to every
#: client). ``{field}`` and ``{detail}`` in a phrase are filled in. Override per
#: reason with ``ServerSession(login_errors=...)``.
LOGIN_ERRORS: Mapping[str, tuple[int, str]] = {
    # The phrase the official Java client reports as "LinkException: invalid sign".
    "invalid_sign": (1, "invalid sign"),
    "unknown_app_key": (1, "unknown app_key"),
    "missing_field": (1, "missing {field}"),
    "unsupported_version": (1, "unsupported protocol version {field}"),
    "malformed_frame": (1, "malformed frame: {detail}"),
    "send_before_login": (1, "not connected: send CONNECT first"),
    # top-link's refusal of a second login on one socket, misspelling included.
    "second_connect": (1, "only allow sinle endpoint connected on a channel"),
    # A strict-mode refusal of a CONNECT field in a non-canonical format.
    "protocol_error": (1, "{detail}"),
}

#: StatusCode of a SENDACK that refuses a client's SEND (a publish, or any SEND that
#: carried a Flag and was refused); the phrase is the detail.
SEND_ERROR_CODE = 1

_REQUIRED = ("app_key", "group_name", "timestamp", "sign")
_INT_FORMATS = frozenset({Fmt.BYTE, Fmt.INT16, Fmt.INT32, Fmt.INT64})


def _new_token() -> str:
    return str(uuid.uuid4())


class _Refused(Exception):
    """Internal: a frame that cannot be acted on; carries the offending field."""

    def __init__(self, deviation: Deviation) -> None:
        super().__init__(deviation.detail)
        self.deviation = deviation


def _refuse(field: str, reason: str, detail: str) -> _Refused:
    return _Refused(Deviation(field, reason, detail))


class ServerSession:
    """The server side of one socket (simulator, §11): AWAIT_CONNECT -> ONLINE.

    ``secrets`` maps app keys to secrets. ``strict`` refuses every non-canonical frame
    (see the module docstring); lenient mode acts on it and reports what it tolerated.
    ``close_on_login_error``: a failed login asks to close the socket (the top-link
    server keeps it open, which is the default). ``login_errors`` overrides entries of
    :data:`LOGIN_ERRORS`. ``new_token`` makes the session token of a login (a random
    UUID, as the real server's). ``admit`` is the caller's own check of a CONNECT that
    passed every protocol check (connection limits, reconnect rate ...): it returns a
    :class:`Deviation` to refuse the login (a failed CONNECTACK whose code and phrase are
    ``login_errors[reason]``, else code 1 and the detail; not a protocol error) or None.
    """

    def __init__(
        self,
        secrets: Mapping[str, str],
        *,
        strict: bool = False,
        close_on_login_error: bool = False,
        login_errors: Mapping[str, tuple[int, str]] | None = None,
        new_token: Callable[[], str] = _new_token,
        admit: Callable[[ConnectRequest], Deviation | None] | None = None,
    ) -> None:
        self._secrets = secrets
        self.strict = strict
        self.close_on_login_error = close_on_login_error
        self._login_errors = {**LOGIN_ERRORS, **(login_errors or {})}
        self._new_token = new_token
        self._admit = admit
        self.token: str | None = None
        self.app_key: str | None = None
        self.group_name: str | None = None
        #: The accepted CONNECT (app key, group, sdk, intranet_ip) for the logout log.
        self.login: ConnectRequest | None = None
        self.version = codec.PROTOCOL_VERSION
        self._push_head = b""
        #: Reads the id of this login's canonical confirm without decoding the frame
        #: (None before login); any other frame goes to :meth:`handle`.
        self.confirm_reader: sim_frames.ConfirmReader | None = None

    @property
    def online(self) -> bool:
        return self.token is not None

    # ------------------------------------------------------------------ decisions

    def handle(self, data: bytes | bytearray | memoryview) -> Decision:
        """Decide about one binary WebSocket message from the client. Never raises.

        Before login: a valid CONNECT is answered with a CONNECTACK and the session is
        online (:attr:`Outcome.LOGIN`); anything else gets a failed CONNECTACK
        (:attr:`Outcome.LOGIN_FAILED`). After login: a request to act on
        (:attr:`Outcome.REQUEST`, with the SENDACK of a flagged publish as ``reply``) or
        a refused frame (:attr:`Outcome.REFUSED`; a second CONNECT gets a failed
        CONNECTACK, a refused SEND that carried a Flag an error SENDACK).
        """
        raw = bytes(data)
        try:
            frame = codec.decode(raw, strict_utf8=True)
        except FrameError as exc:
            return self._undecodable(raw, exc)
        if not self.online:
            return self._login(frame)
        if frame.type is MessageType.CONNECT:
            return self._second_connect(frame)
        found: list[Deviation] = []
        try:
            event = self._request(frame, found)
        except _Refused as exc:
            return self._refused(frame, (exc.deviation, *found))
        if self.strict and found:
            return self._refused(frame, tuple(found))
        reply: bytes | None = None
        if isinstance(event, Publish) and frame.flag:
            # The Java client's send() waits 2 s for this SENDACK (§6.5).
            reply = codec.encode(
                Frame(MessageType.SENDACK, version=self.version, flag=frame.flag, token=self.token)
            )
        return Decision(
            Outcome.REQUEST,
            event=event,
            reply=reply,
            detail=_join(found),
            tolerated=tuple(found),
        )

    def _undecodable(self, raw: bytes, exc: FrameError) -> Decision:
        if not self.online and len(raw) >= 2 and raw[0] == 1 and raw[1] == MessageType.CONNECT:
            # Version 1 (§4.7): answered in its own version, whose header layout is the
            # same little-endian one as long as no Custom value is written.
            dev = Deviation("version", "unsupported_version", "protocol version 1 CONNECT")
            return self._login_failed(_salvage_flag(raw), 1, (dev,), protocol=True, field="1")
        dev = Deviation(_field_of(str(exc)), "malformed_frame", str(exc))
        if not self.online:
            version = raw[0] if raw and raw[0] in {1, 2} else codec.PROTOCOL_VERSION
            return self._login_failed(_salvage_flag(raw), version, (dev,), protocol=True)
        # After login nothing in it can be trusted, its Flag included: no reply.
        return Decision(Outcome.REFUSED, dev.reason, detail=dev.detail, protocol_errors=(dev,))

    def _second_connect(self, frame: Frame) -> Decision:
        dev = Deviation("type", "second_connect", "second CONNECT on a logged-in socket")
        code, phrase = self._status(dev.reason, dev)
        # The first login stays valid: the socket keeps its session and token.
        return Decision(
            Outcome.REFUSED,
            dev.reason,
            reply=self._connectack_error(frame.flag, frame.version, code, phrase),
            detail=dev.detail,
            protocol_errors=(dev,),
        )

    def _login(self, frame: Frame) -> Decision:
        if frame.type is not MessageType.CONNECT:
            dev = Deviation(
                "type",
                "send_before_login",
                f"{frame.type.name} before a successful CONNECT (send CONNECT first)",
            )
            return self._login_failed(frame.flag, frame.version, (dev,), protocol=True)
        found: list[Deviation] = []
        try:
            request = self._connect_request(frame, found)
        except _Refused as exc:
            return self._login_failed(
                frame.flag, frame.version, (exc.deviation, *found), protocol=True
            )
        if not request.app_known or not request.sign_ok:
            dev = (
                Deviation("app_key", "unknown_app_key", f"unknown app_key {request.app_key!r:.60}")
                if not request.app_known
                else Deviation("sign", "invalid_sign", "sign does not match the app secret")
            )
            return self._login_failed(request.flag, request.version, (dev,), event=request)
        if self.strict and found:
            return self._login_failed(
                request.flag, request.version, tuple(found), event=request, protocol=True
            )
        refusal = self._admit(request) if self._admit is not None else None
        if refusal is not None:
            return self._login_failed(request.flag, request.version, (refusal,), event=request)
        reply = self.accept(request, self._new_token())
        return Decision(
            Outcome.LOGIN,
            event=request,
            reply=reply,
            detail=_join(found),
            tolerated=tuple(found),
        )

    def _login_failed(
        self,
        flag: int,
        version: int,
        errors: tuple[Deviation, ...],
        *,
        event: ConnectRequest | None = None,
        protocol: bool = False,
        field: str | None = None,
    ) -> Decision:
        first = errors[0]
        reason = first.reason if first.reason in self._login_errors else "protocol_error"
        dev = Deviation(field or first.field, first.reason, _join(errors))
        code, phrase = self._status(reason, dev)
        return Decision(
            Outcome.LOGIN_FAILED,
            first.reason,
            event=event,
            reply=self._connectack_error(flag, version, code, phrase),
            close=self.close_on_login_error,
            detail=dev.detail,
            protocol_errors=errors if protocol else (),
        )

    def _refused(self, frame: Frame, errors: tuple[Deviation, ...]) -> Decision:
        detail = _join(errors)
        reply: bytes | None = None
        if frame.flag and frame.type is MessageType.SEND:
            # top-link answers a failed request with a SENDACK that carries the status
            # (§6.6); only a flagged SEND can be paired with it by the client.
            reply = codec.encode(
                Frame(
                    MessageType.SENDACK,
                    version=self.version,
                    status_code=SEND_ERROR_CODE,
                    status_phrase=detail[:_PHRASE_MAX],
                    flag=frame.flag,
                    token=self.token,
                )
            )
        return Decision(
            Outcome.REFUSED, errors[0].reason, reply=reply, detail=detail, protocol_errors=errors
        )

    def _status(self, reason: str, dev: Deviation) -> tuple[int, str]:
        code, template = self._login_errors.get(reason, self._login_errors["protocol_error"])
        phrase = template.replace("{field}", dev.field).replace("{detail}", dev.detail)
        return code, phrase[:_PHRASE_MAX]

    def _connectack_error(self, flag: int, version: int, code: int, phrase: str) -> bytes:
        return codec.encode(
            Frame(
                MessageType.CONNECTACK,
                version=version,
                status_code=code,
                status_phrase=phrase,
                flag=flag,
            )
        )

    # ------------------------------------------------------------------ parsing

    def _connect_request(self, frame: Frame, found: list[Deviation]) -> ConnectRequest:
        self.version = frame.version
        fields: dict[str, str] = {}
        for key in _REQUIRED:
            value = _text(frame, key, found, required=True)
            if not value:
                raise _refuse(key, "missing_field", f"CONNECT without {key!r}")
            fields[key] = value
        secret = self._secrets.get(fields["app_key"])
        sent = fields["sign"]
        # Bytes, not str: compare_digest refuses non-ASCII text, and a sign is whatever
        # the client sent.
        sign_ok = secret is not None and hmac.compare_digest(
            sign(secret, fields["app_key"], fields["group_name"], fields["timestamp"]).encode(),
            sent.upper().encode("utf-8", "replace"),
        )
        if sign_ok and sent != sent.upper():
            found.append(Deviation("sign", "sign_not_upper_case", "sign is not upper-case hex"))
        return ConnectRequest(
            app_key=fields["app_key"],
            group_name=fields["group_name"],
            timestamp=fields["timestamp"],
            flag=frame.flag,
            sign_ok=sign_ok,
            sdk=_text(frame, "sdk", found),
            intranet_ip=_text(frame, "intranet_ip", found),
            version=frame.version,
            app_known=secret is not None,
            auth_token=_text(frame, "token", found),
        )

    def _request(self, frame: Frame, found: list[Deviation]) -> ServerEvent:
        """The request in a frame after login. Hard errors raise _Refused; departures
        from the canonical encoding are appended to ``found``."""
        if frame.type not in {MessageType.SEND, MessageType.SENDACK}:
            raise _refuse("type", "unexpected_type", f"{frame.type.name} from a client")
        if frame.token is None:
            found.append(Deviation("token", "token_missing", "SEND without the session token"))
        elif frame.token != self.token:
            raise _refuse("token", "token_mismatch", "SEND with a token of another session")
        kind = frame.custom.get("__kind")
        if kind is None or kind.data is None:
            raise _refuse("__kind", "kind_missing", "SEND without __kind")
        kind_value = _kind_value(kind.data)
        if kind_value not in _KINDS:
            raise _refuse("__kind", "kind_unknown", f"unknown __kind {kind.data!r:.40}")
        if kind.fmt is not Fmt.BYTE:
            found.append(
                Deviation(
                    "__kind", "kind_not_byte", f"__kind has format {kind.fmt.name}, expected Byte"
                )
            )
        if frame.type is MessageType.SENDACK:
            if kind_value == Kind.FAILED:
                found.append(
                    Deviation("type", "failed_as_sendack", "Failed sent as SENDACK, not SEND")
                )
            else:
                found.append(
                    Deviation("type", "sendack_from_client", f"__kind {kind_value} sent as SENDACK")
                )
        if kind_value == Kind.PULL_REQUEST:
            return PullRequest()
        if kind_value == Kind.DATA:
            return self._publish(frame, found)
        message_id = _message_id(frame, found)
        if kind_value == Kind.CONFIRM:
            return Confirm(message_id)
        return Failed(message_id, _failed_msg(frame, found))

    def _publish(self, frame: Frame, found: list[Deviation]) -> Publish:
        topic = _text(frame, "topic", found, required=True)
        if not topic:
            raise _refuse("topic", "topic_missing", "publish without a topic")
        content = _text(frame, "content", found, required=True)
        if content is None:
            raise _refuse("content", "content_missing", "publish without content")
        return Publish(
            topic,
            content,
            frame.flag,
            app_key=self.app_key or "",
            group_name=self.group_name or "",
            session=_text(frame, "session", found),
        )

    # ------------------------------------------------------------------ lower level

    def receive(self, data: bytes) -> ServerEvent:
        """The request in one client frame, without answering it (the caller does, with
        :meth:`accept` / :meth:`reject`). Raises FrameError or ProtocolError. A CONNECT
        with a wrong sign is returned (``sign_ok`` False) and leaves the session offline.
        In strict mode a non-canonical frame raises; lenient mode takes it."""
        frame = codec.decode(data, strict_utf8=True)
        found: list[Deviation] = []
        try:
            if not self.online:
                if frame.type is not MessageType.CONNECT:
                    raise ProtocolError(f"expected CONNECT, got {frame.type.name}")
                return self._connect_request(frame, found)
            if frame.type is MessageType.CONNECT:
                raise ProtocolError(LOGIN_ERRORS["second_connect"][1])
            event = self._request(frame, found)
        except _Refused as exc:
            raise ProtocolError(exc.deviation.detail) from None
        if self.strict and found:
            raise ProtocolError(_join(found))
        return event

    def accept(self, request: ConnectRequest, token: str) -> bytes:
        """CONNECTACK success: the CONNECT's Flag echoed and a token (§5.4). The session
        is online from now on."""
        self.token = token
        self.app_key = request.app_key
        self.group_name = request.group_name
        self.login = request
        self.version = request.version
        self._push_head = codec.send_head(token, self.version) + _KIND_DATA
        self.confirm_reader = sim_frames.ConfirmReader(token, self.version)
        return codec.encode(
            Frame(MessageType.CONNECTACK, version=self.version, flag=request.flag, token=token)
        )

    def reject(self, flag: int, status_code: int, status_phrase: str) -> bytes:
        """CONNECTACK failure: StatusCode/StatusPhrase, Flag echoed, no token (§5.5)."""
        return self._connectack_error(flag, self.version, status_code, status_phrase)

    @property
    def push_head(self) -> bytes:
        """The start of this login's data pushes (version, type, token, ``__kind`` 3):
        :meth:`push` is it + the Custom entries + END_OF_HEADERS. Empty before login."""
        return self._push_head

    def push(self, body: bytes) -> bytes:
        """A data push: token + ``__kind`` 3 + the Custom entries from :func:`push_body`."""
        if not self.online:
            raise ProtocolError("cannot push before the session is online")
        return self._push_head + body + codec.END_OF_HEADERS


_KINDS = frozenset({Kind.PULL_REQUEST, Kind.CONFIRM, Kind.DATA, Kind.FAILED})
#: Longest StatusPhrase written (a frame-decoding error can be long).
_PHRASE_MAX = 200


def _join(devs: list[Deviation] | tuple[Deviation, ...]) -> str:
    return "; ".join(d.detail for d in devs)


def _text(frame: Frame, key: str, found: list[Deviation], *, required: bool = False) -> str | None:
    """A String field; None when absent or Void. An integer is taken as its text (a
    departure); a ByteArray is refused when the field is required, else dropped."""
    value = frame.custom.get(key)
    if value is None or value.data is None:
        return None
    if value.fmt is Fmt.STRING and isinstance(value.data, str):
        return value.data
    dev = Deviation(key, f"{key}_not_string", f"{key} has format {value.fmt.name}, expected String")
    if isinstance(value.data, bytes):
        if required:
            raise _Refused(dev)
        found.append(dev)
        return None
    found.append(dev)
    return str(value.data)


def _message_id(frame: Frame, found: list[Deviation]) -> int:
    value = frame.custom.get("id")
    if value is None or value.data is None:
        raise _refuse("id", "id_missing", "confirm/failed without an id")
    if value.fmt not in _INT_FORMATS or not isinstance(value.data, int):
        raise _refuse("id", "id_not_integer", f"id has format {value.fmt.name}, expected Int64")
    if value.fmt is not Fmt.INT64:
        # tmcpy and the PHP ports write the smallest integer format that fits (§14).
        found.append(
            Deviation("id", "id_not_int64", f"id has format {value.fmt.name}, expected Int64")
        )
    return value.data


def _failed_msg(frame: Frame, found: list[Deviation]) -> str | None:
    value = frame.custom.get("msg")
    if value is None or value.data is None:
        return None
    if isinstance(value.data, str):
        return value.data
    found.append(
        Deviation("msg", "msg_not_string", f"msg has format {value.fmt.name}, expected String")
    )
    return None if isinstance(value.data, bytes) else str(value.data)


def _salvage_flag(raw: bytes) -> int:
    """The Flag of a frame that does not decode, when its first headers still read (a
    failed CONNECTACK should echo it); 0 otherwise."""
    if len(raw) < 2:
        return 0
    try:
        return codec.decode_head(b"\x02" + raw[1:]).flag
    except FrameError:
        return 0


def _field_of(message: str) -> str:
    """The Custom key a codec error names (``... of 'id' ...``), else ``frame``."""
    start = message.find(" of '")
    if start < 0:
        start = message.find("key '")
        if start < 0:
            return "frame"
        start += 5
    else:
        start += 5
    end = message.find("'", start)
    return message[start:end] if end > start else "frame"


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
    formats of §4.5 / §6.1 (``id`` Int64, ``time`` Date, ...). Encoded once per message
    (by :func:`bridge.sources.tmc.sim_frames.push_static`, the simulator's hot path)."""
    return sim_frames.push_static(
        message_id, topic, content, publish_time_ms, publisher, user_id, nick, data_id
    )


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
    "LOGIN_ERRORS",
    "SEND_ERROR_CODE",
    "Confirm",
    "ConnectRequest",
    "Decision",
    "Deviation",
    "Failed",
    "Outcome",
    "Publish",
    "PullRequest",
    "ServerEvent",
    "ServerSession",
    "push_body",
    "push_extras",
    "push_static",
]
