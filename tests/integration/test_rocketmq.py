"""RocketMQ sink and ONS source against a real RocketMQ broker (ACL on) started by the suite.

Combinations: TMC (simulator) -> RocketMQ ordered and transactional, ONS -> Kafka,
ONS -> RocketMQ; credentials right and wrong; the broker stopped mid-run; the bridge
killed inside a transaction (check-back answered from the journal).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
import yaml

import devtools
from bridge import config as cfgmod
from bridge.config import BridgeConfig
from bridge.errors import RocketMQSendError
from bridge.rocketmq import client as sdk
from bridge.sources.tmc.generator import OrderGenerator
from devtools import harness
from devtools.brokers.kafka import KafkaBroker
from devtools.brokers.rocketmq import RocketMQBroker
from devtools.rocketmq_io import JushitaPublisher, read_topics
from tests.integration.conftest import (
    ACCESS_KEY,
    APP_KEY,
    SECRET,
    SECRET_KEY,
    Topics,
    read_back,
    running_bridge,
    simulator,
    verdict,
    wait_for,
)

pytestmark = pytest.mark.integration

CREDENTIALS = (ACCESS_KEY, SECRET_KEY, "CLOUD")


@pytest.fixture
def rtopics(rocketmq: RocketMQBroker) -> Topics:
    tag = uuid.uuid4().hex[:8]
    t = Topics(f"trade_{tag}", f"refund_{tag}", f"other_{tag}", f"dlq_{tag}")
    for name in t.all:
        rocketmq.create_topic(name, queues=1 if name == t.dlq else 4, order=name != t.dlq)
    return t


def routing(topics: Topics) -> dict[str, Any]:
    return {
        "topics": {
            "taobao_trade_*": topics.trade,
            "taobao_refund_*": topics.refund,
            "*": topics.other,
        },
        "dead_letter_topic": topics.dlq,
    }


def rocketmq_sink(broker: RocketMQBroker, **overrides: Any) -> dict[str, Any]:
    return {
        "type": "rocketmq",
        "rocketmq": {
            "name_server": broker.namesrv_addr,
            "producer_group": f"bridge_{uuid.uuid4().hex[:8]}",
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "channel": "CLOUD",
            "send_timeout_ms": 2000,
            **overrides,
        },
    }


def tmc_source(sim_url: str, **overrides: Any) -> dict[str, Any]:
    return {
        "type": "tmc",
        "tmc": {
            "url": sim_url,
            "app_key": APP_KEY,
            "app_secret": SECRET,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
            "pull_interval_s": 1.0,
            **overrides,
        },
    }


def ons_source(broker: RocketMQBroker, topic: str, **overrides: Any) -> dict[str, Any]:
    return {
        "type": "ons",
        "ons": {
            "name_server": broker.namesrv_addr,
            "group_id": f"CID_{uuid.uuid4().hex[:8]}",
            "topics": [topic],
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "channel": "CLOUD",
            **overrides,
        },
    }


def config(source: dict[str, Any], sink: dict[str, Any], topics: Topics) -> BridgeConfig:
    doc = {
        "source": source,
        "sink": sink,
        "routing": routing(topics),
        "pipeline": {
            "batch_linger_ms": 10,
            "retry_backoff_min_s": 0.2,
            "retry_backoff_max_s": 1.0,
            "drain_timeout_s": 10,
        },
        "http": {"host": "127.0.0.1", "port": 0},
    }
    return cfgmod.parse(doc, env={})


async def read_rocketmq(
    broker: RocketMQBroker, topics: list[str], expected: int
) -> list[harness.Arrived]:
    return await asyncio.to_thread(
        read_topics, broker.namesrv_addr, topics, expected=expected, credentials=CREDENTIALS
    )


async def test_tmc_to_rocketmq_ordered_keeps_each_order_in_one_queue_in_order(
    rocketmq: RocketMQBroker, rtopics: Topics
) -> None:
    async with simulator() as sim:
        sim.publish(2000)
        cfg = config(tmc_source(sim.url), rocketmq_sink(rocketmq), rtopics)
        async with running_bridge(cfg) as bridge:
            await wait_for(lambda: sim.stats.confirmed == 2000, 90, "all confirmed")
            assert bridge.pipeline.stats.committed == 2000
        arrived = await read_rocketmq(rocketmq, rtopics.all, 2000)
        v = verdict(sim, arrived)
        assert (v.delivered, v.duplicates, v.order_violations, v.lost) == (2000, 0, 0, 0), (
            v.problems
        )
        trade = [a for a in arrived if a.topic == rtopics.trade]
        assert len({a.key for a in trade}) > 100
        assert {a.partition for a in trade} == {0, 1, 2, 3}  # orders spread over queues


def _send_keyed(broker: RocketMQBroker, topic: str, *, timeout_ms: int) -> tuple[int, int]:
    """600 records of 12 keys through the client as the ordered sink sends them (the key's
    CRC-32 as shard, a failed attempt retried); returns (records, failed attempts)."""
    group = f"place_{uuid.uuid4().hex[:8]}"
    settings = sdk.ClientSettings(broker.namesrv_addr, None, CREDENTIALS, instance_name=group)
    producer = sdk.Producer(group, settings, send_timeout_ms=timeout_ms, max_message_bytes=1 << 20)
    producer.start()
    failed = 0
    try:
        for i in range(600):
            key = str(3658921147856043000 + i % 12)
            msg = sdk.OutMessage(
                topic, f"v{i}".encode(), "t", [key, str(i)], [("tmc.message_id", str(i))]
            ).wire()
            for _ in range(200):
                try:
                    producer.send_to_shard(msg, zlib.crc32(key.encode()))
                    break
                except RocketMQSendError:
                    failed += 1
                    time.sleep(0.01)
            else:
                raise AssertionError(f"record {i} not sent in 200 attempts")
    finally:
        producer.shutdown()
    return 600, failed


async def test_ordered_sends_keep_a_key_in_its_queue_also_when_attempts_fail(
    rocketmq: RocketMQBroker,
) -> None:
    """Every record of a key lands in queue crc32(key) % 4, also the ones whose first
    attempts failed: a 1 ms send timeout fails part of the attempts (some of them stored
    anyway, which shows up as duplicates), and each retry goes through the selector again.
    librocketmq's own retry (send_orderly_with_sharding_key) would move it to the next
    queue of the route; the bridge's sends have none."""
    topic = f"place_{uuid.uuid4().hex[:8]}"
    rocketmq.create_topic(topic, queues=4, order=True)
    records, failed = await asyncio.to_thread(_send_keyed, rocketmq, topic, timeout_ms=1)
    arrived = [a for a in await read_rocketmq(rocketmq, [topic], records) if a.key]
    queues: dict[bytes, set[int]] = {}
    for a in arrived:
        assert a.key is not None
        queues.setdefault(a.key, set()).add(a.partition)
    assert len(queues) == 12
    assert {k: sorted(q) for k, q in queues.items() if len(q) > 1} == {}
    assert all(q == {sdk.queue_index(k, 4)} for k, q in queues.items()), queues
    assert len({a.message_id for a in arrived}) >= records
    assert failed > 0, "no attempt failed: the 1 ms timeout did not provoke a retry here"


