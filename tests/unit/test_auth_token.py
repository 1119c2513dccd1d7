"""source.tmc.auth_token: the mode decision, the token in CONNECT, fetching it from a TOP
gateway (the simulator's, over an in-memory transport) and the simulator's check of it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from bridge import config as cfgmod
from bridge.errors import ConfigError, LoginError
from bridge.sources.tmc import codec
from bridge.sources.tmc.auth_token import (
    AuthTokenError,
    AuthTokenSource,
    auth_token_enabled,
)
from bridge.sources.tmc.codec import Fmt
from bridge.sources.tmc.config import TmcSourceConfig
from bridge.sources.tmc.session import ClientSession, LoggedIn, sign
from bridge.sources.tmc.simulator import Simulator, SimulatorConfig
from bridge.sources.tmc.top_api import TopApi

KEY, SECRET = "12345678", "auth-token-secret-0123"


# -- the mode ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "url", "on"),
    [
        ("auto", "ws://mc.api.taobao.com/", True),
        ("auto", "ws://mc.api.taobao.com", True),
        ("auto", "wss://MC.API.TAOBAO.COM:443/", True),
        ("auto", "ws://mc.api.taobao.com./", True),
        # Pre-release contains the production host as a substring: not production.
        ("auto", "ws://premc.api.taobao.com/", False),
        ("auto", "ws://mc.api.tbsandbox.com/", False),
        ("auto", "ws://127.0.0.1:8765/", False),
        ("auto", "ws://proxy.example/mc.api.taobao.com", False),
        ("auto", "ws://mc.api.taobao.com.example/", False),
        ("on", "ws://127.0.0.1:8765/", True),
        ("on", "ws://premc.api.taobao.com/", True),
        ("off", "ws://mc.api.taobao.com/", False),
    ],
)
def test_auth_token_mode_decides_by_host_equality(mode: str, url: str, on: bool) -> None:
    assert auth_token_enabled(mode, url) is on


def _tmc(**extra: Any) -> TmcSourceConfig:
    return TmcSourceConfig.model_validate({"app_key": KEY, "app_secret": SECRET, **extra})


def test_config_defaults_and_the_source_it_builds() -> None:
    cfg = _tmc()
    assert (cfg.auth_token, cfg.api_url) == ("auto", "https://eco.taobao.com/router/rest")
    source = AuthTokenSource.for_config(cfg, SECRET)  # the default url is production
    assert source is not None and source.timeout_s == cfg.connect_timeout_s
    assert SECRET not in repr(source)
    assert AuthTokenSource.for_config(_tmc(url="ws://premc.api.taobao.com/"), SECRET) is None
    assert AuthTokenSource.for_config(_tmc(auth_token="off"), SECRET) is None


@pytest.mark.parametrize(
    "extra",
    [
        {"api_url": "ftp://eco.taobao.com/router/rest"},
        {"api_url": "ws://eco.taobao.com/router/rest"},
        {"auth_token": "yes"},
        {"api_sign_method": "sha1"},
    ],
)
def test_bad_auth_token_settings_are_refused(extra: dict[str, Any]) -> None:
    doc = {
        "source": {"type": "tmc", "tmc": {"app_key": KEY, "app_secret": SECRET, **extra}},
        "sink": {"type": "kafka", "kafka": {"bootstrap_servers": "localhost:9092"}},
        "routing": {"topics": {"*": "t"}},
    }
    with pytest.raises(ConfigError, match=next(iter(extra))):
        cfgmod.parse(doc, env={})


# -- the token in CONNECT ----------------------------------------------------------------


def test_connect_carries_the_token_as_a_string_and_void_without_one() -> None:
    session = ClientSession(KEY, SECRET, "default")
    with_token = codec.decode(session.connect(1_700_000_000_000, token="tok-123"))
    assert with_token.custom["token"] == codec.string("tok-123")
    without = codec.decode(session.connect(1_700_000_000_000))
    assert without.custom["token"].fmt is Fmt.VOID
    # The token is not signed, and is the last key, as the Java client writes it.
    expected = sign(SECRET, KEY, "default", "1700000000000")
    assert with_token.get("sign") == without.get("sign") == expected
    assert list(with_token.custom)[-1] == "token"


# -- fetching it -------------------------------------------------------------------------


class _Tokens:
    """TopQueues of the gateway: only auth_token is used."""

    def __init__(self) -> None:
        self.groups: list[str] = []

    def consume(self, app_key: str, group: str, quantity: int) -> list[Any]:
        return []

    def confirm(self, app_key: str, group: str, ids: Any, failed_ids: Any) -> None:
        return None

    def auth_token(self, app_key: str, group: str) -> str:
        self.groups.append(group)
        return f"token-{len(self.groups)}"


def _gateway(api: TopApi) -> httpx.AsyncClient:
    def handle(request: httpx.Request) -> httpx.Response:
        status, headers, body = api.handle(
            request.method, request.url.path, request.url.query.decode(), b"", None
        )
        return httpx.Response(status, headers=headers, content=body)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


async def test_fetch_gets_a_fresh_token_per_call_for_its_group() -> None:
    queues = _Tokens()
    async with _gateway(TopApi({KEY: SECRET}, queues)) as http:
        source = AuthTokenSource("http://gw.test/router/rest", KEY, SECRET, client=http)
        assert await source.fetch("orders") == "token-1"
        assert await source.fetch("orders") == "token-2"
    assert queues.groups == ["orders", "orders"]


async def test_a_refused_call_is_an_auth_token_error_with_a_hint_and_no_secret() -> None:
    async with _gateway(TopApi({KEY: "the-real-secret"}, _Tokens())) as http:
        source = AuthTokenSource("http://gw.test/router/rest", KEY, SECRET, client=http)
        with pytest.raises(AuthTokenError) as caught:
            await source.fetch("default")
    exc = caught.value
    assert isinstance(exc, LoginError)  # a failed login, handled like a refused one
    assert "code 25" in str(exc) and exc.hint is not None and "app_secret" in exc.hint
    assert SECRET not in str(exc) and "the-real-secret" not in str(exc)
    # The keys of the WebSocket source's section, whose auth token this is.
    assert "source.tmc.app_secret" in exc.hint and "source.tmc.app_secret" in str(exc)


async def test_a_refused_token_call_names_source_tmc_api_url() -> None:
    def unknown_method(request: httpx.Request) -> httpx.Response:
        envelope = {"code": 22, "msg": "Invalid method", "sub_code": "isv.invalid-method"}
        return httpx.Response(200, json={"error_response": envelope})

    async with httpx.AsyncClient(transport=httpx.MockTransport(unknown_method)) as http:
        source = AuthTokenSource("http://gw.test/router/rest", KEY, SECRET, client=http)
        with pytest.raises(AuthTokenError) as caught:
            await source.fetch("default")
    assert caught.value.hint is not None and "source.tmc.api_url" in caught.value.hint
    assert "source.tmc.api_url" in str(caught.value)
    assert "source.tmc_http" not in str(caught.value) + caught.value.hint


@pytest.mark.parametrize(
    "result",
    [
        {"token": "tok-FRAGMENT-0123456789"},
        ["tok-FRAGMENT-0123456789"],
        1234567890123456789,
        None,
        "   ",
    ],
)
async def test_a_result_that_is_no_token_is_named_by_its_type_only(result: object) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"tmc_auth_get_response": {"result": result}})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        source = AuthTokenSource("http://gw.test/router/rest", KEY, SECRET, client=http)
        with pytest.raises(AuthTokenError, match="no token") as caught:
            await source.fetch("default")
    text = str(caught.value)
    assert type(result).__name__ in text
    assert "FRAGMENT" not in text and "1234567890" not in text and "'" not in text


async def test_a_token_call_on_a_closed_keep_alive_connection_is_sent_again() -> None:
    sent = 0

    def stale_then_token(request: httpx.Request) -> httpx.Response:
        nonlocal sent
        sent += 1
        if sent == 1:
            raise httpx.RemoteProtocolError("Server disconnected", request=request)
        return httpx.Response(200, json={"tmc_auth_get_response": {"result": "tok"}})

    async with httpx.AsyncClient(transport=httpx.MockTransport(stale_then_token)) as http:
        source = AuthTokenSource("http://gw.test/router/rest", KEY, SECRET, client=http)
        assert await source.fetch("default") == "tok"
    assert sent == 2


async def test_no_answer_and_an_empty_token_are_auth_token_errors() -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(unreachable)) as http:
        source = AuthTokenSource("http://gw.test/router/rest", KEY, SECRET, client=http)
        with pytest.raises(AuthTokenError, match="did not answer") as caught:
            await source.fetch("default")
    assert caught.value.hint is not None and "api_url" in caught.value.hint

    def empty(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"tmc_auth_get_response": {"result": ""}})

    async with httpx.AsyncClient(transport=httpx.MockTransport(empty)) as http:
        source = AuthTokenSource("http://gw.test/router/rest", KEY, SECRET, client=http)
        with pytest.raises(AuthTokenError, match="no token"):
            await source.fetch("default")


# -- the simulator checks it -------------------------------------------------------------


async def _login(sim: Simulator, group: str, token: str | None) -> LoggedIn:
    async with connect(sim.url, compression=None) as ws:
        session = ClientSession(KEY, SECRET, group)
        await ws.send(session.connect(1_700_000_000_000, token=token))
        raw = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(raw, bytes)
        event = session.receive(raw)
        assert isinstance(event, LoggedIn)
        return event


async def test_the_simulator_takes_each_token_once_for_its_app_and_group() -> None:
    cfg = SimulatorConfig(apps={KEY: SECRET}, require_auth_token=True)
    async with Simulator(cfg) as sim:
        token = sim.auth_token(KEY, "default")
        await _login(sim, "default", token)
        with pytest.raises(LoginError, match="invalid auth token"):
            await _login(sim, "default", token)  # used already
        with pytest.raises(LoginError, match="auth token required"):
            await _login(sim, "default", None)
        with pytest.raises(LoginError, match="invalid auth token"):
            await _login(sim, "orders", sim.auth_token(KEY, "default"))  # another group
        with pytest.raises(LoginError, match="invalid auth token"):
            await _login(sim, "default", "made-up")
        stats = sim.stats
        assert (stats.auth_tokens_issued, stats.auth_tokens_accepted) == (2, 1)
        assert stats.auth_tokens_refused == 4 and stats.logins_ok == 1


async def test_simulator_tokens_expire_and_are_bounded() -> None:
    cfg = SimulatorConfig(apps={KEY: SECRET}, require_auth_token=True, auth_token_ttl_s=0.05)
    async with Simulator(cfg) as sim:
        token = sim.auth_token(KEY, "default")
        await asyncio.sleep(0.1)
        with pytest.raises(LoginError, match="invalid auth token"):
            await _login(sim, "default", token)
        sim.config.auth_token_ttl_s = 300
        for _ in range(10_050):
            sim.auth_token(KEY, "default")
        assert len(sim._auth_tokens) <= 10_000


async def test_without_require_auth_token_a_token_is_ignored() -> None:
    async with Simulator(SimulatorConfig(apps={KEY: SECRET})) as sim:
        await _login(sim, "default", "anything")
        await _login(sim, "default", None)
        assert sim.stats.auth_tokens_refused == 0 and sim.stats.logins_ok == 2
