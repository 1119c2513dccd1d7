"""``make bench``: the bridge beside its ceilings, its naive alternative, its latency at a
fixed rate and its cost, in one run on one machine; writes ``docs/benchmarks.md`` and
``docs/benchmarks.png`` (``--quick``: small sizes, written to the workdir unless ``--out``).

Kafka (one local broker, ``bridge.yaml``; N = ``--messages``, 100,000 by default):

* ceiling: one confluent-kafka transactional producer writing N generated TMC contents
  (keyed by tid, 3 partitions) in transactions of ``batch_max_messages``;
* the bridge end to end (simulator -> bridge -> broker -> confirm) at full speed, all N
  queued at once: with the durable committed-ids store (the default), with the in-memory
  one, and with the HTTP API source (``--http-config``);
* a naive baseline (:mod:`devtools.bench_naive`): per message produce, flush(), confirm;
* latency at a fixed rate (``--rate``, 5,000 msg/s, for ``--paced-seconds``) to a bridge
  that is up and idle, after a warm-up: push -> confirm p50/p99/p999 not under saturation;
* the durable run again with ``--window-ids`` (1,000,000) ids already in the committed-ids
  topic: catch-up at start, then CPU and peak RSS with a full window;
* scale-out: two bridge processes (their own transactional.id) on one TMC group;
* one bridge with two connections (``source.tmc.connections: 2``): TMC's window of 1,000
  unconfirmed pushes is per connection, so at full speed one connection's rate is about
  1,000 / (push -> confirm time).

RocketMQ (local broker with ACL, ``examples/bridge-rocketmq.yaml``): raw orderly sends
through the sink's own send path from as many threads as the bridge has lanes and from
one; the bridge in ordered mode and in transactional mode.

Every bridge row reports msg/s, latency, CPU s per 100k (start-up excluded: counted from
the first confirm, see :mod:`devtools.bench_run`), peak RSS, and what else used the cores.
A row that fails (a broker hiccup, a bridge that exits) is run once more and the retry is
noted in its row. The output ends with one line::

    bench: bridge_msgs_per_s=X raw_producer_msgs_per_s=Y ratio=R p50_ms=A p99_ms=B
    cpu_s_per_100k=C rss_mb=M naive_msgs_per_s=N

bridge_msgs_per_s, cpu_s_per_100k: the Kafka durable run at full speed; ratio: that over
the raw producer; p50/p99: the fixed-rate run; rss_mb: peak RSS with the pre-filled
window; naive_msgs_per_s: the naive baseline. ``n/a`` for what was not run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from confluent_kafka import Producer

from bridge.config import RocketMQSinkConfig, load
from bridge.headers import H_GROUP, H_MESSAGE_ID, H_PUBLISH_TIME, H_PUBLISHER, H_TOPIC, H_USER_ID
from bridge.sinks.kafka_config import KafkaSinkConfig
from bridge.sources.tmc.generator import OrderGenerator
from devtools import harness
from devtools.bench_report import Ceiling, Report, chart, markdown
from devtools.bench_run import RunResult, fmt, full_speed, paced, prefill_dedup, with_retry


def raw_producer_rate(bootstrap: str, topic: str, count: int, batch: int) -> tuple[float, float]:
    """The raw transactional producer writing the records the bridge would write (same
    values, keys and headers) in transactions of ``batch``: (msg/s, CPU s per 100k of this
    process, librdkafka's threads included)."""
    events = OrderGenerator(seed=7).events(count)
    records: list[tuple[bytes, bytes, list[tuple[str, str | bytes | None]]]] = [
        (
            ev.content.encode(),
            str(ev.key).encode(),
            [
                (H_TOPIC, ev.topic.encode()),
                (H_MESSAGE_ID, str(1_000_000_000_000 + i).encode()),
                (H_USER_ID, str(ev.user_id).encode()),
                (H_PUBLISH_TIME, b"1795000000000"),
                (H_PUBLISHER, b"4"),
                (H_GROUP, b"default"),
            ],
        )
        for i, ev in enumerate(events)
    ]
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
    started, cpu_started = time.perf_counter(), time.process_time()
    for start in range(0, count, batch):
        producer.begin_transaction()
        for value, key, headers in records[start : start + batch]:
            while True:
                try:
                    producer.produce(topic, value=value, key=key, headers=headers)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.commit_transaction(30)
    cpu = time.process_time() - cpu_started
    return count / (time.perf_counter() - started), cpu / count * 100_000


def raw_rocketmq_rate(
    name_server: str, topic: str, count: int, threads: int
) -> tuple[float, float]:
    """Raw ordered sends, the sink's send path without the bridge: each generated event
    through :meth:`bridge.rocketmq.client.Producer.send_to_shard` (C
    ``SendMessageOrderly``, the key's CRC-32 as shard, no client-side retry) from
    ``threads`` threads, a thread per share of the keys. Also the process CPU per message
    over the timed part: what librocketmq (and the ctypes calls) cost by themselves.
    Returns (msg/s, CPU µs per message)."""
    import zlib

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
    messages = [
        (
            sdk.OutMessage(topic, ev.content.encode(), ev.topic, [str(ev.key)], ()).wire(),
            zlib.crc32(str(ev.key).encode()),
        )
        for ev in events
    ]
    retried = [0]

    def send(message: sdk.WireMessage, shard: int) -> None:
        for attempt in range(10):
            try:
                producer.send_to_shard(message, shard)
                return
            except RocketMQSendError:
                # Under thread contention librocketmq sometimes fails a send with
                # "No route info" (a transport lock timeout); the bridge retries too,
                # after a pause (on a loaded machine at once fails again).
                retried[0] += 1
                if attempt == 9:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def lane(part: int) -> None:
        for message, shard in messages[part::threads]:
            send(message, shard)

    try:
        # Warm-up: the first send fetches the route (not thread-safe before that).
        for message, shard in messages[:20]:
            send(message, shard)
        cpu = time.process_time()
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lane, range(threads)))
        took = time.perf_counter() - started
        cpu = time.process_time() - cpu
        if retried[0]:
            print(f"rocketmq: raw sends retried {retried[0]} times ({threads} threads)")
        return count / took, cpu / count * 1e6
    finally:
        producer.shutdown()