async def test_tmc_to_rocketmq_transactional_commits_and_journals(
    rocketmq: RocketMQBroker, rtopics: Topics, tmp_path: Path
) -> None:
    async with simulator() as sim:
        sim.publish(1000)
        sink = rocketmq_sink(rocketmq, mode="transactional", journal_dir=str(tmp_path / "j"))
        cfg = config(tmc_source(sim.url), sink, rtopics)
        async with running_bridge(cfg) as bridge:
            await wait_for(lambda: sim.stats.confirmed == 1000, 90, "all confirmed")
            assert bridge.pipeline.stats.committed == 1000
        v = verdict(sim, await read_rocketmq(rocketmq, rtopics.all, 1000))
        assert (v.delivered, v.duplicates, v.lost) == (1000, 0, 0), v.problems
        journalled = [
            line
            for p in (tmp_path / "j").glob("journal-*.log")
            for line in p.read_text().splitlines()
            if not line.startswith("@")  # time lines
        ]
        assert len(journalled) == len(set(journalled)) == 1000


def spawn_crashing(name: str, crash: str, config: Path, workdir: Path) -> harness.Child:
    """``python -m devtools.crash_bridge``: ``tmc-bridge run`` with a crash hook in the
    sink (the repository root on the path: devtools is not installed)."""
    root = str(Path(devtools.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    log_path = workdir / f"{name}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.crash_bridge", "--crash", crash, "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": path},
        cwd=workdir,
    )
    return harness.Child(name, proc, log_path, log)


