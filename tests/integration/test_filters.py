"""Filters against the simulator and real Kafka: load shedding only while the bridge is
behind (every message in Kafka or counted as dropped and confirmed, nothing lost
silently), and a divert rule sending one seller's messages to its own topic."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import Message

from bridge.app import build_sink
from bridge.config import BridgeConfig
from bridge.headers import H_FILTER_RULE
from bridge.observability.metrics import Metrics
from bridge.pipeline.ports import Batch, Refused
from bridge.sources.tmc.generator import Event
from devtools import harness
from devtools.brokers.kafka import KafkaBroker
from tests.integration.conftest import (
    Topics,
    bridge_config,
    running_bridge,
    simulator,
    wait_for,
)

pytestmark = pytest.mark.integration

SHOP_A, SHOP_B = (2_200_000_001, "shop_a"), (2_200_000_002, "shop_b")
THRESHOLD = 300


def events(count: int, first: int, shops: list[tuple[int, str]] | None = None) -> list[Event]:
    """Alternating trade and item events, each with its own key."""
    shops = shops or [SHOP_A]
    out = []
    for i in range(count):
        uid, nick = shops[i % len(shops)]
        key = first + i
        if i % 2:
            doc, topic = {"num_iid": key}, "taobao_item_ItemStockChanged"
        else:
            doc, topic = {"tid": key}, "taobao_trade_TradeCreate"
        out.append(Event(topic, json.dumps(doc), uid, nick, key, key))
    return out


def with_filters(cfg: BridgeConfig, *rules: dict[str, Any]) -> BridgeConfig:
    """The same config with ``filters``, validated as a file would be."""
    doc = cfg.model_dump(exclude_unset=True)
    doc["filters"] = list(rules)
    return BridgeConfig.model_validate(doc)


@dataclass
class Out:
    topic: str
    message_id: int
    key: bytes | None
    headers: dict[str, bytes]


def out_of(msg: Message) -> Out:
    headers = {k: bytes(v or b"") for k, v in msg.headers() or []}
    key = msg.key()
    return Out(
        str(msg.topic()),
        int(headers["tmc.message_id"]),
        key.encode() if isinstance(key, str) else key,
        headers,
    )


async def read_out(bootstrap: str, topics: list[str]) -> list[Out]:
    return await asyncio.to_thread(harness.read_messages, bootstrap, topics, out_of)


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def test_items_are_shed_only_while_the_backlog_is_above_the_threshold(
    kafka: KafkaBroker, topics: Topics
) -> None:
    async with simulator() as sim:
        cfg = bridge_config(sim.url, kafka.bootstrap, topics, pipeline={"batch_max_messages": 100})
        rule = {
            "name": "shed-items",
            "topics": ["taobao_item_*"],
            "when_in_flight_above": THRESHOLD,
            "action": "drop",
        }
        cfg = with_filters(cfg, rule)
        # A slow sink while `slow` is set: the backlog builds up in the pipeline.
        sink = build_sink(cfg, Metrics())
        real_write = sink.write_batch
        slow = True

        def write_batch(batch: Batch) -> list[Refused]:
            if slow:
                time.sleep(0.15)
            return real_write(batch)

        sink.write_batch = write_batch  # type: ignore[method-assign]
        labels = {"rule": "shed-items", "action": "drop", "reason": "topic_backlog"}
        async with running_bridge(cfg, sink=sink) as bridge:
            metrics = bridge.metrics
            samples: list[tuple[float, float]] = []

            async def watch() -> None:
                while True:
                    in_flight = sample(metrics, "tmc_bridge_pipeline_in_flight_messages")
                    dropped = sample(metrics, "tmc_bridge_filter_messages_total", labels)
                    samples.append((in_flight, dropped))
                    await asyncio.sleep(0.01)

            watcher = asyncio.create_task(watch())
            backlog = sim.publish_events(events(1500, 10**15))
            await wait_for(lambda: sim.stats.confirmed == 1500, 90, "the backlog settled")
            watcher.cancel()
            dropped = sample(metrics, "tmc_bridge_filter_messages_total", labels)
            assert dropped > 0, "nothing was shed"
            # Drops happened while the pipeline held more than the threshold.
            assert max(n for n, _ in samples) > THRESHOLD
            rising = [max(a[0], b[0]) for a, b in itertools.pairwise(samples) if b[1] > a[1]]
            assert rising and max(rising) > THRESHOLD
            assert bridge.pipeline.stats.filter_dropped == dropped

            # The sink keeps up again: below the threshold, item events pass.
            slow = False
            await wait_for(lambda: bridge.pipeline.in_flight == 0, 30, "the pipeline emptied")
            calm = sim.publish_events(events(200, 2 * 10**15))
            await wait_for(lambda: sim.stats.confirmed == 1700, 60, "the calm part settled")
            assert sample(metrics, "tmc_bridge_filter_messages_total", labels) == dropped

        arrived = await read_out(kafka.bootstrap, topics.all)
        ids = [a.message_id for a in arrived]
        assert len(ids) == len(set(ids)), "a message was written twice"
        published = set(backlog) | set(calm)
        missing = published - set(ids)
        assert set(ids) <= published
        # Every message is in Kafka or was dropped, counted and confirmed: nothing else.
        assert len(missing) == dropped
        ledger = {m["id"]: m for m in sim.ledger()}
        assert {ledger[i]["topic"] for i in missing} == {"taobao_item_ItemStockChanged"}
        assert all(ledger[i]["state"] == "confirmed" for i in published)
        assert missing <= set(backlog)  # nothing of the calm part was shed
        calm_items = {i for i in calm if ledger[i]["topic"].startswith("taobao_item_")}
        assert len(calm_items) == 100 and calm_items <= set(ids)
        trades = {i for i in published if ledger[i]["topic"].startswith("taobao_trade_")}
        assert trades <= set(ids)  # the rule never touched another topic


async def test_a_divert_rule_sends_one_sellers_messages_to_its_topic(
    kafka: KafkaBroker, topics: Topics
) -> None:
    low = f"low-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(low, partitions=3)
    async with simulator() as sim:
        cfg = bridge_config(sim.url, kafka.bootstrap, topics)
        rule = {
            "name": "shop-b-aside",
            "sellers": {"deny": [SHOP_B[0]]},
            "action": "divert",
            "divert_to": low,
        }
        cfg = with_filters(cfg, rule)
        async with running_bridge(cfg) as bridge:
            ids = sim.publish_events(events(400, 3 * 10**15, [SHOP_A, SHOP_B]))
            await wait_for(lambda: sim.stats.confirmed == 400, 60, "all confirmed")
            labels = {"rule": "shop-b-aside", "action": "divert", "reason": "seller_deny"}
            assert sample(bridge.metrics, "tmc_bridge_filter_messages_total", labels) == 200
        arrived = await read_out(kafka.bootstrap, [*topics.all, low])
        assert sorted(a.message_id for a in arrived) == sorted(ids)
        for a in arrived:
            shop_b = a.headers["tmc.user_id"] == str(SHOP_B[0]).encode()
            if shop_b:
                assert a.topic == low
                assert a.headers[H_FILTER_RULE] == b"shop-b-aside"
            else:
                assert a.topic in (topics.trade, topics.other)
                assert H_FILTER_RULE not in a.headers
            assert a.key is not None and int(a.key) >= 3 * 10**15  # keys kept
