"""``make bench``: the bridge's end-to-end rate next to the raw producer rate, same broker,
for each sink (``--sink kafka``, ``rocketmq`` or ``both``, the default).

Kafka:

1. Raw: one confluent-kafka transactional producer writes N generated TMC contents
   (keyed by tid, 3 partitions) committing every ``batch`` records: the ceiling the
   broker and librdkafka give on this machine.
2. Bridge: the simulator (child process) holds N messages; the bridge (child process,
   ``bridge.yaml``) logs in, writes them to Kafka in transactions and confirms each one.
   Throughput = confirmed / (last confirm - first push) as the simulator saw it; latency =
   push -> confirm per message, measured by the simulator. All N messages are queued at
   once, so the latency includes waiting in the server-side window: it is the latency
   under saturation, not of a lightly loaded bridge.

RocketMQ (local broker with ACL, ordered mode, ``examples/bridge-rocketmq.yaml``):

1. Raw: rocketmq-client-python ``send_orderly_with_sharding_key`` of the same contents,
   keyed by tid, from as many threads as the bridge has send lanes (and from one thread).
2. Bridge: as for Kafka, with the RocketMQ sink.

One line per sink: ``bench: sink=S bridge_msgs_per_s=X raw_producer_msgs_per_s=Y
ratio=R p50_ms=A p99_ms=B``. The Kafka run adds ``sink=kafka-tmc_http``: the same bridge
with the HTTP API source (``--http-config``), consume/confirm calls instead of pushes.
"""

from __future__ import annotations

import argparse
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from bridge.config import RocketMQSinkConfig, load
from bridge.sources.tmc.generator import OrderGenerator
from devtools import harness


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


def raw_rocketmq_rate(name_server: str, topic: str, count: int, threads: int) -> float:
    from bridge.errors import RocketMQSendError
    from bridge.rocketmq import client as sdk
    from devtools.demo import DEMO_ACCESS_KEY, DEMO_SECRET_KEY

    events = OrderGenerator(seed=7).events(count)
    settings = sdk.ClientSettings(
        name_server, None, (DEMO_ACCESS_KEY, DEMO_SECRET_KEY, "ALIYUN"), f"bench_raw_{threads}"
    )
    producer = sdk.Producer(
        f"bench_raw_{threads}", settings, send_timeout_ms=3000, max_message_bytes=4 << 20
    )
    producer.start()

    retried = [0]

    def lane(part: int) -> None:
        for ev in events[part::threads]:
            msg = sdk.OutMessage(topic, ev.content.encode(), ev.topic, [str(ev.key)], ())
            for attempt in range(5):
                try:
                    producer.send(msg, str(ev.key))
                    break
                except RocketMQSendError:
                    # Under thread contention librocketmq sometimes fails a send with
                    # "No route info" (a transport lock timeout); the bridge retries too.
                    retried[0] += 1
                    if attempt == 4:
                        raise

    try:
        lane(0)  # warm-up: the first send fetches the route (not thread-safe before that)
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lane, range(threads)))
        took = time.perf_counter() - started
        if retried[0]:
            print(f"rocketmq: raw sends retried {retried[0]} times ({threads} threads)")
        return threads * len(events[0::threads]) / took
    finally:
        producer.shutdown()


def run_bridge(
    workdir: Path, config: Path, n: int, broker_env: dict[str, str]
) -> tuple[dict[str, Any], dict[str, float]]:
    """One bridge and one simulator holding ``n`` messages, until all are confirmed."""
    port = harness.free_port()
    sim = harness.start_simulator(workdir, port=port, messages=n, confirm_timeout_s=300)
    bridge = harness.start_bridge(
        workdir,
        config,
        sim_port=port,
        extra_env={
            "TMC_BRIDGE_LOG_LEVEL": "warning",
            # The HTTP API source's config reads the simulator's TOP gateway from here.
            "TMC_HTTP_URL": f"http://127.0.0.1:{port}/router/rest",
            **broker_env,
        },
    )
    try:
        harness.wait_confirmed(port, n, timeout_s=600, watch=bridge)
        cpu = {c.name: c.cpu_seconds() for c in (sim, bridge)}
        stats: dict[str, Any] = harness.sim_get(port, "stats?latency=1")
        stats["commit_s"] = commit_quantiles(harness.scrape(bridge.http_port))
    finally:
        bridge.stop(timeout_s=60)
        sim.stop()
    return stats, cpu