async def test_transactional_check_back_after_kill_follows_the_journal(
    rocketmq: RocketMQBroker, rtopics: Topics, tmp_path: Path
) -> None:
    """The bridge is killed inside a local transaction twice: once before the journal
    entry (the broker's check-back must roll the half message back, TMC redelivers it)
    and once after (check-back commits it, the redelivery is not written again).
    In the end every message is in the topic exactly once."""
    total = 600
    sink = rocketmq_sink(rocketmq, mode="transactional", journal_dir=str(tmp_path / "journal"))
    async with simulator(confirm_timeout_s=4.0) as sim:
        sim.publish(total)
        doc = {
            "source": tmc_source(sim.url),
            "sink": sink,
            "routing": routing(rtopics),
            "pipeline": {"batch_linger_ms": 10, "batch_max_messages": 50},
            "log": {"format": "json"},
            "http": {"host": "127.0.0.1", "port": 0},
        }
        path = tmp_path / "bridge.yaml"
        path.write_text(yaml.safe_dump(doc))
        children = []

        def decisions() -> list[str]:
            return [
                json.loads(line)["decision"]
                for child in children
                for line in child.log_path.read_text().splitlines()
                if "transaction check-back" in line
            ]

        for run, crash in enumerate(["before_journal:150", "after_journal:120", ""]):
            if crash:
                child = spawn_crashing(f"bridge{run}", crash, path, tmp_path)
            else:
                child = harness.spawn(f"bridge{run}", ["run", "--config", str(path)], tmp_path, {})
            children.append(child)
            try:
                if crash:
                    code = await asyncio.to_thread(child.proc.wait, 60)
                    assert code == 86, child.tail()
                else:
                    await wait_for(lambda: sim.stats.confirmed == total, 120, "all confirmed")
                    # The broker asks the restarted bridge about both open half messages
                    # once it has registered (its first heartbeat can take 30 s).
                    await wait_for(
                        lambda: {"commit", "rollback"} <= set(decisions()), 120, "check-backs"
                    )
            finally:
                child.stop()
        assert sim.stats.redelivered > 0
        v = verdict(sim, await read_rocketmq(rocketmq, rtopics.all, total))
        assert (v.delivered, v.duplicates, v.lost) == (total, 0, 0), v.problems


async def test_rocketmq_broker_down_confirms_nothing_and_loses_nothing(
    rocketmq: RocketMQBroker, rtopics: Topics
) -> None:
    async with simulator(confirm_timeout_s=5.0) as sim:
        sim.publish(500)
        cfg = config(tmc_source(sim.url), rocketmq_sink(rocketmq), rtopics)
        async with running_bridge(cfg):
            await wait_for(lambda: sim.stats.confirmed == 500, 60, "first part confirmed")
            await asyncio.to_thread(rocketmq.stop_broker)
            sim.publish(1000)
            await asyncio.sleep(3)
            while_down = sim.stats.confirmed
            await asyncio.sleep(4)
            assert sim.stats.confirmed == while_down == 500
            await asyncio.to_thread(rocketmq.start_broker)
            await wait_for(lambda: sim.stats.confirmed == 1500, 120, "all confirmed")
        v = verdict(sim, await read_rocketmq(rocketmq, rtopics.all, 1500))
        assert (v.delivered, v.lost) == (1500, 0), v.problems


