"""The connection token of a TMC login (``source.tmc.auth_token``).

The official Java client, on production, gets a token from the TOP gateway with
``taobao.tmc.auth.get(group=<group>)`` before every CONNECT and sends it as the CONNECT's
``token`` (docs/protocol.md §5.2); elsewhere it sends Void. That client decides by looking
for ``mc.api.taobao.com`` anywhere in the URL, which pre-release
(``premc.api.taobao.com``) contains too, so it would ask the production gateway for a token
while pointed at pre-release. :func:`auth_token_enabled` compares the URL's host instead.

:class:`AuthTokenSource` fetches one token per login, over a TOP client made for that call
and closed after it (logins are minutes apart; nothing is kept between them). A failure is
an :class:`AuthTokenError`, which the connection treats as a refused login: logged, shown
in ``/readyz``, retried after the usual back-off.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal
from urllib.parse import urlsplit

from bridge.config_fields import public_url
from bridge.errors import LoginError, TmcError
from bridge.sources.tmc import platform_errors, tls

if TYPE_CHECKING:
    import httpx

    from bridge.sources.tmc.config import TmcSourceConfig

AuthTokenMode = Literal["off", "on", "auto"]
SignMethod = Literal["md5", "hmac", "hmac-sha256"]

#: The production message channel's host: ``auto`` fetches tokens for it alone.
PRODUCTION_HOST: Final = "mc.api.taobao.com"
METHOD: Final = "taobao.tmc.auth.get"
#: The config keys a failed call's hint names: the token comes from ``source.tmc.api_url``.
SECTION: Final = "source.tmc"
URL_KEY: Final = "api_url"


def auth_token_enabled(mode: str, url: str) -> bool:
    """Whether logins to ``url`` carry an auth token: ``on``/``off`` as said; ``auto`` when
    the URL's host is exactly :data:`PRODUCTION_HOST` (any case, a trailing dot allowed),
    never because it merely contains it."""
    if mode == "on":
        return True
    if mode != "auto":
        return False
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return host.rstrip(".") == PRODUCTION_HOST


class AuthTokenError(LoginError):
    """``taobao.tmc.auth.get`` did not give a token: a failed login (no CONNECT is sent),
    handled like a refused one.

    ``hint`` is what to do (:func:`~bridge.sources.tmc.platform_errors.hint`), when the
    error is a known one. The message never holds the secret."""

    def __init__(self, detail: str, *, hint: str | None = None) -> None:
        # Not LoginError's message: there was no CONNECTACK, hence no status.
        TmcError.__init__(self, f"auth token not obtained ({METHOD}): {detail}")
        self.status_code = 0
        self.status_phrase = None
        self.detail = detail
        self.hint = hint


class AuthTokenSource:
    """Fetches the auth token of a login from the TOP gateway at ``api_url``."""

    def __init__(
        self,
        api_url: str,
        app_key: str,
        secret: str,
        *,
        sign_method: SignMethod = "hmac-sha256",
        timeout_s: float = 10.0,
        client: httpx.AsyncClient | None = None,
        tls_ca_file: Path | None = None,
        tls_verify: bool = True,
    ) -> None:
        self.api_url = api_url
        self._tls = (tls_ca_file, tls_verify)
        self.app_key = app_key
        self._secret = secret
        self.sign_method: SignMethod = sign_method
        self.timeout_s = timeout_s
        #: An HTTP client to use instead of a new one per call (tests); never closed here.
        self._client = client

    @classmethod
    def for_config(cls, config: TmcSourceConfig, secret: str) -> AuthTokenSource | None:
        """The token source ``config`` asks for, or None when its logins carry no token.
        The call is bounded by ``connect_timeout_s``, like the rest of a login."""
        if not auth_token_enabled(config.auth_token, config.url):
            return None
        return cls(
            config.api_url,
            config.app_key,
            secret,
            sign_method=config.api_sign_method,
            timeout_s=config.connect_timeout_s,
            tls_ca_file=config.tls_ca_file,
            tls_verify=config.tls_verify,
        )

    def __repr__(self) -> str:  # never the secret
        return f"AuthTokenSource({public_url(self.api_url)!r}, app_key={self.app_key!r})"

    def _verify(self) -> ssl.SSLContext | bool:
        if not self.api_url.lower().startswith("https://"):
            return True
        return tls.client_context(*self._tls, section=SECTION)

    async def fetch(self, group: str) -> str:
        """A fresh token for a CONNECT to ``group``. Raises :class:`AuthTokenError`."""
        # Imported here: httpx is loaded only by a bridge that fetches tokens.
        from bridge.sources.tmc.top_client import TopCallError, TopClient, TopTransportError

        client = TopClient(
            self.api_url,
            self.app_key,
            self._secret,
            sign_method=self.sign_method,
            timeout_s=self.timeout_s,
            client=self._client,
            config_section=SECTION,
            url_key=URL_KEY,
            # https://: source.tmc.tls_ca_file (an OSError naming it if unusable)
            verify=self._verify(),
        )
        try:
            # Idempotent (a second token is as good as the first): safe to send again
            # after a stale keep-alive connection.
            body = await client.call(METHOD, {"group": group}, retry_stale=True)
        except TopCallError as exc:
            advice = platform_errors.hint(
                exc.code,
                exc.sub_code,
                _joined(exc.msg, exc.sub_msg),
                section=SECTION,
                url_key=URL_KEY,
            )
            raise AuthTokenError(str(exc), hint=advice) from None
        except TopTransportError as exc:
            raise AuthTokenError(
                f"{public_url(self.api_url)} did not answer: {exc}",
                hint=f"check that {SECTION}.{URL_KEY} is reachable from this host",
            ) from None
        finally:
            await client.aclose()
        token = body.get("result") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token.strip():
            # Only its type: whatever the gateway put there may be (part of) a token.
            raise AuthTokenError(
                f"the response holds no token (result: {type(token).__name__}"
                f"{', blank' if isinstance(token, str) else ''})"
            )
        return token


def _joined(*parts: object) -> str:
    return " ".join(str(p) for p in parts if p)


__all__ = [
    "METHOD",
    "PRODUCTION_HOST",
    "AuthTokenError",
    "AuthTokenMode",
    "AuthTokenSource",
    "auth_token_enabled",
]
