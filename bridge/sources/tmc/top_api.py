"""The simulator's TOP HTTP gateway: ``taobao.tmc.messages.consume``/``confirm`` and
``taobao.tmc.auth.get`` on the simulator's own queues. Sans-I/O.

:meth:`TopApi.handle` takes one HTTP request (method, path, query, body, Content-Type) and
returns ``(status, headers, body)``; the caller owns the socket. Every answer is one JSON
object: ``{"<api>_response": {...}}`` on success, ``{"error_response": {...}}`` on failure,
with HTTP 200 as the gateway does (404/405 only for a wrong path or HTTP method).

Requests: ``GET`` or ``POST`` to :data:`GATEWAY_PATH`; parameters in the query string, in
an ``application/x-www-form-urlencoded`` UTF-8 body, or split between both (system
parameters in the query, API parameters in the body, as the Java SDK does). The signature
covers all of them. A parameter given twice is refused.

Checks, in this order (first failure wins): ``method`` present and known, ``app_key``
present and known, ``sign`` present, ``sign_method`` known, ``timestamp`` present, well
formed and within :attr:`TopApi.timestamp_window_s` of the clock, ``v`` is ``2.0``,
signature, ``format`` is ``json``, then the API's own parameters.

Message ids are Python ints end to end and rendered by :func:`json.dumps` as integer
literals, so ids above 2^53 stay exact in the response text.

The simulator's token (``taobao.tmc.auth.get``) is whatever :meth:`TopQueues.auth_token`
returns; the intended value is an opaque UUID4 string, which the WebSocket CONNECT may
carry in its ``token`` field.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import parse_qsl, urlsplit

import structlog
from websockets.datastructures import Headers
from websockets.http11 import Request
from websockets.http11 import Response as WsResponse

from bridge.sources.tmc.top_sign import (
    API_VERSION,
    format_timestamp,
    is_sign_method,
    parse_timestamp,
    verify,
)

log = structlog.get_logger("bridge.simulator.top")

GATEWAY_PATH: Final = "/router/rest"

METHOD_CONSUME: Final = "taobao.tmc.messages.consume"
METHOD_CONFIRM: Final = "taobao.tmc.messages.confirm"
METHOD_AUTH_GET: Final = "taobao.tmc.auth.get"

DEFAULT_GROUP: Final = "default"
#: Batch size when ``quantity`` is omitted (the real server's default is not public).
DEFAULT_QUANTITY: Final = 100
MIN_QUANTITY: Final = 10
MAX_QUANTITY: Final = 200
#: Most ids in one ``s_message_ids`` (and in one ``f_message_ids``).
MAX_CONFIRM_IDS: Final = 200
#: Clock error the gateway tolerates on ``timestamp``.
TIMESTAMP_WINDOW_S: Final = 600.0
#: Largest request body and parameter count accepted.
MAX_BODY_BYTES: Final = 1 << 20
MAX_FIELDS: Final = 1000

_INT64_MAX: Final = (1 << 63) - 1
_JSON_HEADERS: Final = "application/json;charset=UTF-8"
_T = TypeVar("_T")


# -- error envelopes ---------------------------------------------------------------------


class TopError(Exception):
    """One ``error_response``: ``code``/``msg``, optional ``sub_code``/``sub_msg``."""

    def __init__(
        self, code: int, msg: str, sub_code: str | None = None, sub_msg: str | None = None
    ) -> None:
        super().__init__(f"{code} {msg}")
        self.code = code
        self.msg = msg
        self.sub_code = sub_code
        self.sub_msg = sub_msg

    def envelope(self, request_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "msg": self.msg}
        if self.sub_code is not None:
            body["sub_code"] = self.sub_code
        if self.sub_msg is not None:
            body["sub_msg"] = self.sub_msg
        body["request_id"] = request_id
        return {"error_response": body}


class TopServiceError(Exception):
    """Raised by a :class:`TopQueues` method to refuse a call (unknown group, ...): the
    gateway answers code 15 ``Remote service error`` with this ``sub_code``/``sub_msg``."""

    def __init__(self, sub_code: str, sub_msg: str) -> None:
        super().__init__(f"{sub_code}: {sub_msg}")
        self.sub_code = sub_code
        self.sub_msg = sub_msg


# Gateway (system-level) errors. 22 and 25 appear verbatim in public client code; the other
# codes follow the platform's published error table.
def _missing_method() -> TopError:
    return TopError(21, "Missing method")


def _invalid_method(name: str) -> TopError:
    return TopError(22, "Invalid method", "isv.invalid-method", f"unknown method {name!r}")


def _invalid_format(sub_msg: str) -> TopError:
    return TopError(23, "Invalid format", "isv.invalid-format", sub_msg)


def _missing_signature() -> TopError:
    return TopError(24, "Missing signature")


def _invalid_signature(sub_msg: str | None = None) -> TopError:
    if sub_msg is None:
        return TopError(25, "Invalid signature")
    return TopError(25, "Invalid signature", "isv.invalid-signature", sub_msg)


def _missing_app_key() -> TopError:
    return TopError(28, "Missing app key")


def _invalid_app_key() -> TopError:
    return TopError(29, "Invalid app key")


def _missing_timestamp() -> TopError:
    return TopError(30, "Missing timestamp")


def _invalid_timestamp(sub_msg: str) -> TopError:
    return TopError(31, "Invalid timestamp", "isv.invalid-timestamp", sub_msg)


def _missing_version() -> TopError:
    return TopError(32, "Missing version")


def _unsupported_version(v: str) -> TopError:
    return TopError(34, "Unsupported version", "isv.unsupported-version", f"v={v!r}")


def _missing_argument(name: str) -> TopError:
    msg = f"Missing required arguments:{name}"
    return TopError(40, msg, f"isv.missing-parameter:{name}", f"{name} is required")


def _invalid_argument(name: str, sub_msg: str) -> TopError:
    return TopError(41, f"Invalid arguments:{name}", f"isv.invalid-parameter:{name}", sub_msg)


def _bad_request(sub_msg: str) -> TopError:
    return TopError(41, "Invalid arguments", "isv.invalid-parameter", sub_msg)


def _service_error(sub_code: str, sub_msg: str) -> TopError:
    return TopError(15, "Remote service error", sub_code, sub_msg)


# -- the queues the gateway works on ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopMessage:
    """One message of a consume response."""

    id: int
    topic: str
    #: JSON text of the business event (a string in the response, parsed again by clients).
    content: str
    #: Publication time, ms since the epoch (rendered ``yyyy-MM-dd HH:mm:ss`` GMT+8).
    pub_time_ms: int
    pub_app_key: str
    user_id: int
    user_nick: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": _int64("id", self.id),
            "topic": self.topic,
            "content": self.content,
            "pub_app_key": self.pub_app_key,
            "pub_time": format_timestamp(_int64("pub_time_ms", self.pub_time_ms) / 1000),
            "user_id": _int64("user_id", self.user_id),
            "user_nick": self.user_nick,
        }


class TopQueues(Protocol):
    """What the simulator provides to the gateway. Methods may raise
    :class:`TopServiceError`; anything else becomes ``isp.unknown-error``."""

    def consume(self, app_key: str, group: str, quantity: int) -> Sequence[TopMessage]:
        """Up to ``quantity`` messages of ``(app_key, group)``, now owned by this caller
        until confirmed or timed out."""
        ...

    def confirm(
        self, app_key: str, group: str, ids: Sequence[int], failed_ids: Sequence[int]
    ) -> None:
        """``ids`` were processed; ``failed_ids`` (deprecated ``f_message_ids``) were not."""
        ...

    def auth_token(self, app_key: str, group: str) -> str:
        """The connection token for a WebSocket CONNECT of ``(app_key, group)``."""
        ...


def _int64(field: str, value: object) -> int:
    """``value`` if it is an int in int64 range; a float (or anything else) is refused,
    so no id is ever rendered through a double."""
    if type(value) is not int or not -_INT64_MAX - 1 <= value <= _INT64_MAX:
        raise TypeError(f"{field} must be an int64 int, got {value!r}")
    return value


# -- the gateway -------------------------------------------------------------------------


Params = dict[str, str]
Response = tuple[int, dict[str, str], bytes]


class TopApi:
    """The gateway endpoint. ``apps`` maps app_key to secret."""

    def __init__(
        self,
        apps: Mapping[str, str],
        queues: TopQueues,
        *,
        timestamp_window_s: float | None = TIMESTAMP_WINDOW_S,
        clock: Callable[[], float] = time.time,
        request_id: Callable[[], str] | None = None,
    ) -> None:
        self.apps = dict(apps)
        self.queues = queues
        #: ``None`` turns the timestamp freshness check off (the format is still checked).
        self.timestamp_window_s = timestamp_window_s
        self._clock = clock
        self._request_id = request_id or (lambda: secrets.token_hex(6))
        self._methods: dict[str, Callable[[str, Params], dict[str, Any]]] = {
            METHOD_CONSUME: self._consume,
            METHOD_CONFIRM: self._confirm,
            METHOD_AUTH_GET: self._auth_get,
        }

    # -- HTTP -------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: str, body: bytes, content_type: str | None
    ) -> Response:
        """Answer one HTTP request. Never raises."""
        request_id = self._request_id()
        try:
            if urlsplit(path).path != GATEWAY_PATH:
                return _respond(404, TopError(404, "Not found").envelope(request_id))
            if method not in ("GET", "POST"):
                return _respond(
                    405, TopError(405, "Method not allowed").envelope(request_id), allow=True
                )
            params = _parse(query, body if method == "POST" else b"", content_type)
            return _respond(200, self._call(params, request_id))
        except TopError as exc:
            return _respond(200, exc.envelope(request_id))
        except Exception:  # a bug here or in the queues: still a well-formed answer
            log.exception("top_api_failed", method=method, path=path[:200])
            error = _service_error("isp.unknown-error", "simulator error")
            return _respond(200, error.envelope(request_id))

    def websockets_hook(self, request: Request) -> WsResponse:
        """:meth:`handle` for a websockets ``process_request`` hook.

        websockets reads no request body: it drops a request with a non-zero Content-Length
        before the hook runs. Through the WebSocket port, parameters therefore reach the
        gateway only in the query string (GET or POST)."""
        path, _, query = request.path.partition("?")
        status, headers, body = self.handle(
            request.method, path, query, b"", request.headers.get("Content-Type")
        )
        # websockets closes the connection after any answer but a 101: tell the client,
        # so it does not send its next call on this (closing) connection.
        return WsResponse(
            status, HTTPStatus(status).phrase, Headers({**headers, "Connection": "close"}), body
        )

    def _call(self, params: Params, request_id: str) -> dict[str, Any]:
        name = params.get("method", "")
        if not name:
            raise _missing_method()
        api = self._methods.get(name)
        if api is None:
            raise _invalid_method(name)
        app_key = params.get("app_key", "")
        if not app_key:
            raise _missing_app_key()
        secret = self.apps.get(app_key)
        if secret is None:
            raise _invalid_app_key()
        given = params.get("sign", "")
        if not given:
            raise _missing_signature()
        sign_method = params.get("sign_method", "")
        if not is_sign_method(sign_method):
            raise _invalid_signature(f"unsupported sign_method {sign_method!r}")
        self._check_timestamp(params.get("timestamp", ""))
        v = params.get("v", "")
        if not v:
            raise _missing_version()
        if v != API_VERSION:
            raise _unsupported_version(v)
        if not verify(params, secret, sign_method, given):
            raise _invalid_signature()
        fmt = params.get("format", "")
        if fmt != "json":
            raise _invalid_format(f"format={fmt!r}: the simulator answers format=json only")
        if params.get("simplify", "") not in ("", "false"):
            raise _invalid_argument("simplify", "the simplified JSON shape is not simulated")
        result = api(app_key, params)
        result["request_id"] = request_id
        return {name.removeprefix("taobao.").replace(".", "_") + "_response": result}

    def _check_timestamp(self, text: str) -> None:
        if not text:
            raise _missing_timestamp()
        try:
            when = parse_timestamp(text)
        except ValueError:
            raise _invalid_timestamp("expected yyyy-MM-dd HH:mm:ss (GMT+8)") from None
        window = self.timestamp_window_s
        if window is not None and abs(self._clock() - when) > window:
            raise _invalid_timestamp(f"more than {window:g} s away from the server clock")

    # -- the APIs ---------------------------------------------------------------------

    def _consume(self, app_key: str, params: Params) -> dict[str, Any]:
        group = params.get("group_name") or DEFAULT_GROUP
        quantity = DEFAULT_QUANTITY
        raw = params.get("quantity", "")
        if raw:
            quantity = _decimal("quantity", raw)
            if not MIN_QUANTITY <= quantity <= MAX_QUANTITY:
                raise _invalid_argument(
                    "quantity", f"must be between {MIN_QUANTITY} and {MAX_QUANTITY}"
                )
        messages = _service(lambda: self.queues.consume(app_key, group, quantity))
        rendered = [m.to_json() for m in messages[:quantity]]
        if not rendered:
            return {}  # no `messages` member when the queue is empty
        return {"messages": {"tmc_message": rendered}}

    def _confirm(self, app_key: str, params: Params) -> dict[str, Any]:
        group = params.get("group_name") or DEFAULT_GROUP
        raw = params.get("s_message_ids", "")
        if not raw:
            raise _missing_argument("s_message_ids")
        ids = _id_list("s_message_ids", raw)
        failed = _id_list("f_message_ids", params.get("f_message_ids", ""))
        _service(lambda: self.queues.confirm(app_key, group, ids, failed))
        return {"is_success": True}

    def _auth_get(self, app_key: str, params: Params) -> dict[str, Any]:
        group = params.get("group", "")
        if not group:
            raise _missing_argument("group")
        token = _service(lambda: self.queues.auth_token(app_key, group))
        return {"result": str(token)}


def _service(call: Callable[[], _T]) -> _T:
    try:
        return call()
    except TopServiceError as exc:
        raise _service_error(exc.sub_code, exc.sub_msg) from None


# -- parsing -----------------------------------------------------------------------------


def _parse(query: str, body: bytes, content_type: str | None) -> Params:
    """Query and form body into one dict; empty names dropped, repeated names refused."""
    pairs = _pairs(query)
    if body:
        mime, _, options = (content_type or "").partition(";")
        mime = mime.strip().lower()
        if mime not in ("", "application/x-www-form-urlencoded"):
            raise _bad_request(f"unsupported Content-Type {mime!r}: use form encoding")
        charset = ""
        for option in options.split(";"):
            key, _, value = option.partition("=")
            if key.strip().lower() == "charset":
                charset = value.strip().strip('"').lower()
        if charset not in ("", "utf-8", "utf8"):
            raise _bad_request(f"unsupported charset {charset!r}: use UTF-8")
        if len(body) > MAX_BODY_BYTES:
            raise _bad_request(f"body larger than {MAX_BODY_BYTES} bytes")
        pairs += _pairs(body)
    params: Params = {}
    for name, value in pairs:
        if not name:
            continue
        if name in params:
            raise _invalid_argument(name, "given more than once")
        params[name] = value
    return params


def _pairs(raw: str | bytes) -> list[tuple[str, str]]:
    """Percent-encoded UTF-8 ``name=value&...`` (raw text must be ASCII, as on the wire)."""
    try:
        text = raw if isinstance(raw, str) else raw.decode("ascii")
        if not text.isascii():
            raise UnicodeError("non-ASCII")
        return parse_qsl(
            text,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except UnicodeError:
        raise _bad_request("parameters must be percent-encoded UTF-8") from None
    except ValueError:
        raise _bad_request(f"more than {MAX_FIELDS} parameters") from None


def _decimal(name: str, raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        raise _invalid_argument(name, f"{raw[:40]!r} is not a number")
    return int(raw)


def _id_list(name: str, raw: str) -> list[int]:
    if not raw:
        return []
    items = [item.strip() for item in raw.split(",")]
    if len(items) > MAX_CONFIRM_IDS:
        raise _invalid_argument(name, f"at most {MAX_CONFIRM_IDS} ids per call")
    ids = []
    for item in items:
        if not (item.isascii() and item.isdigit()) or len(item) > 19:
            raise _invalid_argument(name, f"{item[:40]!r} is not a message id")
        value = int(item)
        if value > _INT64_MAX:
            raise _invalid_argument(name, f"{item!r} is out of the int64 range")
        ids.append(value)
    return ids


def _respond(status: int, envelope: dict[str, Any], *, allow: bool = False) -> Response:
    try:
        data = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from the queues: escape it instead
        data = json.dumps(envelope, separators=(",", ":")).encode("ascii")
    headers = {"Content-Type": _JSON_HEADERS, "Content-Length": str(len(data))}
    if allow:
        headers["Allow"] = "GET, POST"
    return status, headers, data