async def test_wrong_rocketmq_credentials_confirm_nothing_with_a_clear_error(
    rocketmq: RocketMQBroker, rtopics: Topics, capsys: pytest.CaptureFixture[str]
) -> None:
    async with simulator() as sim:
        sim.publish(50)
        sink = rocketmq_sink(rocketmq, secret_key="wrong-secret-key-999", retries=0)
        cfg = config(tmc_source(sim.url), sink, rtopics)
        async with running_bridge(cfg) as bridge:
            await wait_for(lambda: bridge.pipeline.stats.batch_retries >= 2, 60, "retries")
            assert sim.stats.confirmed == 0
    out = capsys.readouterr().out
    assert "check sink.rocketmq access_key, secret_key and channel" in out
    assert "wrong-secret-key-999" not in out


def _body(**fields: str) -> bytes:
    base = {"topic": '"taobao_trade_TradeCreate"', "content": '"{\\"tid\\":1}"'}
    base.update(fields)
    return ("{" + ",".join(f'"{k}":{v}' for k, v in base.items()) + "}").encode()


#: Each of these used to be a poison message for some part of the mapping or routing.
HOSTILE_ONS_BODIES = [
    b"not json at all",
    b'{"content":"{}"}',
    _body(content="[" * 2000 + "]" * 2000),
    _body(outgoing_id='"\u00b2"'),
    _body(outgoing_id="9" * 5000),
    _body(outgoing_id="9223372036854775808"),
    _body(publish_time='"' + "1" * 400 + '"'),
    _body(user_id="1.5"),
    _body(content='"\\ud800"'),
    b'{"topic":"taobao_trade_TradeCreate","content":"\xff\xfe"}',
]
TOTAL_HOSTILE = len(HOSTILE_ONS_BODIES)


def publish(
    broker: RocketMQBroker, topic: str, count: int, *, by_key: bool = False
) -> list[dict[str, Any]]:
    pub = JushitaPublisher(broker.namesrv_addr, topic, credentials=CREDENTIALS)
    try:
        ledger = pub.publish(OrderGenerator(seed=7).events(count), by_key=by_key)
        # Bodies Jushita should never send, each to be dead-lettered and acknowledged.
        for i, body in enumerate(HOSTILE_ONS_BODIES):
            pub.publish_raw(body, tags="taobao_trade_TradeCreate", key=str(i + 1))
    finally:
        pub.close()
    return ledger


def check_ons(
    ledger: list[dict[str, Any]], arrived: list[harness.Arrived], dlq: str
) -> harness.Verdict:
    dead = [a for a in arrived if a.topic == dlq]
    assert len(dead) == TOTAL_HOSTILE
    return harness.verify(ledger, [a for a in arrived if a.topic != dlq], len(ledger))


async def test_ons_to_kafka(rocketmq: RocketMQBroker, kafka: KafkaBroker, topics: Topics) -> None:
    source_topic = f"jst_sync_{uuid.uuid4().hex[:8]}"
    rocketmq.create_topic(source_topic, queues=4)
    ledger = await asyncio.to_thread(publish, rocketmq, source_topic, 1000)
    sink = {
        "type": "kafka",
        "kafka": {
            "bootstrap_servers": kafka.bootstrap,
            "transactional_id": f"it-{uuid.uuid4().hex[:6]}",
        },
    }
    cfg = config(ons_source(rocketmq, source_topic), sink, topics)
    async with running_bridge(cfg) as bridge:
        await wait_for(lambda: bridge.source.consumed >= 1000 + TOTAL_HOSTILE, 90, "all consumed")  # type: ignore[attr-defined]
        assert bridge.source.reconsume_later == 0  # type: ignore[attr-defined]
    v = check_ons(ledger, await read_back(kafka.bootstrap, topics.all), topics.dlq)
    assert (v.delivered, v.duplicates, v.lost) == (1000, 0, 0), v.problems


