"""A small client of the TOP HTTP gateway (``/router/rest``): one signed call at a time.

:meth:`TopClient.call` signs the call with :func:`~bridge.sources.tmc.top_sign.signed_params`,
sends it as a ``GET`` with every parameter in the query string (the simulator's gateway
reads nothing else, the real one accepts it), asks for ``format=json`` and returns the
body of ``<api>_response``. What can go wrong comes in two kinds:

* :class:`TopCallError`: the gateway answered, with an ``error_response`` envelope (or an
  answer of an unexpected shape). Its text is one line: the API, the code and sub code,
  the gateway's message and what to check (the secret, the app key, the clock ...), named
  as keys of the config section the client was made for (``config_section``, e.g.
  ``source.tmc_http.app_secret``).
* :class:`TopTransportError`: no usable answer (network error, timeout, HTTP status other
  than 200, a body that is not a JSON object).

A stale keep-alive connection: a call on a pooled connection the server has just closed
(its idle timeout) fails with ``RemoteProtocolError``, ``ReadError`` or ``WriteError``.
Only a call made with ``retry_stale=True`` is then sent once more at once (never two at a
time: the retry follows the failure), and only idempotent calls may ask for it: a confirm
(confirming an id twice is harmless) and ``taobao.tmc.auth.get``. httpx raises the same
``RemoteProtocolError("Server disconnected without sending a response.")`` when the
request *was* sent and the connection closed before the answer, so a retried consume
could be one the gateway had already answered: that batch would be handed out to nobody
and come back only after TMC's confirm timeout, behind newer events of the same order.
A consume is therefore never retried here; its failure takes the caller's back-off. A
gateway that closes connections after each answer says ``Connection: close`` (the
simulator's does), so httpx does not reuse them and this does not happen there.

The body is parsed by :func:`json.loads`, so integer literals (message ids above 2^53)
stay exact Python ints; a float stays a float, for the caller to refuse.

Nothing here writes the secret, the ``sign`` parameter or the query URL into an error or
a log line: errors name the API and the gateway's answer only. httpx itself logs every
request URL (signature included) at INFO, so its loggers are held at WARNING.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Mapping
from typing import Any, Final

import httpx

from bridge import __version__
from bridge.errors import TmcError
from bridge.sources.tmc import platform_errors
from bridge.sources.tmc.top_sign import SignMethod, signed_params

# httpx logs "HTTP Request: GET <url with sign=...>" at INFO: never let that through.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

_PARTNER_ID: Final = f"tmc-bridge-{__version__}"
#: Longest gateway text (msg, sub_msg) repeated in an error line.
_TEXT_MAX: Final = 200


#: (gateway codes, words of sub_code or msg, what to check): the first rule that
#: matches wins; ``{section}`` and ``{url}`` as in :func:`platform_errors.hint`. The
#: fallback after :mod:`~bridge.sources.tmc.platform_errors` (extend that first).
_HINTS: Final[tuple[tuple[frozenset[int], tuple[str, ...], str], ...]] = (
    (
        frozenset({25}),
        ("signature",),
        "check {section}.app_secret (and {section}.sign_method)",
    ),
    (frozenset({28, 29}), ("appkey", "app-key", "app key"), "check {section}.app_key"),
    (
        frozenset({30, 31}),
        ("timestamp",),
        "check this machine's clock (the gateway allows 10 minutes)",
    ),
    (
        frozenset({26, 27}),
        ("session",),
        "the session is invalid or expired: authorise the app again",
    ),
    (
        frozenset({7}),
        ("call-limited", "limited-by", "call limited"),
        "the app is over its call quota: call less often or raise the quota",
    ),
    (
        frozenset({11}),
        ("permission",),
        "check that the app may call this API (its permissions in the console)",
    ),
    (
        frozenset(),
        ("tmc-switch-off",),
        "enable the message service for the app in the console (subscribe a topic)",
    ),
    (frozenset(), ("group",), "check {section}.group (it must exist for this app)"),
    (frozenset({22}), (), "check {url} (is it a TOP gateway?)"),
)


def _hint(
    code: int | None,
    sub_code: str | None,
    msg: str | None,
    *,
    section: str = "source.tmc",
    url_key: str = "api_url",
) -> str | None:
    """What an operator should check for this gateway error, or None when nothing is
    known (see :data:`_HINTS`)."""
    words = f"{sub_code or ''} {msg or ''}".lower()
    for codes, needles, hint in _HINTS:
        if code in codes or any(needle in words for needle in needles):
            return hint.replace("{section}", section).replace("{url}", f"{section}.{url_key}")
    return None


def _one_line(text: str | None) -> str | None:
    if text is None:
        return None
    flat = " ".join(text.split())
    return flat if len(flat) <= _TEXT_MAX else flat[: _TEXT_MAX - 3] + "..."


class TopCallError(TmcError):
    """The gateway answered a call with an error envelope (or an unexpected shape).

    ``config_section`` is the config section of the source that made the call and
    ``url_key`` its key holding the gateway's URL: the hint names those keys."""

    def __init__(
        self,
        method: str,
        code: int | None,
        msg: str | None,
        sub_code: str | None = None,
        sub_msg: str | None = None,
        *,
        request_id: str | None = None,
        config_section: str = "source.tmc",
        url_key: str = "api_url",
    ) -> None:
        self.method = method
        self.config_section = config_section
        self.url_key = url_key
        self.code = code
        self.msg = _one_line(msg)
        self.sub_code = _one_line(sub_code)
        self.sub_msg = _one_line(sub_msg)
        self.request_id = request_id
        super().__init__(self.describe())

    def hint(self) -> str | None:
        """What to check, or None: the platform errors' table
        (:mod:`~bridge.sources.tmc.platform_errors`), else :func:`_hint`."""
        message = " ".join(t for t in (self.msg, self.sub_msg) if t)
        where = {"section": self.config_section, "url_key": self.url_key}
        known = platform_errors.hint(self.code, self.sub_code, message, **where)
        return known or _hint(self.code, self.sub_code, self.msg, **where)

    def describe(self) -> str:
        """One line: the API, code/sub_code, the gateway's message, what to check."""
        parts = [f"TOP call {self.method} refused:"]
        parts.append(f"code {self.code}" if self.code is not None else "no error code")
        if self.msg:
            parts.append(self.msg)
        if self.sub_code or self.sub_msg:
            sub = self.sub_code or "-"
            parts.append(f"({sub}: {self.sub_msg})" if self.sub_msg else f"({sub})")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        text = " ".join(parts)
        hint = self.hint()
        return f"{text}; {hint}" if hint else text

    def __str__(self) -> str:
        return self.describe()


