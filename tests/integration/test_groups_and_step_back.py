"""Several TMC groups in one bridge, and stepping back from TMC during a sink outage
(simulator + real Kafka)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from bridge.app import build_sink
from bridge.errors import SinkError
from bridge.observability.metrics import Metrics
from bridge.pipeline.ports import Batch, BatchSink, Refused
from devtools.brokers.kafka import KafkaBroker
from tests.integration.conftest import (
    Topics,
    bridge_config,
    read_back,
    running_bridge,
    simulator,
    verdict,
    wait_for,
)
from tests.integration.test_operations import scrape

pytestmark = pytest.mark.integration


def _sample(samples: dict[Any, float], name: str, **labels: str) -> float:
    return sum(
        value
        for (metric, have), value in samples.items()
        if metric == name and all((k, v) in have for k, v in labels.items())
    )


async def test_two_groups_each_deliver_to_their_own_routes(
    kafka: KafkaBroker, topics: Topics
) -> None:
    """A paying sellers' group with its own connections and topic beside `default`: each
    group's messages reach its own routes, once each, and every one is confirmed; metrics
    count received and confirmed per group."""
    vip_topic = f"vip-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(vip_topic, partitions=3)
    async with simulator() as sim:
        default_ids = set(sim.publish(600, group="default"))
        vip_ids = set(sim.publish(400, group="vip"))
        cfg = bridge_config(
            sim.url,
            kafka.bootstrap,
            topics,
            tmc={"groups": [{"name": "default"}, {"name": "vip", "connections": 2}]},
            routing={"groups": {"vip": {"topics": {"*": vip_topic}}}},
        )
        async with running_bridge(cfg) as bridge:
            await wait_for(lambda: sim.stats.confirmed == 1000, 60, "all confirmed")
            assert bridge.source.logged_in == 3
            assert bridge.problems() == []
            assert bridge.http is not None
            samples = await scrape(bridge.http.port)
        arrived = await read_back(kafka.bootstrap, [*topics.all, vip_topic])
        v = verdict(sim, arrived)
        assert (v.delivered, v.duplicates, v.lost) == (1000, 0, 0)
        # Two connections to one group: TMC promises no order across them, only that a
        # key stays in one partition.
        assert not [p for p in v.problems if "several partitions" in p]
        assert {a.message_id for a in arrived if a.topic == vip_topic} == vip_ids
        assert {a.message_id for a in arrived if a.topic != vip_topic} == default_ids
        for group, count in (("default", 600), ("vip", 400)):
            got = _sample(samples, "tmc_bridge_source_group_messages_total", group=group)
            # received + confirmed, no redelivery in this run
            assert got == 2 * count, (group, got)
            up = _sample(samples, "tmc_bridge_source_connection_up", group=group)
            assert up == (1 if group == "default" else 2)


class OutageSink:
    """The real Kafka sink behind a switch: while ``down``, every write and probe fails
    as an unreachable broker does (the broker itself keeps serving the other tests)."""

    def __init__(self, inner: BatchSink) -> None:
        self.inner = inner
        self.name = inner.name
        self.down = False
        self.failed_writes = 0

    @property
    def ready(self) -> bool:
        return not self.down and self.inner.ready

    @property
    def last_error(self) -> str | None:
        return "test outage: broker unreachable" if self.down else self.inner.last_error

    def start(self) -> None:
        self.inner.start()

    def probe(self) -> bool:
        if self.down:
            raise SinkError("test outage: broker unreachable", error_class="_TRANSPORT")
        return self.inner.probe()

    def write_batch(self, batch: Batch) -> list[Refused]:
        if self.down:
            self.failed_writes += 1
            raise SinkError("test outage: broker unreachable", error_class="_TRANSPORT")
        return self.inner.write_batch(batch)

    def rebuild(self) -> None:
        self.inner.rebuild()

    def stop(self) -> None:
        self.inner.stop()

    def close(self) -> None:
        self.inner.close()


CONFIRM_TIMEOUT_S = 5.0
OUTAGE_S = 3 * CONFIRM_TIMEOUT_S


@pytest.mark.parametrize(
    ("step_back_after_s", "redeliver_on_disconnect"),
    [(1.0, False), (1.0, True), (0.0, False)],
    ids=["step-back", "step-back-server-requeues-on-close", "no-step-back-control"],
)
async def test_a_long_sink_outage_leaves_no_push_to_time_out_and_keeps_order(
    kafka: KafkaBroker, topics: Topics, step_back_after_s: float, redeliver_on_disconnect: bool
) -> None:
    """A sink outage of three confirm timeouts in the middle of a stream. Stepping back,
    the bridge holds no push on an open connection past the timeout (the control without
    stepping back holds them, and TMC times them out again and again), nothing is lost
    or written twice, and every order's events land in the server's order."""
    async with simulator(
        confirm_timeout_s=CONFIRM_TIMEOUT_S, redeliver_on_disconnect=redeliver_on_disconnect
    ) as sim:
        sim.publish(500)
        cfg = bridge_config(
            sim.url,
            kafka.bootstrap,
            topics,
            tmc={"max_hold_s": 2.5, "server_confirm_timeout_s": CONFIRM_TIMEOUT_S},
            pipeline={
                "step_back_after_s": step_back_after_s,
                "sink_probe_interval_s": 0.5,
                "max_in_flight": 300,
            },
        )
        sink = OutageSink(build_sink(cfg, Metrics()))
        async with running_bridge(cfg, sink=sink) as bridge:
            await wait_for(lambda: sim.stats.confirmed == 500, 60, "the first 500 confirmed")
            sink.down = True
            sim.publish(1500)
            stepped_back_seen = False
            loop = asyncio.get_running_loop()
            until = loop.time() + OUTAGE_S
            while loop.time() < until:
                problems = " ".join(bridge.problems())
                stepped_back_seen |= "logged out while the sink is unavailable" in problems
                await asyncio.sleep(0.1)
            held_timeouts = sim.stats.confirm_timeouts_online
            all_timeouts = sim.stats.confirm_timeouts
            sink.down = False
            await wait_for(lambda: sim.stats.confirmed == 2000, 90, "all 2000 confirmed")
            assert sink.failed_writes > 0
            after = bridge.problems()
        v = verdict(sim, await read_back(kafka.bootstrap, topics.all))
        print(
            f"outage {OUTAGE_S:g} s, confirm timeout {CONFIRM_TIMEOUT_S:g} s: "
            f"timeouts on an open connection={held_timeouts} all timeouts={all_timeouts} "
            f"redelivered={sim.stats.redelivered} order_violations={v.order_violations}"
        )
        assert (v.delivered, v.duplicates, v.lost) == (2000, 0, 0), v.problems
        if step_back_after_s:
            assert stepped_back_seen
            assert after == []
            assert held_timeouts == 0, "a push timed out on an open connection"
            if redeliver_on_disconnect:
                assert all_timeouts == 0
            assert v.order_violations == 0, v.problems
        else:
            # The measure can fail: without stepping back, held pushes time out.
            assert held_timeouts > 0