async def test_ons_orderly_to_rocketmq_keeps_order(
    rocketmq: RocketMQBroker, rtopics: Topics
) -> None:
    source_topic = f"jst_sync_{uuid.uuid4().hex[:8]}"
    rocketmq.create_topic(source_topic, queues=4, order=True)
    ledger = await asyncio.to_thread(publish, rocketmq, source_topic, 1000, by_key=True)
    cfg = config(ons_source(rocketmq, source_topic, orderly=True), rocketmq_sink(rocketmq), rtopics)
    async with running_bridge(cfg) as bridge:
        await wait_for(lambda: bridge.source.consumed >= 1000 + TOTAL_HOSTILE, 90, "all consumed")  # type: ignore[attr-defined]
    v = check_ons(
        ledger, await read_rocketmq(rocketmq, rtopics.all, 1000 + TOTAL_HOSTILE), rtopics.dlq
    )
    assert (v.delivered, v.duplicates, v.order_violations, v.lost) == (1000, 0, 0, 0), v.problems


async def test_ons_wrong_credentials_consume_nothing(
    rocketmq: RocketMQBroker, rtopics: Topics, capsys: pytest.CaptureFixture[str]
) -> None:
    source_topic = f"jst_sync_{uuid.uuid4().hex[:8]}"
    rocketmq.create_topic(source_topic, queues=2)
    await asyncio.to_thread(publish, rocketmq, source_topic, 20)
    source = ons_source(rocketmq, source_topic, secret_key="not-the-secret-000")
    cfg = config(source, rocketmq_sink(rocketmq), rtopics)
    async with running_bridge(cfg) as bridge:
        await asyncio.sleep(8)
        assert bridge.source.received == 0  # type: ignore[attr-defined]
        assert bridge.pipeline.stats.committed == 0
    out = capsys.readouterr().out
    assert "the broker refused the credentials" in out
    assert "not-the-secret-000" not in out


__all__ = ["os"]


async def test_ons_source_finds_the_name_server_through_an_address_server(
    rocketmq: RocketMQBroker, rtopics: Topics, tmp_path: Path
) -> None:
    """ONS clients are usually given an address server URL (ONSAddr), which answers with
    the name server list; the source accepts one as name_server_domain. The bridge runs as
    its own process here: librocketmq keeps process-wide client state (name server
    addresses, broker connections), and this test must not inherit the other tests'."""
    import http.server
    import threading

    class AddressServer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = rocketmq.namesrv_addr.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AddressServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source_topic = f"jst_sync_{uuid.uuid4().hex[:8]}"
        rocketmq.create_topic(source_topic, queues=2)
        ledger = await asyncio.to_thread(publish, rocketmq, source_topic, 200)
        source = ons_source(rocketmq, source_topic)
        del source["ons"]["name_server"]
        url = f"http://127.0.0.1:{server.server_address[1]}/rocketmq/nsaddr4client-internal"
        source["ons"]["name_server_domain"] = url
        doc = {
            "source": source,
            "sink": rocketmq_sink(rocketmq),
            "routing": routing(rtopics),
            "http": {"host": "127.0.0.1", "port": 0},
        }
        path = tmp_path / "bridge.yaml"
        path.write_text(yaml.safe_dump(doc))
        child = harness.spawn("bridge", ["run", "--config", str(path)], tmp_path, {})
        try:
            arrived = await read_rocketmq(rocketmq, rtopics.all, 202)
        finally:
            assert child.stop() == 0, child.tail()
        assert "ons consumer started" in child.log_path.read_text()
        v = check_ons(ledger, arrived, rtopics.dlq)
        assert (v.delivered, v.duplicates, v.lost) == (200, 0, 0), v.problems
    finally:
        server.shutdown()
        server.server_close()