class TopTransportError(TmcError):
    """No usable answer: network error, timeout, HTTP status other than 200, or a body
    that is not one JSON object. The text names the API, never the URL's query."""

    def __init__(self, method: str, reason: str) -> None:
        self.method = method
        self.reason = reason
        super().__init__(f"TOP call {method} failed: {reason}")


def _code(value: object) -> int | None:
    if type(value) is int:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 10:
        return int(value)
    return None


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def response_key(method: str) -> str:
    """``taobao.tmc.messages.consume`` -> ``tmc_messages_consume_response`` (the gateway
    drops the ``taobao.`` prefix)."""
    return method.removeprefix("taobao.").replace(".", "_") + "_response"


def unwrap(
    method: str,
    body: object,
    *,
    config_section: str = "source.tmc",
    url_key: str = "api_url",
) -> dict[str, Any]:
    """The ``<api>_response`` object of a parsed answer; raises :class:`TopCallError` for
    an error envelope or an answer without it (its hint naming keys of
    ``config_section``), :class:`TopTransportError` for a body that is not a JSON object.
    Pure."""
    where = {"config_section": config_section, "url_key": url_key}
    if not isinstance(body, dict):
        raise TopTransportError(method, f"the answer is not a JSON object ({type(body).__name__})")
    error = body.get("error_response")
    if error is not None:
        if not isinstance(error, dict):
            raise TopCallError(method, None, "error_response is not an object", **where)
        request_id = error.get("request_id")
        raise TopCallError(
            method,
            _code(error.get("code")),
            _text(error.get("msg")),
            _text(error.get("sub_code")),
            _text(error.get("sub_msg")),
            request_id=request_id if isinstance(request_id, str) else None,
            **where,
        )
    for key in (response_key(method), method.replace(".", "_") + "_response"):
        result = body.get(key)
        if isinstance(result, dict):
            return result
    members = ", ".join(sorted(str(k) for k in body)[:5]) or "none"
    raise TopCallError(
        method,
        None,
        f"unexpected answer: no {response_key(method)} (members: {members})",
        **where,
    )


