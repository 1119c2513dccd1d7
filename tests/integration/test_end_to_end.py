"""Simulator -> bridge -> real Kafka: order, exactly-once visibility, failures."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import structlog
from confluent_kafka import Consumer, TopicPartition

from bridge.errors import SinkError
from bridge.observability.metrics import Metrics
from bridge.pipeline.ports import Batch, Refused
from bridge.sinks.kafka import KafkaSink
from bridge.sources.tmc.generator import Event
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

pytestmark = pytest.mark.integration


async def test_end_to_end_every_message_once_in_order_per_key(
    kafka: KafkaBroker, topics: Topics
) -> None:
    """3,000 generated order events arrive once each, each tid in one partition, in
    publish order, and every TMC message is confirmed."""
    async with simulator() as sim:
        sim.publish(3000)
        cfg = bridge_config(sim.url, kafka.bootstrap, topics)
        async with running_bridge(cfg) as bridge:
            await wait_for(lambda: sim.stats.confirmed == 3000, 60, "all confirmed")
            assert bridge.pipeline.stats.committed == 3000
        arrived = await read_back(kafka.bootstrap, topics.all)
        v = verdict(sim, arrived)
        assert v.ok, v.problems
        assert (v.delivered, v.duplicates, v.order_violations, v.lost) == (3000, 0, 0, 0)
        keys = {a.key for a in arrived if a.topic == topics.trade}
        assert len(keys) > 100  # many orders, spread over partitions
        assert {a.partition for a in arrived if a.topic == topics.trade} == {0, 1, 2}
        assert sim.stats.redelivered == 0


async def test_several_connections_share_the_group_without_loss(
    kafka: KafkaBroker, topics: Topics
) -> None:
    """Three logins to one group: each message pushed to one of them, all land once, and
    each key stays in one partition (order across connections is not promised by TMC)."""
    async with simulator() as sim:
        sim.publish(2000)
        cfg = bridge_config(sim.url, kafka.bootstrap, topics, connections=3)
        async with running_bridge(cfg) as bridge:
            await wait_for(lambda: sim.stats.confirmed == 2000, 60, "all confirmed")
            assert bridge.source.logged_in == 3
        assert sim.summary()["connections_online"] == 0
        v = verdict(sim, await read_back(kafka.bootstrap, topics.all))
        assert (v.delivered, v.duplicates, v.lost) == (2000, 0, 0)
        assert not [p for p in v.problems if "several partitions" in p]


class AbortSecondBatch(KafkaSink):
    """Writes the second batch for real, then aborts it, as an abortable error would."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.batches = 0

    def write_batch(self, batch: Batch) -> list[Refused]:
        self.batches += 1
        if self.batches == 2:
            producer = self._producer
            assert producer is not None
            producer.begin_transaction()
            for rec in batch.records:
                producer.produce(rec.topic, value=rec.value, key=rec.key, headers=list(rec.headers))
            producer.flush(10)
            producer.abort_transaction(10)
            raise SinkError("injected abort after the batch was written")
        return super().write_batch(batch)


async def test_read_committed_never_sees_an_aborted_batch(
    kafka: KafkaBroker, topics: Topics
) -> None:
    """The aborted copy of batch 2 is in the log (read_uncommitted sees it) but a
    read_committed consumer sees every message exactly once."""
    async with simulator() as sim:
        sim.publish(1500)
        cfg = bridge_config(sim.url, kafka.bootstrap, topics, pipeline={"batch_max_messages": 300})
        sink = AbortSecondBatch(cfg.sink.kafka, metrics=Metrics())
        async with running_bridge(cfg, sink=sink) as bridge:
            await wait_for(lambda: sim.stats.confirmed == 1500, 60, "all confirmed")
            assert bridge.pipeline.stats.batch_retries >= 1
        v = verdict(sim, await read_back(kafka.bootstrap, topics.all))
        assert (v.delivered, v.duplicates, v.order_violations, v.lost) == (1500, 0, 0, 0)
        uncommitted = await asyncio.to_thread(count_uncommitted, kafka.bootstrap, topics.all)
        assert uncommitted > 1500  # the aborted records are physically there