@dataclass
class Sizes:
    messages: int
    naive: int
    rate: float
    paced_s: float
    warmup_s: float
    window_ids: int
    rocketmq: int
    rocketmq_transactional: int


def bench_kafka(
    workdir: Path, config: Path, http_config: Path | None, sizes: Sizes, report: Report
) -> None:
    from devtools.bench_naive import TOPIC as NAIVE_TOPIC
    from devtools.bench_naive import run as naive_run
    from devtools.brokers.kafka import KafkaBroker
    from devtools.demo import PARTITIONS, topics_of

    cfg = load(config, env={"TMC_APP_SECRET": harness.DEMO_SECRET})
    kafka_cfg = cfg.sink.get(KafkaSinkConfig)
    dedup_topic = kafka_cfg.dedup.topic if kafka_cfg is not None else "tmc-bridge.committed-ids"
    n = sizes.messages
    batch = cfg.pipeline.batch_max_messages
    with KafkaBroker(workdir / "kafka") as kafka:
        for topic in [*topics_of(cfg), "bench.raw", NAIVE_TOPIC]:
            kafka.create_topic(topic, partitions=PARTITIONS)
        env = {"KAFKA_BOOTSTRAP": kafka.bootstrap}
        pid = kafka.pid

        measured, notes = with_retry(
            "kafka raw", lambda: raw_producer_rate(kafka.bootstrap, "bench.raw", n, batch)
        )
        if measured is None:
            report.failed.append(("kafka raw transactional producer", notes[-1]))
        else:
            raw, raw_cpu = measured
            label = "kafka raw transactional producer"
            report.ceilings.append(
                Ceiling(
                    label,
                    n,
                    raw,
                    [f"batch {batch}; the bridge's records (values, keys, 6 headers)", *notes],
                    cpu_per_100k=raw_cpu,
                )
            )
            print(f"{label}: {n} msgs: {raw:,.0f} msg/s, {raw_cpu:.2f} CPU s / 100k", flush=True)

        def row(label: str, run: Callable[[], RunResult]) -> RunResult | None:
            result, notes = with_retry(label, run)
            if result is None:
                report.failed.append((label, notes[-1]))
                return None
            result.notes[:0] = notes
            report.runs.append(result)
            print(result.line(), flush=True)
            return result

        row(
            "kafka, durable dedup",
            lambda: full_speed(
                "kafka, durable dedup", workdir / "durable", config, env, n, broker_pid=pid
            ),
        )
        row(
            "kafka, memory dedup",
            lambda: full_speed(
                "kafka, memory dedup",
                workdir / "memory",
                config,
                {**env, "TMC_BRIDGE_DEDUP": "memory"},
                n,
                broker_pid=pid,
            ),
        )
        if http_config is not None:
            row(
                "kafka, tmc_http source",
                lambda: full_speed(
                    "kafka, tmc_http source", workdir / "http", http_config, env, n, broker_pid=pid
                ),
            )
        paced_label = f"kafka, durable, {sizes.rate:,.0f} msg/s fixed rate"
        row(
            paced_label,
            lambda: paced(
                paced_label,
                workdir / "paced",
                config,
                env,
                rate=sizes.rate,
                seconds=sizes.paced_s,
                warmup_s=sizes.warmup_s,
                broker_pid=pid,
            ),
        )
        two_connections = workdir / "bridge-2-connections.yaml"
        two_connections.parent.mkdir(parents=True, exist_ok=True)
        text = config.read_text()
        if "connections: 1 " not in text:
            raise SystemExit(f"bench: {config} has no 'connections: 1' line to switch")
        two_connections.write_text(text.replace("connections: 1 ", "connections: 2 ", 1))
        connections_label = "kafka, durable, 2 connections"
        row(
            connections_label,
            lambda: full_speed(
                connections_label, workdir / "connections", two_connections, env, n, broker_pid=pid
            ),
        )
        scale_label = "kafka, durable, 2 bridges on one group"
        row(
            scale_label,
            lambda: full_speed(
                scale_label, workdir / "scale", config, env, n, bridges=2, broker_pid=pid
            ),
        )
        window_label = f"kafka, durable, {sizes.window_ids:,} ids in the window"
        took, notes = with_retry(
            "committed-ids pre-fill",
            lambda: prefill_dedup(kafka.bootstrap, dedup_topic, sizes.window_ids),
        )
        if took is None:
            report.failed.append((window_label, f"pre-fill: {notes[-1]}"))
        else:
            print(f"committed-ids pre-fill: {sizes.window_ids:,} ids in {took:.1f} s", flush=True)
            result = row(
                window_label,
                lambda: full_speed(
                    window_label, workdir / "window", config, env, n, broker_pid=pid
                ),
            )
            if result is not None:
                result.notes.append(
                    f"pre-filled {sizes.window_ids:,} ids (markers of 40), besides the ids "
                    "the earlier durable runs on this broker committed"
                )
        row("naive baseline", lambda: naive_run(workdir / "naive", kafka.bootstrap, sizes.naive))