def commit_quantiles(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> str:
    """Time in the sink per committed batch, from the bridge's histogram: the bucket
    bounds that hold 50%, 99% and all of the batches (what transaction_timeout_ms must
    stay well above)."""
    buckets = sorted(
        (float(dict(labels)["le"]), count)
        for (name, labels), count in samples.items()
        if name == "tmc_bridge_sink_commit_duration_seconds_bucket"
    )
    total = buckets[-1][1] if buckets else 0
    if not total:
        return "no commits"

    def bound(share: float) -> str:
        upper = next(le for le, count in buckets if count >= share * total)
        return f"<= {upper:g} s" if upper != float("inf") else "> 30 s"

    return f"p50 {bound(0.5)}, p99 {bound(0.99)}, max {bound(1.0)} ({total:.0f} batches)"


def report(sink: str, n: int, raw: float, stats: dict[str, Any], cpu: dict[str, float]) -> bool:
    window = stats["last_confirm_at"] - stats["first_push_at"]
    rate = stats["confirmed"] / window if window > 0 else 0.0
    print(
        f"{sink}: bridge end to end: {stats['confirmed']} confirmed of {n} in {window:.2f} s, "
        f"redelivered={stats['redelivered']}; CPU s: bridge={cpu['bridge']:.1f} "
        f"({cpu['bridge'] / n * 100_000:.2f} per 100k, start-up included) "
        f"simulator={cpu['simulator']:.1f} (2 cores shared with the broker); "
        f"time in the sink per batch: {stats['commit_s']}"
    )
    p50, p99 = stats.get("latency_p50_ms", 0.0), stats.get("latency_p99_ms", 0.0)
    ratio = rate / raw if raw else 0.0
    print(
        f"bench: sink={sink} bridge_msgs_per_s={rate:.0f} raw_producer_msgs_per_s={raw:.0f} "
        f"ratio={ratio:.2f} p50_ms={p50:.1f} p99_ms={p99:.1f}",
        flush=True,
    )
    return bool(stats["confirmed"] == n)


def bench_kafka(workdir: Path, config: Path, n: int, http_config: Path | None = None) -> bool:
    from devtools.demo import kafka_target, topics_of

    cfg = load(config, env={"TMC_APP_SECRET": harness.DEMO_SECRET})
    topics = topics_of(cfg)
    with kafka_target(workdir, [*topics, "bench.raw"]) as (broker_env, _):
        bootstrap = broker_env["KAFKA_BOOTSTRAP"]
        raw = raw_producer_rate(bootstrap, "bench.raw", n, cfg.pipeline.batch_max_messages)
        print(
            f"kafka: raw transactional producer: {n} msgs, batch "
            f"{cfg.pipeline.batch_max_messages}: {raw:,.0f} msgs/s",
            flush=True,
        )
        # The same run with each committed-ids store, side by side: durable (the default,
        # the topic written in every transaction and followed) and in-memory.
        stats, cpu = run_bridge(workdir, config, n, broker_env)
        durable = report("kafka", n, raw, stats, cpu)
        memory_env = {**broker_env, "TMC_BRIDGE_DEDUP": "memory"}
        stats, cpu = run_bridge(workdir, config, n, memory_env)
        memory = report("kafka-dedup-memory", n, raw, stats, cpu)
        # The HTTP API source (source.type tmc_http) on the same broker, beside the
        # WebSocket rows above: consume/confirm calls instead of pushes.
        http = True
        if http_config is not None:
            stats, cpu = run_bridge(workdir, http_config, n, broker_env)
            http = report("kafka-tmc_http", n, raw, stats, cpu)
    return memory and durable and http


def bench_rocketmq(workdir: Path, config: Path, n: int) -> bool:
    from devtools.demo import DEMO_ACCESS_KEY, DEMO_SECRET_KEY, rocketmq_target, topics_of

    env = {
        "TMC_APP_SECRET": harness.DEMO_SECRET,
        "ROCKETMQ_ACCESS_KEY": DEMO_ACCESS_KEY,
        "ROCKETMQ_SECRET_KEY": DEMO_SECRET_KEY,
    }
    cfg = load(config, env=env)
    rocketmq = cfg.sink.get(RocketMQSinkConfig)
    if rocketmq is None:
        raise SystemExit(f"bench: {config} has no RocketMQ sink")
    lanes = rocketmq.send_threads
    topics = topics_of(cfg)
    with rocketmq_target(workdir, [*topics, "bench_raw"]) as (broker_env, _):
        name_server = broker_env["ROCKETMQ_NAMESRV"]
        one = raw_rocketmq_rate(name_server, "bench_raw", min(n, 10_000), 1)
        raw = raw_rocketmq_rate(name_server, "bench_raw", n, lanes)
        print(
            f"rocketmq: raw rocketmq-client-python orderly sends: {raw:,.0f} msgs/s from "
            f"{lanes} threads, {one:,.0f} msgs/s from 1 thread",
            flush=True,
        )
        stats, cpu = run_bridge(workdir, config, n, broker_env)
    return report("rocketmq", n, raw, stats, cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench")
    parser.add_argument("--sink", choices=["kafka", "rocketmq", "both"], default="both")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rocketmq-messages", type=int, default=50_000)
    parser.add_argument("--config", default="bridge.yaml")
    parser.add_argument("--rocketmq-config", default="examples/bridge-rocketmq.yaml")
    parser.add_argument(
        "--http-config",
        default="examples/bridge-tmc-http.yaml",
        help="the HTTP API source's run into Kafka ('' skips it)",
    )
    parser.add_argument("--workdir", default=".work/bench")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ok = True
    if args.sink in ("kafka", "both"):
        http_config = Path(args.http_config) if args.http_config else None
        ok = bench_kafka(workdir / "kafka", Path(args.config), args.messages, http_config) and ok
    if args.sink in ("rocketmq", "both"):
        rocketmq_dir = workdir / "rocketmq"
        rocketmq_dir.mkdir()
        ok = bench_rocketmq(rocketmq_dir, Path(args.rocketmq_config), args.rocketmq_messages) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