def count_uncommitted(bootstrap: str, topics: list[str]) -> int:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "uncommitted",
            "isolation.level": "read_uncommitted",
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(timeout=10)
        total = 0
        for t in topics:
            for p in meta.topics[t].partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)
                total += high
        # Watermarks include one control record per transaction per partition.
        consumer.assign(
            [TopicPartition(t, p, 0) for t in topics for p in meta.topics[t].partitions]
        )
        seen = 0
        empty = 0
        while seen < total and empty < 6:
            batch = consumer.consume(1000, 0.5)
            empty = 0 if batch else empty + 1
            seen += sum(1 for m in batch if not m.error())
        return seen
    finally:
        consumer.close()


async def test_broker_down_nothing_confirmed_then_everything_delivered(
    tmp_path: Path, topics: Topics, kafka: KafkaBroker
) -> None:
    """Kafka stops mid-stream: no confirm while it is down (redeliveries are absorbed);
    after it returns every message is delivered once and confirmed."""
    own = KafkaBroker(tmp_path / "kafka-down")
    own.start()
    try:
        for name in topics.all:
            own.create_topic(name, partitions=3)
        async with simulator(confirm_timeout_s=3.0) as sim:
            cfg = bridge_config(sim.url, own.bootstrap, topics)
            async with running_bridge(cfg) as bridge:
                sim.publish(1000)
                await wait_for(lambda: sim.stats.confirmed == 1000, 60, "first 1000")
                await asyncio.to_thread(own.stop)
                sim.publish(1000)
                await wait_for(lambda: bridge.pipeline.in_flight > 0, 10, "messages held")
                confirmed_when_down = sim.stats.confirmed
                await asyncio.sleep(8)  # > confirm timeout: the simulator redelivers
                assert sim.stats.confirmed == confirmed_when_down == 1000
                assert sim.stats.redelivered > 0
                await asyncio.to_thread(own.start)
                await wait_for(lambda: sim.stats.confirmed == 2000, 120, "all confirmed")
            v = verdict(sim, await read_back(own.bootstrap, topics.all))
            assert (v.delivered, v.lost) == (2000, 0), v.problems
            assert v.duplicates == 0, v.problems
    finally:
        own.stop()


async def test_wrong_app_secret_is_a_clear_login_error_and_confirms_nothing(
    kafka: KafkaBroker, topics: Topics
) -> None:
    async with simulator() as sim:
        sim.publish(10)
        cfg = bridge_config(sim.url, kafka.bootstrap, topics, secret="not-the-secret")
        with structlog.testing.capture_logs() as logs:
            async with running_bridge(cfg) as bridge:
                await wait_for(lambda: sim.stats.logins_failed >= 2, 20, "login attempts")
                assert bridge.source.logged_in == 0
                assert "login refused" in bridge.source.last_errors[0]
        assert sim.stats.confirmed == 0 and sim.stats.pushes == 0
        refused = [e for e in logs if e["event"] == "tmc login refused"]
        assert refused and refused[0]["status_phrase"] == "invalid sign"
        assert not any("not-the-secret" in json.dumps(e, default=str) for e in logs)


async def test_malformed_frame_is_skipped_and_the_session_goes_on(
    kafka: KafkaBroker, topics: Topics
) -> None:
    """A malformed frame in the middle of a stream: one clear log line, the frame is
    skipped, the session stays up, and every message is delivered once."""
    async with simulator(confirm_timeout_s=2.0) as sim:
        cfg = bridge_config(sim.url, kafka.bootstrap, topics)
        with structlog.testing.capture_logs() as logs:
            async with running_bridge(cfg):
                sim.publish(500)
                await wait_for(lambda: sim.stats.confirmed >= 100, 30, "first confirms")
                assert sim.inject("malformed_frame")
                sim.publish(500)
                await wait_for(lambda: sim.stats.confirmed == 1000, 60, "all confirmed")
                assert sim.stats.logins_ok == 1
        bad = [e for e in logs if e["event"] == "tmc frame skipped"]
        assert len(bad) == 1 and "1073741824" in bad[0]["reason"]
        assert bad[0]["kind"] == "malformed"
        v = verdict(sim, await read_back(kafka.bootstrap, topics.all))
        assert (v.delivered, v.duplicates, v.lost) == (1000, 0, 0), v.problems