def bench_rocketmq(workdir: Path, config: Path, sizes: Sizes, report: Report) -> None:
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
    n = sizes.rocketmq
    # The transactional mode: the same config with mode: transactional.
    workdir.mkdir(parents=True, exist_ok=True)
    text = config.read_text()
    if "mode: ordered" not in text:
        raise SystemExit(f"bench: {config} has no 'mode: ordered' line to switch")
    transactional = workdir / "bridge-rocketmq-transactional.yaml"
    transactional.write_text(text.replace("mode: ordered", "mode: transactional", 1))
    with rocketmq_target(workdir, [*topics_of(cfg), "bench_raw"]) as (broker_env, _):
        name_server = broker_env["ROCKETMQ_NAMESRV"]
        for threads, count in ((1, min(n, 10_000)), (lanes, n)):
            label = "rocketmq raw orderly sends" + (", 1 thread" if threads == 1 else "")
            measured, notes = with_retry(
                label, partial(raw_rocketmq_rate, name_server, "bench_raw", count, threads)
            )
            if measured is None:
                report.failed.append((label, notes[-1]))
                continue
            rate, cpu_us = measured
            cpu = f"process CPU {cpu_us:.0f} µs/msg ({cpu_us / 10:.2f} s per 100k)"
            plural = "s" if threads > 1 else ""
            report.ceilings.append(
                Ceiling(
                    label,
                    count,
                    rate,
                    [f"{threads} thread{plural}, SendMessageOrderly", cpu, *notes],
                )
            )
            print(f"{label}: {count} msgs: {rate:,.0f} msg/s; {cpu}", flush=True)
        if sizes.rocketmq_transactional:
            from devtools.bench_rocketmq import raw_transactional_rates

            label = "rocketmq raw transactional sends"
            rates, notes = with_retry(
                label,
                partial(
                    raw_transactional_rates,
                    name_server,
                    "bench_raw",
                    min(sizes.rocketmq_transactional, 5_000),
                    lanes,
                ),
            )
            if rates is None:
                report.failed.append((label, notes[-1]))
            else:
                for what, raw in rates.items():
                    report.ceilings.append(
                        Ceiling(
                            f"{label}, {what}",
                            min(sizes.rocketmq_transactional, 5_000),
                            raw.rate,
                            [
                                f"process CPU {raw.cpu_us:.0f} µs/msg",
                                *([raw.note] if raw.note else []),
                                *notes,
                            ],
                        )
                    )
                    print(
                        f"{label}, {what}: {raw.rate:,.0f} msg/s; CPU {raw.cpu_us:.0f} µs/msg"
                        + (f"; {raw.note}" if raw.note else ""),
                        flush=True,
                    )
        for label, cfg_path, count in (
            (f"rocketmq ordered ({lanes} lanes)", config, n),
            ("rocketmq transactional", transactional, sizes.rocketmq_transactional),
        ):
            result, notes = with_retry(
                label,
                partial(full_speed, label, workdir / label.split()[1], cfg_path, broker_env, count),
            )
            if result is None:
                report.failed.append((label, notes[-1]))
                continue
            result.notes[:0] = notes
            report.runs.append(result)
            print(result.line(), flush=True)


