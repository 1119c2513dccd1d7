"""``tmc-bridge demo``: local Kafka + TMC simulator + bridge, then one summary line.

Everything runs on this machine: Kafka from Maven Central jars (cached in ``.cache``),
the simulator and the bridge as child processes using ``bridge.yaml``. The demo waits
until the simulator saw every message confirmed, stops the bridge with SIGTERM (a
graceful drain), reads the topics back with ``read_committed`` and prints

    demo summary: sent=N confirmed=N delivered=N duplicates=0 order_violations=0 lost=0

exiting 0 only when nothing was lost, duplicated or reordered.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from bridge.config import load
from bridge.testing.kafka_broker import KafkaBroker
from bridge.tools import harness

PARTITIONS = 3


def main(*, messages: int, workdir: Path, config: Path = Path("bridge.yaml")) -> int:
    if not config.exists():
        print(f"demo: {config} not found (run the demo from the project folder)")
        return 2
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    cfg = load(config, env={"TMC_APP_SECRET": harness.DEMO_SECRET})
    topics = [*dict.fromkeys(cfg.routing.topics.values()), cfg.routing.dead_letter_topic]
    print(f"demo: starting Kafka (first run downloads it from Maven Central) in {workdir}")
    with KafkaBroker(workdir / "kafka") as kafka:
        for topic in topics:
            kafka.create_topic(topic, partitions=PARTITIONS)
        sim_port = harness.free_port()
        sim = harness.start_simulator(workdir, port=sim_port, messages=messages)
        bridge = None
        try:
            print(
                f"demo: simulator on :{sim_port} with {messages} order events; "
                f"bridge -> Kafka {kafka.bootstrap}"
            )
            started = time.monotonic()
            bridge = harness.start_bridge(
                workdir, config, sim_port=sim_port, bootstrap=kafka.bootstrap
            )
            stats = harness.wait_confirmed(sim_port, messages, timeout_s=300, watch=bridge)
            took = time.monotonic() - started
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
        arrived = harness.read_topics(kafka.bootstrap, topics)
    verdict = harness.verify(ledger, arrived, int(stats["confirmed"]))
    for problem in verdict.problems[:10]:
        print(f"demo: problem: {problem}")
    print(verdict.line())
    return 0 if verdict.ok else 1
