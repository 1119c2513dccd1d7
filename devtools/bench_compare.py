"""Two versions of the bridge side by side: ``python -m devtools.bench_compare --base DIR``.

``DIR`` is another checkout (for example ``git worktree add /tmp/base HEAD~3``). Against
one local Kafka and the bench simulator, the bridge of ``DIR`` and the bridge of this
checkout move the same backlog in turns (base, this, base, this, ...), so both meet the
same machine load; each run prints its rate and the bridge's CPU seconds per 100,000
messages (start-up excluded), and the end shows the medians. On a shared 2-core machine
single runs move by 10-30 %: compare the medians of several rounds.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from devtools import harness
from devtools.bench_run import RunResult, full_speed


def main(argv: list[str] | None = None) -> int:
    from bridge.config import load
    from devtools.brokers.kafka import KafkaBroker
    from devtools.demo import PARTITIONS, topics_of

    parser = argparse.ArgumentParser(prog="python -m devtools.bench_compare")
    parser.add_argument("--base", required=True, help="the other checkout's root")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", default="bridge.yaml")
    parser.add_argument("--workdir", default=".work/bench-compare")
    args = parser.parse_args(argv)
    base = Path(args.base).resolve()
    if not (base / "bridge" / "__init__.py").is_file():
        parser.error(f"--base {base}: no bridge package there")
    config = Path(args.config)
    workdir = Path(args.workdir)
    cfg = load(config, env={"TMC_APP_SECRET": harness.DEMO_SECRET})
    results: dict[str, list[RunResult]] = {"base": [], "this": []}
    with KafkaBroker(workdir / "kafka") as kafka:
        for topic in topics_of(cfg):
            kafka.create_topic(topic, partitions=PARTITIONS)
        for round_ in range(args.rounds):
            for name, extra in (("base", {"PYTHONPATH": str(base)}), ("this", {})):
                env = {"KAFKA_BOOTSTRAP": kafka.bootstrap, **extra}
                result = full_speed(
                    name,
                    workdir / f"{name}-{round_}",
                    config,
                    env,
                    args.messages,
                    broker_pid=kafka.pid,
                )
                results[name].append(result)
                print(
                    f"round {round_} {name}: {result.rate:,.0f} msg/s, "
                    f"{result.cpu_per_100k or 0:.2f} CPU s / 100k, p99 {result.p99_ms} ms, "
                    f"simulator {result.sim_cpu_s:.1f} CPU s",
                    flush=True,
                )
    for name, runs in results.items():
        cpu = statistics.median(r.cpu_per_100k or 0.0 for r in runs)
        rate = statistics.median(r.rate for r in runs)
        print(f"{name}: median {rate:,.0f} msg/s, {cpu:.2f} CPU s / 100k ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
