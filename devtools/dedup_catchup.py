"""Start-up catch-up and memory of the committed-ids store with a full window, measured.

    python -m devtools.dedup_catchup --ids 86400000 --per-marker 40

Fills a committed-ids topic as a bridge at a steady rate would (``--ids`` ids in markers
of ``--per-marker`` ids, record times spread over the last 23 hours), then starts the
store exactly as the bridge does (:class:`~bridge.dedup.kafka_store.KafkaCommittedIds`)
and reports how long it took to be ready, the ids it holds, their memory (``nbytes`` and
RSS growth) and a lookup check. At 1,000 msg/s a bridge commits a transaction every few
tens of milliseconds, so a day is 86.4 million ids in markers of a few dozen ids each.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import shutil
import time
from pathlib import Path

from confluent_kafka import Producer

from bridge.dedup import marker
from bridge.dedup.kafka_store import KafkaCommittedIds
from bridge.observability.metrics import Metrics
from bridge.sinks.kafka_config import KafkaSinkConfig
from devtools.brokers.kafka import KafkaBroker

NAMESPACE = "tmc/12345678/default"
TOPIC = "capacity.committed-ids"


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def fill(bootstrap: str, ids: int, per_marker: int) -> list[int]:
    """Write the markers; returns a sample of the ids written (for the lookup check)."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 50, "compression.type": "lz4"}
    )
    rng = random.Random(11)
    now_ms = int(time.time() * 1000)
    span_ms = 23 * 3600 * 1000
    base = 2_200_000_000_000_000_000
    key = marker.scope(NAMESPACE, "tmc").encode()
    sample: list[int] = []
    markers = (ids + per_marker - 1) // per_marker
    started = time.monotonic()
    for number in range(markers):
        first = base + number * per_marker * 3
        batch = [first + 3 * i + rng.randrange(3) for i in range(per_marker)]
        if number % 997 == 0:
            sample.append(batch[rng.randrange(per_marker)])
        stamp = now_ms - span_ms + span_ms * number // markers
        while True:
            try:
                producer.produce(
                    TOPIC, key=key, value=marker.encode(batch), partition=0, timestamp=stamp
                )
                break
            except BufferError:
                producer.poll(0.05)
        if number % 100_000 == 0:
            producer.poll(0)
    producer.flush(120)
    print(
        f"filled: {markers:,} markers of {per_marker} ids ({markers * per_marker:,} ids) "
        f"in {time.monotonic() - started:.1f} s",
        flush=True,
    )
    return sample


async def catch_up(bootstrap: str, sample: list[int]) -> None:
    config = KafkaSinkConfig(
        bootstrap_servers=bootstrap,
        transactional_id="capacity",
        dedup={"topic": TOPIC, "window_h": 24},  # type: ignore[arg-type]
    )
    gc.collect()
    before = rss_bytes()
    store = KafkaCommittedIds(config, NAMESPACE, metrics=Metrics())
    started = time.monotonic()
    store.start()
    await store.wait_ready()
    took = time.monotonic() - started
    gc.collect()
    grown = rss_bytes() - before
    window = store._windows["tmc"]  # a measurement tool may look inside
    held, nbytes = len(window), window.nbytes
    missing = [i for i in sample if ("tmc", i) not in store]
    absent = sum(("tmc", i + 1_000_000_000_000) in store for i in sample)
    store.close()
    print(
        f"catch-up: {held:,} ids ready in {took:.1f} s; memory {nbytes / held:.1f} bytes/id "
        f"(nbytes), RSS grew {grown / 2**20:,.0f} MiB ({grown / held:.1f} bytes/id); "
        f"sample of {len(sample)} found: {len(sample) - len(missing)}, never-written found: "
        f"{absent}",
        flush=True,
    )
    if missing or absent:
        raise SystemExit("lookup check failed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.dedup_catchup")
    parser.add_argument("--ids", type=int, default=1_000_000)
    parser.add_argument("--per-marker", type=int, default=40)
    parser.add_argument("--workdir", default=".work/dedup-catchup")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    with KafkaBroker(workdir / "kafka") as kafka:
        kafka.create_topic(TOPIC, partitions=1)
        sample = fill(kafka.bootstrap, args.ids, args.per_marker)
        asyncio.run(catch_up(kafka.bootstrap, sample))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