def findings(report: Report, sizes: Sizes) -> None:
    """Sentences for the doc, from the figures: ratios, scale-out, the issue's targets."""
    out = report.findings
    durable = report.run("kafka, durable dedup")
    raw = report.ceiling("kafka raw transactional producer")
    naive = report.run("naive baseline")
    paced_run = next((r for r in report.runs if "fixed rate" in r.label), None)
    window = next((r for r in report.runs if "in the window" in r.label), None)
    scale = report.run("kafka, durable, 2 bridges on one group")
    connections = report.run("kafka, durable, 2 connections")
    if durable and connections and durable.rate:
        out.append(
            f"Two connections in one bridge: {connections.rate:,.0f} msg/s against "
            f"{durable.rate:,.0f} with one ({connections.rate / durable.rate:.2f}×), at "
            f"{fmt(connections.cpu_per_100k)} CPU s per 100k. TMC lets each connection have "
            "1,000 pushes unconfirmed, so one connection's rate is at most 1,000 divided by "
            f"the push → confirm time (p50 {fmt(durable.p50_ms, 1)} ms at full speed here); "
            "a second connection doubles what may be in flight, and the bridge's one core "
            "becomes the limit instead."
        )
    if durable and raw:
        out.append(
            f"The bridge (durable dedup) reached {durable.rate / raw.rate:.2f} of the raw "
            f"transactional producer's rate ({durable.rate:,.0f} against {raw.rate:,.0f} msg/s)."
        )
    if durable and raw and raw.cpu_per_100k is not None and durable.cpu_per_100k:
        out.append(
            f"CPU per 100,000 messages: the bridge {durable.cpu_per_100k:.2f} s, the raw "
            f"producer writing the same records {raw.cpu_per_100k:.2f} s (librdkafka's own "
            "threads, which the bridge's process pays too); the rest is the bridge's Python: "
            "the WebSocket frames in and out, decoding, deciding, routing, the committed-ids "
            "markers and their follower, metrics."
        )
    if durable and naive and naive.rate:
        out.append(
            f"It is {durable.rate / naive.rate:.0f} times the naive baseline "
            f"({naive.rate:,.0f} msg/s: one produce, flush and confirm at a time, so one broker "
            "round trip per message). Against one broker on the same machine that round trip "
            f"is only {1000 / naive.rate:.2f} ms; against a replicated cluster over a network "
            "(acks=all to several brokers) it is several times that, and the naive rate falls "
            "with it while the bridge's batched transactions pay the round trip once per batch."
        )
    if scale and durable:
        cpu = " and ".join(f"{c:.1f}" for c in scale.bridge_cpu_s)
        per_core = sum(scale.bridge_cpu_s) + scale.sim_cpu_s + (scale.broker_cpu_s or 0.0)
        limit = (
            "CPU: the machine's cores were "
            f"{scale.machine_busy:.0%} busy, the two bridges, the simulator and the broker "
            "taking turns on them"
            if scale.machine_busy >= 0.85
            else f"not the cores alone ({scale.machine_busy:.0%} busy): the server's window "
            "per connection and the commit round trips"
        )
        out.append(
            f"Two bridge processes on one group: {scale.rate:,.0f} msg/s combined against "
            f"{durable.rate:,.0f} for one ({scale.rate / durable.rate:.2f}×). Each bridge used "
            f"{cpu} CPU s over {scale.window_s:.1f} s, the simulator {scale.sim_cpu_s:.1f} s and "
            f"the broker {fmt(scale.broker_cpu_s, 1)} s ({per_core:.1f} CPU s in all on "
            f"{os.cpu_count()} cores). What limited it: {limit}."
        )
    if window and durable:
        out.append(
            f"With {sizes.window_ids:,} ids already in the committed-ids window the bridge "
            f"peaked at {fmt(window.rss_mb, 0)} MiB RSS (against {fmt(durable.rss_mb, 0)} MiB "
            f"without) and used {fmt(window.cpu_per_100k)} CPU s per 100k once running "
            f"(against {fmt(durable.cpu_per_100k)})."
        )
    targets: list[tuple[str, str, bool | None]] = []
    if durable and durable.cpu_per_100k is not None:
        targets.append(
            (
                "bridge CPU ≤ 3.5 s / 100k (durable)",
                fmt(durable.cpu_per_100k),
                durable.cpu_per_100k <= 3.5,
            )
        )
    if durable and raw:
        targets.append(
            (
                "throughput ≥ 0.4 × raw",
                f"{durable.rate / raw.rate:.2f}",
                durable.rate / raw.rate >= 0.4,
            )
        )
    if durable and naive and naive.rate:
        targets.append(
            (
                "throughput ≥ 20 × naive",
                f"{durable.rate / naive.rate:.0f}",
                durable.rate / naive.rate >= 20,
            )
        )
    if paced_run and paced_run.p99_ms is not None:
        targets.append(
            (
                f"p99 ≤ 100 ms at {sizes.rate:,.0f} msg/s",
                f"{paced_run.p99_ms:.1f} ms",
                paced_run.p99_ms <= 100,
            )
        )
    if window and window.rss_mb is not None:
        targets.append(
            (
                f"peak RSS ≤ 256 MB with {sizes.window_ids:,} ids",
                f"{window.rss_mb:.0f} MiB",
                window.rss_mb * 2**20 <= 256e6,
            )
        )
    from devtools.bench_rocketmq import cpu_of

    ordered = next((r for r in report.runs if r.label.startswith("rocketmq ordered")), None)
    rmq_raw = report.ceiling("rocketmq raw orderly sends")
    rmq_raw_cpu = cpu_of(rmq_raw)
    if ordered and rmq_raw and ordered.cpu_per_100k is not None and rmq_raw_cpu is not None:
        bridge_us = ordered.cpu_per_100k * 10
        out.append(
            f"RocketMQ ordered: the bridge reached {ordered.rate / rmq_raw.rate:.2f} of the raw "
            f"multi-threaded send rate ({ordered.rate:,.0f} against {rmq_raw.rate:,.0f} msg/s) "
            f"at {bridge_us:.0f} µs of bridge CPU per message; the raw sender alone (same "
            f"send path: SendMessageOrderly, same threads) used {rmq_raw_cpu:.0f} µs per "
            f"message, {rmq_raw_cpu / bridge_us:.0%} of the bridge's figure and "
            f"{rmq_raw_cpu / 150:.0%} of the 150 µs target: librocketmq's synchronous send "
            "(the sending thread, its libevent loop thread and its response-dispatch thread "
            "all work on every send) "
            "is most of the cost (docs/rocketmq-performance.md)."
        )
    txn_run = report.run("rocketmq transactional")
    txn_one = next((c for c in report.ceilings if c.label.endswith("1 thread (as the sink)")), None)
    txn_many = next((c for c in report.ceilings if "no lock" in c.label), None)
    if txn_run and txn_one:
        text = (
            f"RocketMQ transactional: {txn_run.rate:,.0f} msg/s through the bridge against "
            f"{txn_one.rate:,.0f} raw from one thread, which is how the sink sends "
            "(one transactional send at a time"
        )
        if txn_many:
            text += (
                f"; the raw client from several threads without that lock: "
                f"{txn_many.rate:,.0f} msg/s"
            )
        out.append(text + ").")
    if ordered and rmq_raw:
        targets.append(
            (
                "RocketMQ ordered ≥ 0.8 × raw",
                f"{ordered.rate / rmq_raw.rate:.2f}",
                ordered.rate / rmq_raw.rate >= 0.8,
            )
        )
    if ordered and ordered.cpu_per_100k is not None:
        targets.append(
            (
                "RocketMQ ordered ≤ 150 µs CPU / msg",
                f"{ordered.cpu_per_100k * 10:.0f} µs",
                ordered.cpu_per_100k * 10 <= 150,
            )
        )
    if targets:
        out.append(
            "Issue 15's targets: "
            + "; ".join(
                f"{name}: {value} ({'met' if ok else 'missed'})" for name, value, ok in targets
            )
            + "."
        )


