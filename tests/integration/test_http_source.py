"""Simulator's TOP gateway -> bridge with the HTTP API source (``tmc_http``) -> real Kafka."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest

from bridge import config as cfgmod
from bridge.app import Bridge
from bridge.config import BridgeConfig
from bridge.sources.tmc.simulator import Simulator
from bridge.sources.tmc_http.source import TmcHttpSource
from devtools.brokers.kafka import KafkaBroker
from tests.integration.conftest import (
    APP_KEY,
    SECRET,
    Topics,
    read_back,
    running_bridge,
    simulator,
    verdict,
    wait_for,
)

pytestmark = pytest.mark.integration


def http_config(
    sim: Simulator, bootstrap: str, topics: Topics, *, secret: str = SECRET, **source: Any
) -> BridgeConfig:
    doc = {
        "source": {
            "type": "tmc_http",
            "tmc_http": {
                "url": f"http://127.0.0.1:{sim.port}/router/rest",
                "app_key": APP_KEY,
                "app_secret": secret,
                "error_backoff_min_s": 0.2,
                "error_backoff_max_s": 1.0,
                **source,
            },
        },
        "sink": {
            "type": "kafka",
            "kafka": {
                "bootstrap_servers": bootstrap,
                "transactional_id": f"it-{uuid.uuid4().hex[:8]}",
                "commit_timeout_s": 2.0,
                "dedup": {"topic": f"committed-{topics.trade}"},
            },
        },
        "routing": {
            "topics": {
                "taobao_trade_*": topics.trade,
                "taobao_refund_*": topics.refund,
                "*": topics.other,
            },
            "keys": {
                "taobao_trade_*": ["tid"],
                "taobao_refund_*": ["tid", "refund_id"],
                "taobao_item_*": ["num_iid"],
            },
            "dead_letter_topic": topics.dlq,
        },
        "pipeline": {"batch_linger_ms": 20, "drain_timeout_s": 10},
        "http": {"host": "127.0.0.1", "port": 0},
    }
    return cfgmod.parse(doc, env={})


class CallWatch:
    """Wraps the source's TOP client: consume calls running at once, and when each began."""

    def __init__(self, source: TmcHttpSource) -> None:
        self.running = 0
        self.max_running = 0
        self.consume_starts: list[float] = []
        #: retry_stale of each consume call (never True).
        self.retry_stale: list[bool] = []
        call: Callable[..., Awaitable[dict[str, Any]]] = source.top.call

        async def watched(
            method: str, params: Mapping[str, str], *, retry_stale: bool = False
        ) -> dict[str, Any]:
            if method != "taobao.tmc.messages.consume":
                return await call(method, params, retry_stale=retry_stale)
            self.retry_stale.append(retry_stale)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.consume_starts.append(time.monotonic())
            try:
                return await call(method, params, retry_stale=retry_stale)
            finally:
                self.running -= 1

        source.top.call = watched  # type: ignore[method-assign]


def http_source(bridge: Bridge) -> TmcHttpSource:
    assert isinstance(bridge.source, TmcHttpSource)
    return bridge.source


async def test_end_to_end_over_http_exactly_once_with_ids_above_2_53(
    kafka: KafkaBroker, topics: Topics
) -> None:
    async with simulator() as sim:
        ids = sim.publish(2000)
        assert min(ids) > 2**53  # the simulator's ids are clock-based, 19 digits
        cfg = http_config(sim, kafka.bootstrap, topics, quantity=200)
        async with running_bridge(cfg) as bridge:
            source = http_source(bridge)
            watch = CallWatch(source)
            await wait_for(lambda: sim.stats.confirmed == 2000, 90, "all confirmed")
            assert bridge.pipeline.stats.committed == 2000
            assert bridge.problems() == [] or all("tmc_http" not in p for p in bridge.problems())
            # The gateway says Connection: close, so no call meets a closed keep-alive
            # connection: nothing failed, nothing was sent a second time.
            assert (source.failed_calls, source.top.stale_retries) == (0, 0)
            assert watch.retry_stale and not any(watch.retry_stale)
        assert sim.stats.unknown_confirms == 0  # every id went back exact
        assert sim.stats.duplicate_confirms == 0
        assert sim.stats.outstanding == 0
        assert watch.max_running == 1
        arrived = await read_back(kafka.bootstrap, topics.all)
        v = verdict(sim, arrived)
        assert v.ok, v.problems
        assert (v.delivered, v.duplicates, v.order_violations, v.lost) == (2000, 0, 0, 0)


async def test_a_wrong_secret_is_a_clear_readyz_reason_and_nothing_is_consumed(
    kafka: KafkaBroker, topics: Topics
) -> None:
    async with simulator() as sim:
        sim.publish(50)
        cfg = http_config(sim, kafka.bootstrap, topics, secret="not-the-secret")
        async with running_bridge(cfg) as bridge:
            source = http_source(bridge)
            await wait_for(lambda: source.consume_calls >= 3, 20, "retries")
            problem = source.problem()
            assert problem is not None
            assert "Invalid signature" in problem
            assert "source.tmc_http.app_secret" in problem
            assert "source.tmc.app_secret" not in problem
            assert "not-the-secret" not in problem
            assert any("source.tmc_http.app_secret" in p for p in bridge.problems())
        assert sim.stats.pushes == 0
        assert sim.stats.confirmed == 0


async def test_consume_calls_never_overlap_and_idle_calls_stay_near_one_a_second(
    kafka: KafkaBroker, topics: Topics
) -> None:
    async with simulator() as sim:
        sim.publish(500)
        cfg = http_config(sim, kafka.bootstrap, topics, quantity=50)
        async with running_bridge(cfg) as bridge:
            watch = CallWatch(http_source(bridge))
            await wait_for(lambda: sim.stats.confirmed == 500, 60, "all confirmed")
            idle_from = time.monotonic()
            calls_before = sim.stats.top_consume_calls.get("default", 0)
            await asyncio.sleep(6)
            idle_calls = sim.stats.top_consume_calls["default"] - calls_before
            idle_s = time.monotonic() - idle_from
        assert watch.max_running == 1
        assert idle_calls <= idle_s * 1.0 + 1
        idle_starts = [t for t in watch.consume_starts if t >= idle_from]
        gaps = [b - a for a, b in itertools.pairwise(idle_starts)]
        assert gaps
        assert all(gap >= 1.0 for gap in gaps)
