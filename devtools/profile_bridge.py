"""Where the bridge's CPU goes: py-spy samples a real bridge (WebSocket -> Kafka, durable
dedup, the demo config) while it moves a backlog, then prints the share of samples per
thread, per function (self) and per function of the bridge (inclusive).

    .venv/bin/pip install py-spy   # not a project dependency: a profiling tool
    .venv/bin/python -m devtools.profile_bridge --messages 100000

Sampling starts once the first messages are confirmed, so start-up is left out.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bridge.config import load
from devtools import harness
from devtools.demo import CONFIGS, kafka_target, topics_of

ROOT = Path(__file__).resolve().parents[1]
_LOCATION = re.compile(r" \(.*?\)$")


def profile(messages: int, workdir: Path, rate: int) -> Path:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("profile: py-spy not found; install it: .venv/bin/pip install py-spy")
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    config = ROOT / CONFIGS["kafka"]
    topics = topics_of(load(config, env={"TMC_APP_SECRET": harness.DEMO_SECRET}))
    raw = workdir / "samples.txt"
    with kafka_target(workdir, topics) as (broker_env, _read):
        port = harness.free_port()
        sim = harness.start_simulator(workdir, port=port, messages=messages)
        bridge = harness.start_bridge(workdir, config, sim_port=port, extra_env=broker_env)
        try:
            harness.wait_confirmed(port, min(1000, messages), timeout_s=120, watch=bridge)
            spy = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(bridge.proc.pid),
                    "--format",
                    "raw",
                    "--rate",
                    str(rate),
                    "--threads",
                    "--nonblocking",
                    "--output",
                    str(raw),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            started = time.monotonic()
            before = thread_cpu(bridge.proc.pid)
            harness.wait_confirmed(port, messages, timeout_s=600, watch=bridge)
            after = thread_cpu(bridge.proc.pid)
            print(f"profile: {messages} confirmed, sampled {time.monotonic() - started:.1f} s")
            print_thread_cpu(before, after)
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        finally:
            bridge.stop()
            sim.stop()
    return raw


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of every thread of ``pid``, by ``name (tid)``: the
    native threads too (librdkafka's, librocketmq's), which py-spy does not sample."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[f"{name} ({task.name})"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def print_thread_cpu(before: dict[str, float], after: dict[str, float]) -> None:
    used = {name: cpu - before.get(name, 0.0) for name, cpu in after.items()}
    total = sum(used.values())
    print(f"profile: CPU by thread (all threads, native ones too): {total:.2f} s")
    for name, cpu in sorted(used.items(), key=lambda item: -item[1]):
        if cpu > 0:
            print(f"  {cpu:6.2f} s  {cpu / total:6.1%}  {name}")


def report(raw: Path, top: int) -> None:
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        thread, *frames = stack.split(";")
        total += n
        threads[thread] += n
        if frames:
            self_time[frames[-1].strip()] += n
        for frame in {f.strip() for f in frames}:
            if "(bridge/" in frame:
                inclusive[_LOCATION.sub("", frame)] += n
    if not total:
        raise SystemExit("profile: no samples")
    print(f"profile: {total} samples")
    for name, n in threads.most_common(6):
        print(f"  {n / total:6.1%}  {name}")
    print("self time, top functions:")
    for name, n in self_time.most_common(top):
        print(f"  {n / total:6.1%}  {name}")
    print("inclusive time, bridge functions:")
    for name, n in inclusive.most_common(top):
        print(f"  {n / total:6.1%}  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.profile_bridge",
        description="Sample the bridge's CPU with py-spy while it moves a backlog.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=100_000, help="backlog to move")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--top", type=int, default=25, help="rows per list")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".work" / "profile")
    args = parser.parse_args(argv)
    report(profile(args.messages, args.workdir, args.rate), args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
