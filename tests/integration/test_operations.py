"""Running it in production: metrics, /readyz, SIGTERM, secrets (simulator + real Kafka)."""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.app import Bridge
from bridge.sources.tmc.generator import Event
from bridge.sources.tmc.simulator import Simulator, SimulatorConfig
from devtools import harness
from devtools.brokers.kafka import KafkaBroker
from tests.integration.conftest import (
    APP_KEY,
    SECRET,
    Topics,
    bridge_config,
    read_back,
    running_bridge,
    simulator,
    wait_for,
)

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(port: int) -> Samples:
    return await asyncio.to_thread(harness.scrape, port)


async def readyz(port: int) -> tuple[int, str]:
    return await asyncio.to_thread(harness.http_get, port, "/readyz")


async def wait_ready(port: int, want: int, timeout_s: float, what: str) -> str:
    deadline = time.monotonic() + timeout_s
    status, body = await readyz(port)
    while status != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz still {status} {body!r}; wanted {want} ({what})")
        await asyncio.sleep(0.2)
        status, body = await readyz(port)
    return body


async def test_metrics_match_the_simulator_and_kafka(kafka: KafkaBroker, topics: Topics) -> None:
    """Scrape /metrics after a stream over two connections: every counter agrees with
    the simulator's ledger and with what a read_committed consumer finds in Kafka."""
    total = 3000
    async with simulator() as sim:
        cfg = bridge_config(sim.url, kafka.bootstrap, topics, connections=2)
        async with running_bridge(cfg) as bridge:
            await wait_for(lambda: bridge.http is not None, 10, "http server")
            assert bridge.http is not None
            port = bridge.http.port
            await wait_ready(port, 200, 30, "both logged in")
            sim.publish(total - 1)
            sim.publish_events([Event("taobao_trade_TradeCreate", "{not json", 1, "s", 0, 0)])
            await wait_for(lambda: sim.stats.confirmed == total, 60, "all confirmed")
            samples = await scrape(port)
            stats = bridge.pipeline.stats
        arrived = await read_back(kafka.bootstrap, topics.all)

    def total_of(name: str, **labels: str) -> float:
        return harness.metric_sum(samples, name, **labels)

    ledger_topics = collections.Counter(m["topic"] for m in sim.ledger())
    for topic, count in ledger_topics.items():
        labels = {"source": "tmc", "topic": topic}
        assert total_of("tmc_bridge_source_received_messages_total", **labels) == count, topic
        assert total_of("tmc_bridge_source_confirmed_messages_total", **labels) == count, topic
    assert total_of("tmc_bridge_source_confirmed_messages_total") == sim.stats.confirmed
    duplicates = total_of("tmc_bridge_source_duplicate_messages_total")
    assert total_of("tmc_bridge_source_received_messages_total") + duplicates == sim.stats.pushes

    in_kafka = collections.Counter(a.topic for a in arrived)
    for topic in topics.all:
        produced = total_of("tmc_bridge_sink_produced_messages_total", sink="kafka", topic=topic)
        assert produced == in_kafka[topic], topic
    assert in_kafka[topics.dlq] == 1
    assert total_of("tmc_bridge_sink_dead_lettered_messages_total", sink="kafka") == 1

    committed = total_of("tmc_bridge_sink_transactions_total", outcome="committed")
    assert committed == stats.batches > 0
    assert total_of("tmc_bridge_pipeline_batch_size_messages_count") == committed
    assert total_of("tmc_bridge_pipeline_batch_size_messages_sum") == total
    assert total_of("tmc_bridge_pipeline_confirm_latency_seconds_count") == total
    assert total_of("tmc_bridge_source_publish_lag_seconds_count") == total
    assert total_of("tmc_bridge_sink_commit_duration_seconds_count") == committed
    assert total_of("tmc_bridge_pipeline_in_flight_messages") == 0
    for connection in ("0", "1"):
        assert total_of("tmc_bridge_source_connection_up", connection=connection) == 1
    assert total_of("tmc_bridge_sink_up", sink="kafka") == 1
    assert total_of("tmc_bridge_app_ready") == 1
    assert total_of("tmc_bridge_app_draining") == 0


