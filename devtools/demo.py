"""``make demo``: local broker + TMC simulator + bridge, then one summary line.

    python -m devtools.demo --messages 10000 [--sink rocketmq] [--workdir .work/demo]
    python -m devtools.demo --source tmc_http   # the HTTP API source instead of WebSocket

Everything runs on this machine: the broker from Maven Central jars (cached in ``.cache``),
the simulator and the bridge as child processes. ``--sink kafka`` (default) uses
``bridge.yaml``; ``--sink rocketmq`` uses ``examples/bridge-rocketmq.yaml`` against a local
RocketMQ with ACL on (the bridge signs with an access key, as against ONS). The demo waits
until the simulator saw every message confirmed, stops the bridge with SIGTERM (a
graceful drain), reads the topics back (Kafka: ``read_committed``; RocketMQ: a fresh
consumer group from the first offset) and prints

    demo summary: sent=N confirmed=N delivered=N duplicates=0 order_violations=0 lost=0

exiting 0 only when nothing was lost, duplicated or reordered (per key: one partition or
queue, in publish order).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bridge.config import BridgeConfig, load
from bridge.errors import BridgeError, ConfigError
from devtools import harness

PARTITIONS = 3
QUEUES = 4
DEMO_ACCESS_KEY = "demo-access-key"
DEMO_SECRET_KEY = "demo-secret-key-0123"  # noqa: S105 - the local broker's demo account
CONFIGS = {"kafka": Path("bridge.yaml"), "rocketmq": Path("examples/bridge-rocketmq.yaml")}
#: ``--source tmc_http``: the HTTP API source into Kafka, against the simulator's gateway.
HTTP_CONFIG = Path("examples/bridge-tmc-http.yaml")

#: Written into ``--workdir`` when the demo takes it; only a directory holding it (or
#: still empty) is ever emptied by a later run.
MARKER = ".tmc-bridge-demo"
#: What a demo's workdir held before the marker existed (its default ``.work/demo``).
LEGACY_ENTRIES = frozenset({"bridge.log", "simulator.log", "kafka", "rocketmq"})

#: (environment for the bridge, reader of what arrived)
Target = tuple[dict[str, str], Callable[[int], list[harness.Arrived]]]


@contextlib.contextmanager
def kafka_target(workdir: Path, topics: list[str]) -> Iterator[Target]:
    from devtools.brokers.kafka import KafkaBroker

    with KafkaBroker(workdir / "kafka") as kafka:
        for topic in topics:
            kafka.create_topic(topic, partitions=PARTITIONS)
        yield (
            {"KAFKA_BOOTSTRAP": kafka.bootstrap},
            lambda _expected: harness.read_topics(kafka.bootstrap, topics),
        )


@contextlib.contextmanager
def rocketmq_target(workdir: Path, topics: list[str]) -> Iterator[Target]:
    from devtools.brokers.rocketmq import RocketMQBroker
    from devtools.rocketmq_io import read_topics

    with RocketMQBroker(workdir / "rocketmq", acl={DEMO_ACCESS_KEY: DEMO_SECRET_KEY}) as rmq:
        for topic in topics:
            rmq.create_topic(topic, queues=QUEUES, order=True)
        credentials = (DEMO_ACCESS_KEY, DEMO_SECRET_KEY, "ALIYUN")
        yield (
            {
                "ROCKETMQ_NAMESRV": rmq.namesrv_addr,
                "ROCKETMQ_ACCESS_KEY": DEMO_ACCESS_KEY,
                "ROCKETMQ_SECRET_KEY": DEMO_SECRET_KEY,
            },
            lambda expected: read_topics(
                rmq.namesrv_addr, topics, expected=expected, credentials=credentials
            ),
        )


def prepare_workdir(workdir: Path) -> str | None:
    """Empty ``workdir`` for a run, or say why not (then nothing was touched).

    The demo deletes what its previous run left, but only in a directory it made: one
    holding its marker file (:data:`MARKER`, written first thing), or the layout the demo
    left before it wrote one (only :data:`LEGACY_ENTRIES`, ``simulator.log`` among them).
    A new or empty directory is used as it is. Anything else, say ``--workdir ~`` or a
    directory holding a Kafka installation, is refused without deleting anything.
    """
    if workdir.exists() or workdir.is_symlink():
        if not workdir.is_dir():
            return f"--workdir {workdir} is not a directory"
        entries = {child.name for child in workdir.iterdir()}
        legacy = "simulator.log" in entries and entries <= LEGACY_ENTRIES
        if entries and MARKER not in entries and not legacy:
            return (
                f"--workdir {workdir} is not empty and was not made by the demo (it has no "
                f"{MARKER} file); nothing was deleted. Give a new or empty directory "
                "(the demo deletes its contents at its next run), or leave out --workdir "
                "for .work/demo"
            )
        # Children, not the directory itself: a symlinked workdir stays a symlink.
        for child in workdir.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    else:
        workdir.mkdir(parents=True)
    (workdir / MARKER).write_text(
        "Made by python -m devtools.demo: its next run deletes everything in this directory.\n"
    )
    return None


def topics_of(cfg: BridgeConfig) -> list[str]:
    """Every sink topic a config writes to, dead-letter topic last."""
    return [*dict.fromkeys(cfg.routing.topics.values()), cfg.routing.dead_letter_topic]


def metrics_line(port: int) -> str:
    """What the bridge's own /metrics says, to set beside the simulator's count."""
    try:
        samples = harness.scrape(port)
    except (OSError, RuntimeError) as exc:
        return f"demo: /metrics not readable: {exc}"

    def total(name: str, **labels: str) -> int:
        return int(harness.metric_sum(samples, name, **labels))

    batches = total("tmc_bridge_sink_transactions_total", outcome="committed")
    return (
        f"demo: bridge /metrics: received={total('tmc_bridge_source_received_messages_total')} "
        f"confirmed={total('tmc_bridge_source_confirmed_messages_total')} "
        f"produced={total('tmc_bridge_sink_produced_messages_total')} "
        f"dead_lettered={total('tmc_bridge_sink_dead_lettered_messages_total')} "
        f"transactions={batches} "
        f"mean_batch={total('tmc_bridge_pipeline_batch_size_messages_sum') / max(batches, 1):.0f}"
    )


def run(
    *,
    messages: int,
    workdir: Path,
    sink: str = "kafka",
    config: Path | None = None,
    source: str = "tmc",
) -> int:
    if source == "tmc_http" and sink != "kafka":
        print("demo: --source tmc_http runs into Kafka only")
        return 2
    config = config or (HTTP_CONFIG if source == "tmc_http" else CONFIGS[sink])
    if not config.exists():
        print(f"demo: {config} not found (run the demo from the project folder)")
        return 2
    problem = prepare_workdir(workdir)
    if problem is not None:
        print(f"demo: {problem}", file=sys.stderr)
        return 2
    env = {
        "TMC_APP_SECRET": harness.DEMO_SECRET,
        "ROCKETMQ_ACCESS_KEY": DEMO_ACCESS_KEY,
        "ROCKETMQ_SECRET_KEY": DEMO_SECRET_KEY,
    }
    topics = topics_of(load(config, env=env))
    target = rocketmq_target if sink == "rocketmq" else kafka_target
    print(
        f"demo: starting {sink} in {workdir} (the first run downloads it, with progress); "
        f"source {source}"
    )
    with target(workdir, topics) as (broker_env, read):
        sim_port = harness.free_port()
        sim = harness.start_simulator(workdir, port=sim_port, messages=messages)
        bridge = None
        try:
            print(f"demo: simulator on :{sim_port} with {messages} order events; bridge -> {sink}")
            started = time.monotonic()
            # The HTTP API source's config reads the simulator's TOP gateway from here.
            gateway = {"TMC_HTTP_URL": f"http://127.0.0.1:{sim_port}/router/rest"}
            bridge = harness.start_bridge(
                workdir, config, sim_port=sim_port, extra_env={**broker_env, **gateway}
            )
            stats = harness.wait_confirmed(sim_port, messages, timeout_s=300, watch=bridge)
            took = time.monotonic() - started
            print(metrics_line(bridge.http_port))
            code = bridge.stop(timeout_s=60)
            bridge = None
            print(
                f"demo: {stats['confirmed']} confirmed in {took:.1f} s (incl. start-up); "
                f"bridge exited with {code}; redelivered={stats['redelivered']}"
            )
            ledger = harness.sim_get(sim_port, "ledger")
            stats = harness.sim_get(sim_port, "stats")
        finally:
            if bridge is not None:
                bridge.stop()
            sim.stop()
        arrived = read(messages)
    verdict = harness.verify(ledger, arrived, int(stats["confirmed"]))
    for problem in verdict.problems[:10]:
        print(f"demo: problem: {problem}")
    print(verdict.line())
    return 0 if verdict.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.demo",
        description="Local broker + TMC simulator + bridge, then one summary line.",
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--sink", choices=["kafka", "rocketmq"], default="kafka")
    parser.add_argument(
        "--workdir",
        default=".work/demo",
        help="scratch directory (default: %(default)s); must be new, empty, or one the demo "
        "made before: its contents are deleted at the start of each run",
    )
    parser.add_argument("--config", type=Path, default=None, help="default: per sink")
    parser.add_argument(
        "--source",
        choices=["tmc", "tmc_http"],
        default="tmc",
        help="tmc: the WebSocket source; tmc_http: the HTTP API source (Kafka only)",
    )
    args = parser.parse_args(argv)
    try:
        return run(
            messages=args.messages,
            workdir=Path(args.workdir),
            sink=args.sink,
            config=args.config,
            source=args.source,
        )
    except ConfigError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    except BridgeError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