#: What a call on a keep-alive connection the server closed meanwhile fails with; a call
#: made with ``retry_stale=True`` is then sent once more (see :meth:`TopClient.call`).
_STALE_CONNECTION: Final = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class TopClient:
    """Signed calls to one TOP gateway with one app key. Not thread-safe; calls may
    overlap (the caller decides whether they should). Connections are kept alive and
    reused between calls (httpx's pool).

    ``config_section`` and ``url_key`` name the config keys the errors' hints point at:
    ``source.tmc`` and ``api_url`` (the auth token's gateway, the default),
    ``source.tmc_http`` and ``url`` (the HTTP API source)."""

    def __init__(
        self,
        url: str,
        app_key: str,
        secret: str,
        *,
        sign_method: SignMethod = "hmac-sha256",
        timeout_s: float = 10.0,
        client: httpx.AsyncClient | None = None,
        config_section: str = "source.tmc",
        url_key: str = "api_url",
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.url = url
        self.config_section = config_section
        self.url_key = url_key
        self.app_key = app_key
        self._secret = secret
        self.sign_method: SignMethod = sign_method
        self.timeout_s = timeout_s
        self._own_client = client is None
        #: Calls sent a second time after a closed keep-alive connection failed them.
        self.stale_retries = 0
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            headers={"User-Agent": _PARTNER_ID},
            follow_redirects=False,
            trust_env=True,
            verify=verify,  # an https:// gateway's CAs (<section>.tls_ca_file)
        )

    def __repr__(self) -> str:  # never the secret
        return f"TopClient(app_key={self.app_key!r}, sign_method={self.sign_method!r})"

    async def call(
        self, method: str, params: Mapping[str, str], *, retry_stale: bool = False
    ) -> dict[str, Any]:
        """Call ``method`` with its API ``params``; the body of ``<api>_response``.

        ``retry_stale``: when the call fails the way a stale keep-alive connection fails,
        send it once more at once. Only for calls that may safely arrive twice (confirm,
        auth.get): httpx cannot tell a request that never got out from one whose answer
        was lost, and a consume answered twice loses its first batch until TMC's confirm
        timeout (see the module's docstring)."""
        query = signed_params(
            method,
            self.app_key,
            self._secret,
            params,
            sign_method=self.sign_method,
            partner_id=_PARTNER_ID,
        )
        try:
            try:
                response = await self._client.get(self.url, params=query, timeout=self.timeout_s)
            except _STALE_CONNECTION:
                # Most likely a pooled keep-alive connection the server had just closed
                # (its idle timeout); but the call may have got through and lost only its
                # answer. Once more, at once, on a new connection, when the caller says
                # that is harmless; a second failure is a real one.
                if not retry_stale:
                    raise
                self.stale_retries += 1
                response = await self._client.get(self.url, params=query, timeout=self.timeout_s)
            data = response.content
        except httpx.TimeoutException as exc:
            raise TopTransportError(
                method, f"no answer within {self.timeout_s:g} s ({type(exc).__name__})"
            ) from None
        except (httpx.HTTPError, OSError) as exc:
            raise TopTransportError(method, self._scrub(exc, query)) from None
        if response.status_code != 200:
            raise TopTransportError(
                method,
                f"HTTP {response.status_code} {response.reason_phrase} "
                f"(check {self.config_section}.{self.url_key}: it must be the TOP gateway, "
                "e.g. .../router/rest)",
            )
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):
            raise TopTransportError(
                method,
                f"the answer is not JSON ({len(data)} bytes; "
                f"check {self.config_section}.{self.url_key})",
            ) from None
        return unwrap(method, body, config_section=self.config_section, url_key=self.url_key)

    def _scrub(self, exc: BaseException, query: Mapping[str, str]) -> str:
        """``type: text`` of a transport error with anything of the request taken out."""
        text = str(exc)
        for secret in (self._secret, query.get("sign", "")):
            if secret:
                text = text.replace(secret, "***")
        if "sign=" in text or "?" in text:  # a URL with its query: drop it whole
            text = text.split("?", 1)[0] + "?..."
        text = _one_line(text) or ""
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()


__all__ = ["TopCallError", "TopClient", "TopTransportError", "response_key", "unwrap"]