async def test_readyz_follows_login_and_the_broker_and_a_stuck_drain_confirms_nothing(
    tmp_path: Path, topics: Topics
) -> None:
    """Not ready before the source logs in; ready; not ready while the broker is gone
    (noticed by the idle probe, no traffic needed); ready again when it is back. Then a
    stop while the broker is down: the drain times out, run() reports it, and nothing
    uncommitted was confirmed."""
    own = KafkaBroker(tmp_path / "kafka-ready")
    own.start()
    try:
        for name in topics.all:
            own.create_topic(name, partitions=3)
        port = harness.free_port()
        url = f"ws://127.0.0.1:{port}/"
        cfg = bridge_config(
            url,
            own.bootstrap,
            topics,
            pipeline={"sink_probe_interval_s": 0.5, "drain_timeout_s": 3},
        )
        bridge = Bridge(cfg)
        run = asyncio.create_task(bridge.run())
        try:
            await wait_for(lambda: bridge.http is not None, 10, "http server")
            assert bridge.http is not None
            http = bridge.http.port
            # Nobody listens on the TMC port yet.
            await wait_for(lambda: bridge.pipeline.sink_problem() is None, 30, "sink ready")
            await wait_for(lambda: bool(bridge.source.problem()), 5, "a refused connect")
            await asyncio.sleep(0.5)
            body = await wait_ready(http, 503, 5, "no TMC server")
            assert body.startswith("not ready: tmc not logged in (last error: Connection"), body
            assert (await asyncio.to_thread(harness.http_get, http, "/livez"))[0] == 200
            sim_cfg = SimulatorConfig(port=port, apps={APP_KEY: SECRET}, confirm_timeout_s=60)
            async with Simulator(sim_cfg) as sim:
                await wait_ready(http, 200, 30, "logged in")
                sim.publish(200)
                await wait_for(lambda: sim.stats.confirmed == 200, 60, "first 200")

                await asyncio.to_thread(own.stop)
                body = await wait_ready(http, 503, 30, "broker stopped while idle")
                assert body.startswith("not ready: kafka sink"), body
                samples = await scrape(http)
                assert harness.metric_sum(samples, "tmc_bridge_sink_up") == 0
                assert harness.metric_sum(samples, "tmc_bridge_app_ready") == 0

                await asyncio.to_thread(own.start)
                await wait_ready(http, 200, 60, "broker back")

                await asyncio.to_thread(own.stop)
                sim.publish(100)
                await wait_for(lambda: bridge.pipeline.in_flight == 100, 10, "100 held")
                started = time.monotonic()
                bridge.request_stop()
                drained = await asyncio.wait_for(run, 30)
                took = time.monotonic() - started
                assert drained is False
                # drain_timeout_s, then the sink's current commit attempt (2 s) returns.
                assert took < 3 + 2 + 5, took
                assert sim.stats.confirmed == 200
                assert bridge.pipeline.stats.committed == 200
        finally:
            if not run.done():
                bridge.request_stop()
                bridge.request_stop()
                await asyncio.wait_for(run, 60)
    finally:
        own.stop()


def not_redelivered_out_of_order(
    ledger: list[dict[str, Any]], arrived: list[harness.Arrived]
) -> list[int]:
    """Ids written after a later id of their key without having been pushed twice."""
    pushes = {int(m["id"]): int(m["pushes"]) for m in ledger}
    by_key: dict[bytes, list[harness.Arrived]] = collections.defaultdict(list)
    for rec in arrived:
        if rec.key is not None:
            by_key[rec.key].append(rec)
    wrong = []
    for recs in by_key.values():
        highest = -1
        for rec in sorted(recs, key=lambda r: r.offset):
            if rec.message_id < highest and pushes.get(rec.message_id, 0) < 2:
                wrong.append(rec.message_id)
            highest = max(highest, rec.message_id)
    return wrong


def _write_config(path: Path, bootstrap: str, topics: Topics, drain_timeout_s: float) -> None:
    doc: dict[str, Any] = {
        "source": {
            "type": "tmc",
            "tmc": {
                "url": "${TMC_URL}",
                "app_key": "${TMC_APP_KEY}",
                "app_secret": "${TMC_APP_SECRET}",
                "reconnect_min_s": 0.5,
                "reconnect_max_s": 2,
                "pull_interval_s": 1,
            },
        },
        "sink": {
            "type": "kafka",
            "kafka": {
                "bootstrap_servers": bootstrap,
                # The same id for both runs: the restarted bridge fences the old one.
                "transactional_id": f"sigterm-{uuid.uuid4().hex[:8]}",
                "commit_timeout_s": 5,
            },
        },
        "routing": {
            "topics": {
                "taobao_trade_*": topics.trade,
                "taobao_refund_*": topics.refund,
                "*": topics.other,
            },
            "dead_letter_topic": topics.dlq,
        },
        "pipeline": {"batch_max_messages": 500, "drain_timeout_s": drain_timeout_s},
        "log": {"level": "info", "format": "json"},
        "http": {"host": "127.0.0.1", "port": "${TMC_BRIDGE_HTTP_PORT}"},
    }
    path.write_text(yaml.safe_dump(doc))


