"""``make bench``: the bridge's end-to-end rate next to the raw producer rate, same broker.

1. Raw: one confluent-kafka transactional producer writes N generated TMC contents
   (keyed by tid, 3 partitions) committing every ``batch`` records: the ceiling the
   broker and librdkafka give on this machine.
2. Bridge: the simulator (child process) holds N messages; the bridge (child process,
   ``bridge.yaml``) logs in, writes them to Kafka in transactions and confirms each one.
   Throughput = confirmed / (last confirm - first push) as the simulator saw it; latency =
   push -> confirm per message, measured by the simulator. All N messages are queued at
   once, so the latency includes waiting in the server-side window: it is the latency
   under saturation, not of a lightly loaded bridge.

Last line: ``bench: bridge_msgs_per_s=X raw_producer_msgs_per_s=Y ratio=R p50_ms=A p99_ms=B``
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from confluent_kafka import Producer

from bridge.config import load
from bridge.sources.tmc.generator import OrderGenerator
from bridge.testing.kafka_broker import KafkaBroker
from bridge.tools import harness


def raw_producer_rate(bootstrap: str, topic: str, count: int, batch: int) -> float:
    events = OrderGenerator(seed=7).events(count)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"bench-raw-{time.monotonic_ns()}",
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "delivery.report.only.error": True,
        }
    )
    producer.init_transactions(30)
    started = time.perf_counter()
    for start in range(0, count, batch):
        producer.begin_transaction()
        for ev in events[start : start + batch]:
            while True:
                try:
                    producer.produce(
                        topic,
                        value=ev.content.encode(),
                        key=str(ev.key).encode(),
                        headers=[("tmc.topic", ev.topic.encode())],
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.commit_transaction(30)
    return count / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.tools.bench")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--config", default="bridge.yaml")
    parser.add_argument("--workdir", default=".work/bench")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    config = Path(args.config)
    cfg = load(config, env={"TMC_APP_SECRET": harness.DEMO_SECRET})
    topics = [*dict.fromkeys(cfg.routing.topics.values()), cfg.routing.dead_letter_topic]
    n = args.messages
    with KafkaBroker(workdir / "kafka") as kafka:
        for topic in [*topics, "bench.raw"]:
            kafka.create_topic(topic, partitions=3)
        raw = raw_producer_rate(kafka.bootstrap, "bench.raw", n, cfg.pipeline.batch_max_messages)
        print(
            f"raw transactional producer: {n} msgs, batch {cfg.pipeline.batch_max_messages}: "
            f"{raw:,.0f} msgs/s"
        )
        port = harness.free_port()
        sim = harness.start_simulator(workdir, port=port, messages=n, confirm_timeout_s=300)
        bridge = harness.start_bridge(
            workdir,
            config,
            sim_port=port,
            bootstrap=kafka.bootstrap,
            extra_env={"TMC_BRIDGE_LOG_LEVEL": "warning"},
        )
        try:
            stats = harness.wait_confirmed(port, n, timeout_s=600, watch=bridge)
            cpu = {c.name: c.cpu_seconds() for c in (sim, bridge)}
            stats = harness.sim_get(port, "stats?latency=1")
        finally:
            bridge.stop(timeout_s=60)
            sim.stop()
    window = stats["last_confirm_at"] - stats["first_push_at"]
    rate = stats["confirmed"] / window if window > 0 else 0.0
    print(
        f"bridge end to end: {stats['confirmed']} confirmed of {n} in {window:.2f} s, "
        f"redelivered={stats['redelivered']}; CPU s: bridge={cpu['bridge']:.1f} "
        f"simulator={cpu['simulator']:.1f} (2 cores shared with Kafka)"
    )
    p50, p99 = stats.get("latency_p50_ms", 0.0), stats.get("latency_p99_ms", 0.0)
    ratio = rate / raw if raw else 0.0
    print(
        f"bench: bridge_msgs_per_s={rate:.0f} raw_producer_msgs_per_s={raw:.0f} "
        f"ratio={ratio:.2f} p50_ms={p50:.1f} p99_ms={p99:.1f}"
    )
    return 0 if stats["confirmed"] == n else 1


if __name__ == "__main__":
    raise SystemExit(main())
