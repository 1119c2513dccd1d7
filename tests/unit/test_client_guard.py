"""The TMC source's guard, against the in-process simulator (no broker): bad frames are
skipped or handed on marked malformed, and no exception ends the connection task."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import pytest
import structlog

from bridge.config import TmcSourceConfig
from bridge.errors import ConfigError
from bridge.model import Delivery
from bridge.observability.metrics import Metrics
from bridge.pipeline.ports import TAKEN
from bridge.sources.tmc import codec
from bridge.sources.tmc.codec import Fmt, Value
from bridge.sources.tmc.connection import TmcSource
from bridge.sources.tmc.simulator import Simulator, SimulatorConfig

KEY, SECRET = "12345678", "guard-secret"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig(apps={KEY: SECRET}, confirm_timeout_s=600)) as s:
        yield s


def source_config(url: str, **overrides: object) -> TmcSourceConfig:
    return TmcSourceConfig.model_validate(
        {
            "url": url,
            "app_key": KEY,
            "app_secret": SECRET,
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.2,
            "pull_interval_s": 0.5,
            **overrides,
        }
    )


async def wait_until(predicate: object, what: str, timeout_s: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Collect:
    """A submit that confirms at once, or raises for chosen message ids."""

    def __init__(self, raise_for: set[int] | None = None) -> None:
        self.got: list[Delivery] = []
        self.raise_for = raise_for or set()

    async def __call__(self, delivery: Delivery) -> None:
        if delivery.message.message_id in self.raise_for:
            self.raise_for.discard(delivery.message.message_id)
            raise RuntimeError("a bug in the pipeline")
        self.got.append(delivery)
        for ack in delivery.acks:
            ack.confirm()


@pytest.fixture
def logs() -> list[dict[str, object]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


async def test_hostile_frames_are_skipped_or_dead_lettered_and_the_session_stays(
    sim: Simulator, logs: list[dict[str, object]]
) -> None:
    submit, metrics = Collect(), Metrics()
    source = TmcSource(source_config(sim.url), submit, metrics=metrics)
    source.start()
    try:
        await wait_until(lambda: source.logged_in == 1, "login")
        assert sim.inject("malformed_frame")
        sim.push_raw(codec.encode_custom("id", Value(Fmt.STRING, "²")))
        sim.push_raw(
            codec.encode_custom("id", codec.int64(77))
            + codec.encode_custom("topic", codec.string("taobao_trade_TradeCreate"))
            + codec.encode_custom("time", Value(Fmt.STRING, "9" * 400))
        )
        ids = sim.publish(3)
        await wait_until(lambda: len(submit.got) == 4, "four deliveries")
        assert [d.message.message_id for d in submit.got] == [77, *ids]
        assert "'time'" in str(submit.got[0].message.malformed)
        assert all(d.message.malformed is None for d in submit.got[1:])
        await wait_until(lambda: sim.stats.confirmed == 3, "valid ones confirmed")
        await wait_until(lambda: 77 in sim.unknown_confirmed_ids, "malformed one confirmed")
        assert sim.stats.logins_ok == 1 and source.problem() is None
        skipped = [e for e in logs if e["event"] == "tmc frame skipped"]
        assert [e["kind"] for e in skipped] == ["malformed", "unconfirmable"]
        notes = source.notes()
        assert len(notes) == 1 and "unconfirmable" in notes[0]
    finally:
        await source.close()


async def test_an_unexpected_exception_is_logged_and_the_connection_comes_back(
    logs: list[dict[str, object]],
) -> None:
    async with Simulator(SimulatorConfig(apps={KEY: SECRET}, confirm_timeout_s=1)) as sim:
        await _bug_then_recovery(sim, logs)


async def _bug_then_recovery(sim: Simulator, logs: list[dict[str, object]]) -> None:
    ids = sim.publish(2)
    submit = Collect(raise_for={ids[0]})
    source = TmcSource(source_config(sim.url), submit, metrics=Metrics())
    source.start()
    try:
        await wait_until(lambda: sim.stats.logins_ok >= 2, "a second login")
        failed = [e for e in logs if e["event"] == "tmc connection failed unexpectedly"]
        assert failed and "a bug in the pipeline" in str(failed[0]["error"])
        assert failed[0].get("exc_info") is True
        # The message that met the bug was not confirmed: it comes back and is taken.
        await wait_until(lambda: sim.stats.confirmed == 2, "both confirmed", timeout_s=20)
    finally:
        await source.close()


async def test_the_last_reason_shows_while_no_connection_is_logged_in(
    logs: list[dict[str, object]],
) -> None:
    source = TmcSource(source_config("ws://127.0.0.1:1/"), Collect(), metrics=Metrics())
    source.start()
    try:
        await wait_until(lambda: source.last_errors, "a connection error")
        problem = source.problem()
        assert problem is not None and "tmc not logged in (last error: " in problem
        assert any(e["event"] == "tmc connection lost" for e in logs)
    finally:
        await source.close()


def test_a_url_the_client_cannot_use_is_a_config_error() -> None:
    cfg = TmcSourceConfig.model_construct(
        **{**source_config("ws://x/").model_dump(), "url": "ws://exa mple:99999/"}
    )
    with pytest.raises(ConfigError, match=r"source\.tmc\.url"):
        TmcSource(cfg, Collect(), metrics=Metrics())


async def test_a_session_that_logged_in_resets_the_reconnect_back_off(
    sim: Simulator, logs: list[dict[str, object]]
) -> None:
    # Back-off 0.2 s -> 5 s: without the reset, the fifth reconnect would wait >= 3.2 s.
    config = source_config(sim.url, reconnect_min_s=0.2, reconnect_max_s=5.0)
    source = TmcSource(config, Collect(), metrics=Metrics())
    source.start()
    try:
        for drops in range(1, 6):
            await wait_until(lambda d=drops: sim.stats.logins_ok == d, f"login {drops}")
            await wait_until(lambda: source.logged_in == 1, "online")
            assert sim.inject("drop_connection")
        await wait_until(lambda: sim.stats.logins_ok == 6, "sixth login")
        delays = [e["in_s"] for e in logs if e["event"] == "tmc reconnecting"]
        assert len(delays) >= 5 and max(delays) <= 0.3, delays  # type: ignore[type-var]
    finally:
        await source.close()


class Gate:
    """A submit that takes deliveries at once (``TAKEN``) while open and makes them wait
    while closed: the pipeline's back-pressure, without a pipeline."""

    def __init__(self) -> None:
        self.got: list[Delivery] = []
        self.open = asyncio.Event()
        self.waited = 0

    def __call__(self, delivery: Delivery) -> Awaitable[None]:
        if self.open.is_set():
            self._take(delivery)
            return TAKEN
        self.waited += 1
        return self._when_open(delivery)

    async def _when_open(self, delivery: Delivery) -> None:
        await self.open.wait()
        self._take(delivery)

    def _take(self, delivery: Delivery) -> None:
        self.got.append(delivery)
        for ack in delivery.acks:
            ack.confirm()


async def test_a_full_pipeline_pauses_the_socket_and_nothing_is_lost_or_reordered(
    sim: Simulator,
) -> None:
    """Pushes come straight from the protocol parser; while the pipeline is full the
    socket's reads pause and what was already read waits in order."""
    gate = Gate()
    source = TmcSource(source_config(sim.url), gate, metrics=Metrics())
    source.start()
    try:
        await wait_until(lambda: source.logged_in == 1, "login")
        ids = sim.publish(400)
        await wait_until(lambda: gate.waited == 1, "the first push to wait")
        conn = source._connections[0]
        ws = conn._ws
        assert ws is not None
        await wait_until(lambda: not ws.transport.is_reading(), "reads paused")
        await asyncio.sleep(0.3)
        assert gate.got == [] and gate.waited == 1  # the rest waits unsubmitted, in order
        gate.open.set()
        await wait_until(lambda: len(gate.got) == 400, "every push")
        assert [d.message.message_id for d in gate.got] == ids
        assert ws.transport.is_reading()
        await wait_until(lambda: sim.stats.confirmed == 400, "every push confirmed")
    finally:
        await source.close()