async def test_duplicate_push_is_written_once(kafka: KafkaBroker, topics: Topics) -> None:
    async with simulator() as sim:
        cfg = bridge_config(sim.url, kafka.bootstrap, topics)
        async with running_bridge(cfg) as bridge:
            await wait_for(lambda: bridge.source.logged_in == 1, 20, "login")
            assert sim.inject("duplicate_push")
            sim.publish(200)
            await wait_for(lambda: sim.stats.confirmed == 200, 30, "all confirmed")
            await asyncio.sleep(0.5)
            stats = bridge.pipeline.stats
            assert stats.duplicates_in_flight + stats.duplicates_committed == 1
        assert sim.stats.pushes == 201 and sim.stats.duplicate_confirms <= 1
        v = verdict(sim, await read_back(kafka.bootstrap, topics.all))
        assert (v.delivered, v.duplicates) == (200, 0)


async def test_permanent_failures_go_to_the_dead_letter_topic_and_are_confirmed(
    kafka: KafkaBroker, topics: Topics
) -> None:
    """Not JSON, a missing key, and a record the broker refuses as too large: each one
    lands in the dead-letter topic with its reason, and each is confirmed."""
    kafka.create_topic(topics.other + "-small", partitions=1, config={"max.message.bytes": "2000"})
    async with simulator() as sim:
        big = json.dumps({"num_iid": 15380658823, "desc": "x" * 5000})
        ids = sim.publish_events(
            [
                Event("taobao_trade_TradeCreate", "{not json", 1, "s", 0, 0),
                Event("taobao_trade_TradeBuyerPay", '{"oid": 5}', 1, "s", 0, 0),
                Event("taobao_item_ItemUpdate", big, 1, "s", 0, 0),
                Event("taobao_trade_TradeCreate", '{"tid": 4123456789012345678}', 1, "s", 0, 0),
            ]
        )
        cfg = bridge_config(sim.url, kafka.bootstrap, topics)
        routing = cfg.routing.model_copy(
            update={"topics": {"taobao_trade_*": topics.trade, "*": topics.other + "-small"}}
        )
        cfg = cfg.model_copy(update={"routing": routing})
        async with running_bridge(cfg) as bridge:
            await wait_for(lambda: sim.stats.confirmed == 4, 30, "all confirmed")
            assert bridge.pipeline.stats.dead_lettered == 3
        arrived = await read_back(kafka.bootstrap, [topics.dlq, topics.trade])
        assert sorted(a.message_id for a in arrived if a.topic == topics.dlq) == ids[:3]
        assert [a.key for a in arrived if a.topic == topics.trade] == [b"4123456789012345678"]
        reasons = await asyncio.to_thread(dlq_reasons, kafka.bootstrap, topics.dlq)
        assert "not JSON" in reasons[ids[0]]
        assert "none of the key fields" in reasons[ids[1]]
        assert "MSG_SIZE_TOO_LARGE" in reasons[ids[2]]


def dlq_reasons(bootstrap: str, topic: str) -> dict[int, str]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "dlq",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    out: dict[int, str] = {}
    try:
        for _ in range(20):
            for m in consumer.consume(100, 0.5):
                if not m.error():
                    h = {k: v.decode() for k, v in m.headers() or []}
                    out[int(h["tmc.message_id"])] = h["tmc.dlq.reason"]
            if len(out) >= 3:
                break
        return out
    finally:
        consumer.close()
