"""``check-config --connect`` for ``source.tmc``: one login per group, closed at once.

For each group: the auth token when logins carry one (``taobao.tmc.auth.get``, as the
bridge fetches it), then the WebSocket handshake, CONNECT and CONNECTACK, and a Close
right after. No pull is sent and nothing is confirmed, so no message is consumed.

TMC pushes to a logged-in connection by itself, without waiting for a pull
(docs/protocol.md §9.2): a push that the server sends in the moment between CONNECTACK and
the Close is left unconfirmed, and TMC delivers it again after its confirm timeout (about a
minute), possibly after newer events of the same order that a running bridge took
meanwhile. Against a group a production bridge consumes, run the check when a delay of
a minute for a few messages does not matter (or against a test group).
"""

from __future__ import annotations

import asyncio
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from bridge.config_fields import public_url
from bridge.errors import FrameError, LoginError, ProtocolError, TmcError
from bridge.kinds import Reached
from bridge.sources.tmc import platform_errors, tls, transport
from bridge.sources.tmc.auth_token import AuthTokenError, AuthTokenSource
from bridge.sources.tmc.config import TmcSourceConfig
from bridge.sources.tmc.session import ClientSession, LoggedIn

#: How long the Close handshake may take before the socket is dropped.
_CLOSE_TIMEOUT_S = 2.0


def check(config: TmcSourceConfig, timeout_s: float) -> list[Reached]:
    """One line per group (see the module docstring)."""
    return asyncio.run(check_async(config, timeout_s))


async def check_async(config: TmcSourceConfig, timeout_s: float) -> list[Reached]:
    secret = config.secret()
    return [await _login_once(config, secret, group, timeout_s) for group in config.group_names()]


async def _login_once(
    config: TmcSourceConfig, secret: str, group: str, timeout_s: float
) -> Reached:
    part = f"source tmc {public_url(config.url)} group={group}"
    try:
        detail = await asyncio.wait_for(_login(config, secret, group), timeout_s)
    except TimeoutError:
        return Reached(part, False, f"no login within {timeout_s:g} s")
    except (TmcError, ConnectionClosed, InvalidHandshake, InvalidURI, OSError, ValueError) as exc:
        return Reached(part, False, _failure(exc))
    return Reached(part, True, detail)


def _failure(exc: BaseException) -> str:  # noqa: PLR0911 - one line per kind of failure
    """One line for a failed login: what happened and what to check."""
    if isinstance(exc, AuthTokenError):
        return f"{exc}; hint: {exc.hint}" if exc.hint else str(exc)
    if isinstance(exc, LoginError):
        advice = platform_errors.hint(exc.status_code, None, exc.status_phrase)
        return platform_errors.with_hint(str(exc), advice)
    if isinstance(exc, FrameError | ProtocolError):
        return f"login failed: {exc}"
    if isinstance(exc, ConnectionClosed):
        return f"the server closed the connection during login: {exc}"
    if isinstance(exc, InvalidHandshake):
        return f"WebSocket handshake failed: {exc} (check source.tmc.url)"
    if isinstance(exc, InvalidURI | ValueError):
        return f"invalid source.tmc.url: {exc}"
    if isinstance(exc, OSError):
        return f"cannot connect: {type(exc).__name__}: {exc}"
    return str(exc)


async def _login(config: TmcSourceConfig, secret: str, group: str) -> str:
    """Log in to ``group`` and close; what was proven. Raises what the login raised."""
    tokens = AuthTokenSource.for_config(config, secret)
    token = None if tokens is None else await tokens.fetch(group)
    session = ClientSession(
        config.app_key,
        secret,
        group,
        sdk=config.sdk,
        max_content_bytes=config.max_content_bytes,
    )
    async with connect(
        config.url,
        ping_interval=None,
        ping_timeout=None,
        compression=None,
        max_size=None,
        create_connection=transport.connection_class(config.max_frame_bytes),
        open_timeout=config.connect_timeout_s,
        close_timeout=_CLOSE_TIMEOUT_S,
        user_agent_header=None,
        # wss://: as the bridge connects (the system's CAs, or source.tmc.tls_ca_file).
        ssl=tls.ws_ssl(config.url, config.tls_ca_file, config.tls_verify, section="source.tmc"),
    ) as ws:
        local = ws.local_address
        address = str(local[0]) if isinstance(local, tuple) and local else None
        await ws.send(session.connect(int(time.time() * 1000), intranet_ip=address, token=token))
        first = await asyncio.wait_for(ws.recv(), config.connect_timeout_s)
        if not isinstance(first, bytes):
            raise ProtocolError("text frame instead of CONNECTACK")
        event = session.receive(first)
        if not isinstance(event, LoggedIn):
            raise ProtocolError(f"unexpected first reply {event!r}")
        # At once: no pull, no confirm (see the module docstring for pushes meanwhile).
        await ws.close(1000, "tmc-bridge check-config")
    how = "with an auth token" if token is not None else "without an auth token"
    return f"logged in ({how}) and closed at once: no pull, nothing confirmed"
