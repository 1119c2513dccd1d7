"""Stepping back from TMC (pause/resume of the WebSocket source) against the in-process
simulator, with a sink that never settles anything: no login while paused, wherever the
pause lands, and no login again before TMC's confirm timeout has passed for the pushes
left unconfirmed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from bridge.model import Delivery
from bridge.observability.metrics import Metrics
from bridge.sources.tmc import auth_token
from bridge.sources.tmc.config import TmcSourceConfig
from bridge.sources.tmc.connection import TmcSource
from bridge.sources.tmc.simulator import Simulator, SimulatorConfig

APP, SECRET = "12345678", "step-back-secret"
HOLD_S = 2.0


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(apps={APP: SECRET}, confirm_timeout_s=HOLD_S, require_auth_token=True)
    async with Simulator(config) as simulator:
        yield simulator


def source(sim: Simulator, taken: list[int]) -> TmcSource:
    api = sim.url.replace("ws://", "http://").rstrip("/") + "/router/rest"
    cfg = TmcSourceConfig(
        url=sim.url,
        app_key=APP,
        app_secret=SECRET,
        auth_token="on",
        api_url=api,
        server_confirm_timeout_s=HOLD_S,
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
        pull_interval_s=0.5,
    )

    async def submit(delivery: Delivery) -> None:
        taken.append(delivery.message.message_id)  # the sink is down: never settled

    return TmcSource(cfg, submit, metrics=Metrics())


async def until(predicate: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_pause_during_the_login_keeps_the_connection_logged_out(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pause lands while the auth token is being fetched (no socket yet to close):
    the login is abandoned, nothing is pushed, and the reason is in problem()."""
    fetch = auth_token.AuthTokenSource.fetch

    async def slow_fetch(self: auth_token.AuthTokenSource, group: str) -> str:
        await asyncio.sleep(0.6)
        return await fetch(self, group)

    monkeypatch.setattr(auth_token.AuthTokenSource, "fetch", slow_fetch)
    sim.publish(50)
    taken: list[int] = []
    src = source(sim, taken)
    src.start()
    try:
        await asyncio.sleep(0.2)
        src.pause("sink down (test)")
        await asyncio.sleep(2.0)
        assert (src.logged_in, sim.stats.logins_ok, sim.stats.pushes, taken) == (0, 0, 0, [])
        assert src.problem() == "tmc logged out while the sink is unavailable (sink down (test))"
        src.resume()
        await until(lambda: src.logged_in == 1, 5)
        await until(lambda: len(taken) == 50, 5)
    finally:
        await src.stop_reading()
        await src.close()


async def test_a_resume_right_after_the_pause_still_waits_for_the_confirm_timeout(
    sim: Simulator,
) -> None:
    """pause() and resume() back to back while pushes are held: the socket closes, and the
    next login waits until TMC's confirm timeout has passed since the last push, so TMC
    has requeued them (in order) first; no push times out on an open connection."""
    sim.publish(20)
    taken: list[int] = []
    src = source(sim, taken)
    src.start()
    try:
        await until(lambda: len(taken) == 20, 5)
        last_push = time.monotonic()
        src.pause("sink down (test)")
        src.resume()
        await until(lambda: sim.stats.logins_ok == 2, 10)
        assert time.monotonic() - last_push >= HOLD_S - 0.05
        assert sim.stats.confirm_timeouts_online == 0
        # TMC requeued them before the login: the same 20 come back, in order.
        await until(lambda: len(taken) == 40, 10)
        assert taken[20:] == taken[:20]
    finally:
        await src.stop_reading()
        await src.close()


async def test_close_while_stepping_back_does_not_hang(sim: Simulator) -> None:
    sim.publish(5)
    taken: list[int] = []
    src = source(sim, taken)
    src.start()
    await until(lambda: len(taken) == 5, 5)
    src.pause("sink down (test)")
    await src.stop_reading()
    await asyncio.wait_for(src.close(), 5)
    assert src.logged_in == 0