def test_sigterm_mid_stream_drains_and_a_restart_delivers_each_message_once(
    tmp_path: Path, kafka: KafkaBroker, topics: Topics
) -> None:
    """The real process: SIGTERM while messages flow -> exit 0 within drain_timeout_s
    with everything committed confirmed; the restarted bridge delivers the rest; Kafka
    holds every message exactly once. The app secret is a sentinel that must appear in
    no log line and no metric, also when a wrong one makes the login fail."""
    total, drain_timeout_s = 30_000, 10.0
    sentinel = f"sentinel-{uuid.uuid4().hex}"
    wrong = f"wrong-{sentinel}"
    config = tmp_path / "bridge.yaml"
    _write_config(config, kafka.bootstrap, topics, drain_timeout_s)
    sim_port = harness.free_port()
    sim = harness.start_simulator(
        tmp_path, port=sim_port, messages=total, confirm_timeout_s=5.0, secret=sentinel
    )
    exposed: list[str] = []
    try:
        # 1. A wrong secret: a clear login error, not ready, and the secret nowhere.
        bad = harness.start_bridge(tmp_path, config, sim_port=sim_port, secret=wrong, name="bad")
        try:
            deadline = time.monotonic() + 20
            while "login refused" not in harness.http_get(bad.http_port, "/readyz")[1]:
                assert time.monotonic() < deadline, bad.tail()
                time.sleep(0.2)
            status, body = harness.http_get(bad.http_port, "/readyz")
            assert status == 503
            exposed += [body, harness.http_get(bad.http_port, "/metrics")[1]]
        finally:
            assert bad.stop() == 0, bad.tail()
        assert harness.sim_get(sim_port, "stats")["confirmed"] == 0

        # 2. SIGTERM mid-stream.
        first = harness.start_bridge(tmp_path, config, sim_port=sim_port, secret=sentinel)
        stats = harness.wait_confirmed(sim_port, 3000, timeout_s=60, watch=first)
        assert stats["confirmed"] >= 3000
        exposed.append(harness.http_get(first.http_port, "/metrics")[1])
        signalled = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        try:
            code = first.proc.wait(drain_timeout_s + 10)
        except subprocess.TimeoutExpired:
            first.stop(sig=signal.SIGKILL)
            raise AssertionError(f"no exit after SIGTERM:\n{first.tail()}") from None
        took = time.monotonic() - signalled
        first.stop()
        assert code == 0, first.tail()
        assert took < drain_timeout_s, f"exit took {took:.1f} s"
        after_stop = harness.sim_get(sim_port, "stats")
        assert after_stop["confirmed"] < total, "not mid-stream: raise total"
        log_text = first.log_path.read_text()
        assert '"bridge draining"' in log_text and '"bridge stopped"' in log_text

        # 3. Restart: the rest arrives; the redeliveries of the drain are absorbed.
        second = harness.start_bridge(
            tmp_path, config, sim_port=sim_port, secret=sentinel, name="bridge-2"
        )
        final = harness.wait_confirmed(sim_port, total, timeout_s=120, watch=second)
        exposed.append(harness.http_get(second.http_port, "/metrics")[1])
        assert second.stop() == 0, second.tail()
        ledger = harness.sim_get(sim_port, "ledger")
    finally:
        sim.stop()
    assert final["confirmed"] == total
    # Nothing committed was confirmed twice, nothing unknown was confirmed.
    assert final["duplicate_confirms"] == 0 and final["unknown_confirms"] == 0
    arrived = harness.read_topics(kafka.bootstrap, topics.all)
    v = harness.verify(ledger, arrived, total)
    assert (v.delivered, v.lost, v.duplicates) == (total, 0, 0), v.problems
    # Per key, Kafka holds the order the bridges received. Pushes the first bridge left
    # untaken while draining come back only after TMC's confirm timeout, possibly after
    # later events of the same order: every out-of-order record must be such a redelivery.
    assert not_redelivered_out_of_order(ledger, arrived) == []

    exposed += [p.read_text() for p in tmp_path.glob("*.log")]
    assert len(exposed) == 8  # 4 HTTP answers, 4 process logs (simulator, 3 bridges)
    for text in exposed:
        assert sentinel not in text
    assert "tmc login refused" in (tmp_path / "bad.log").read_text()