def summary_line(report: Report) -> str:
    durable = report.run("kafka, durable dedup")
    raw = report.ceiling("kafka raw transactional producer")
    naive = report.run("naive baseline")
    paced_run = next((r for r in report.runs if "fixed rate" in r.label), None)
    window = next((r for r in report.runs if "in the window" in r.label), None)

    def num(value: float | None, digits: int = 0) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    ratio = durable.rate / raw.rate if durable and raw and raw.rate else None
    return (
        f"bench: bridge_msgs_per_s={num(durable.rate if durable else None)} "
        f"raw_producer_msgs_per_s={num(raw.rate if raw else None)} ratio={num(ratio, 2)} "
        f"p50_ms={num(paced_run.p50_ms if paced_run else None, 1)} "
        f"p99_ms={num(paced_run.p99_ms if paced_run else None, 1)} "
        f"cpu_s_per_100k={num(durable.cpu_per_100k if durable else None, 2)} "
        f"rss_mb={num(window.rss_mb if window else None)} "
        f"naive_msgs_per_s={num(naive.rate if naive else None)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench")
    parser.add_argument("--sink", choices=["kafka", "rocketmq", "both"], default="both")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a check that the harness works"
    )
    parser.add_argument("--messages", type=int, default=None, help="Kafka (100,000)")
    parser.add_argument("--naive-messages", type=int, default=None, help="(2,000)")
    parser.add_argument("--rate", type=float, default=5000.0, help="fixed-rate run, msg/s")
    parser.add_argument("--paced-seconds", type=float, default=None, help="(20)")
    parser.add_argument("--window-ids", type=int, default=None, help="(1,000,000)")
    parser.add_argument("--rocketmq-messages", type=int, default=None, help="(50,000)")
    parser.add_argument("--rocketmq-transactional-messages", type=int, default=None)
    parser.add_argument("--config", default="bridge.yaml")
    parser.add_argument("--rocketmq-config", default="examples/bridge-rocketmq.yaml")
    parser.add_argument(
        "--http-config",
        default="examples/bridge-tmc-http.yaml",
        help="the HTTP API source's run into Kafka ('' skips it)",
    )
    parser.add_argument("--workdir", default=".work/bench")
    parser.add_argument(
        "--out",
        default=None,
        help="where benchmarks.md and .png go (default: docs/, with --quick the workdir)",
    )
    args = parser.parse_args(argv)
    quick = args.quick

    def pick(value: int | float | None, full: float, small: float) -> float:
        return float(value) if value is not None else (small if quick else full)

    sizes = Sizes(
        messages=int(pick(args.messages, 100_000, 5_000)),
        naive=int(pick(args.naive_messages, 2_000, 300)),
        rate=args.rate,
        paced_s=pick(args.paced_seconds, 20, 3),
        warmup_s=2.0 if not quick else 0.5,
        window_ids=int(pick(args.window_ids, 1_000_000, 100_000)),
        rocketmq=int(pick(args.rocketmq_messages, 50_000, 2_000)),
        rocketmq_transactional=int(pick(args.rocketmq_transactional_messages, 10_000, 1_000)),
    )
    workdir = Path(args.workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    out = Path(args.out) if args.out else (workdir if quick else Path("docs"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report = Report()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    report.settings = {
        "Load average (1, 5, 15 min) at the start": f"{load} (it counts the minutes "
        "before the run too, e.g. an earlier bench)",
        "Kafka bridge config": f"`{args.config}` (batch_max_messages, batch_linger_ms, "
        "max_in_flight as in the file; 3 partitions per topic)",
        "Simulator": "window 1,000 unconfirmed per connection (TMC's), no pacing, "
        "`devtools.bench_sim` (the plain simulator plus latency and fixed-rate endpoints)",
        "Kafka messages per full-speed run": f"{sizes.messages:,} (all queued at once)",
        "Fixed-rate run": f"{sizes.rate:,.0f} msg/s for {sizes.paced_s:g} s after a "
        f"{sizes.warmup_s:g} s warm-up, published every 10 ms",
        "Committed-ids window run": f"{sizes.window_ids:,} ids pre-filled",
        "Naive baseline": f"{sizes.naive:,} messages",
        "RocketMQ": f"`{args.rocketmq_config}`; {sizes.rocketmq:,} messages ordered, "
        f"{sizes.rocketmq_transactional:,} transactional",
    }
    if args.sink in ("kafka", "both"):
        http_config = Path(args.http_config) if args.http_config else None
        bench_kafka(workdir / "kafka", Path(args.config), http_config, sizes, report)
    if args.sink in ("rocketmq", "both"):
        bench_rocketmq(workdir / "rocketmq", Path(args.rocketmq_config), sizes, report)
    findings(report, sizes)
    took = time.monotonic() - started
    command = "python -m devtools.bench" + (" --quick" if quick else "")
    (out / "benchmarks.md").write_text(markdown(report, quick=quick, took_s=took, command=command))
    try:
        chart(report, out / "benchmarks.png")
    except Exception as exc:
        print(f"bench: chart not drawn: {exc}", flush=True)
    for line in report.findings:
        print(line)
    print(f"wrote {out / 'benchmarks.md'} and {out / 'benchmarks.png'} in {took:.0f} s")
    if report.failed:
        print("failed twice: " + "; ".join(label for label, _ in report.failed))
    print(summary_line(report), flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
