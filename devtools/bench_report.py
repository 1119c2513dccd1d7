"""``make bench``'s outputs: ``benchmarks.md`` (machine, versions, settings, one table row
per measurement) and ``benchmarks.png`` (throughput bars, latency percentiles)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from devtools.bench_run import RunResult, fmt


@dataclass
class Ceiling:
    """A raw client's rate, not the bridge's: the broker's and the client library's limit."""

    label: str
    messages: int
    rate: float
    notes: list[str] = field(default_factory=list)
    #: CPU seconds of the raw client's process per 100,000 messages (its library's own
    #: threads included), when measured: the floor under the bridge's figure.
    cpu_per_100k: float | None = None


@dataclass
class Report:
    settings: dict[str, str] = field(default_factory=dict)
    ceilings: list[Ceiling] = field(default_factory=list)
    runs: list[RunResult] = field(default_factory=list)
    #: Rows that failed twice: (label, why).
    failed: list[tuple[str, str]] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

    def run(self, label: str) -> RunResult | None:
        return next((r for r in self.runs if r.label == label), None)

    def ceiling(self, label: str) -> Ceiling | None:
        return next((c for c in self.ceilings if c.label == label), None)


def _pkg(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine() -> list[tuple[str, str]]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    try:
        import confluent_kafka

        librdkafka = confluent_kafka.libversion()[0]
    except ImportError:
        librdkafka = "n/a"
    from devtools.brokers.kafka import KAFKA_VERSION
    from devtools.brokers.rocketmq import ROCKETMQ_VERSION

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "bridge"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit += " (bridge/ modified)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return [
        ("CPU", f"{os.cpu_count()} cores, {cpu}"),
        ("Load average (1, 5, 15 min) at the end", ", ".join(f"{v:.2f}" for v in os.getloadavg())),
        ("Memory", f"{mem_kb / 2**20:.1f} GiB"),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("tmc-bridge", f"{_pkg('tmc-bridge')}, commit {commit}"),
        ("confluent-kafka / librdkafka", f"{_pkg('confluent-kafka')} / {librdkafka}"),
        ("Kafka broker", f"{KAFKA_VERSION} (single node, KRaft, on this machine)"),
        ("websockets", _pkg("websockets")),
        ("rocketmq-client-python", _pkg("rocketmq-client-python")),
        ("RocketMQ broker", f"{ROCKETMQ_VERSION} (NameServer + broker, ACL on, this machine)"),
    ]


def _lat(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def markdown(report: Report, *, quick: bool, took_s: float, command: str) -> str:
    raw = report.ceiling("kafka raw transactional producer")
    out = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M %Z')} in "
        f"{took_s / 60:.1f} minutes"
        + (
            " — a **quick** run (small sizes): a smoke test, not figures to quote."
            if quick
            else "."
        )
        + " Regenerate with `make bench` (about 4 minutes here; `python -m devtools.bench "
        "--quick` checks the harness in about 1).",
        "",
        "Everything runs on the one machine: the broker, the TMC simulator, the bridge and the "
        "bench itself share its cores, so figures move by 10–30% from run to run (more when "
        "anything else runs). Compare rows of one run with each other, not with another "
        "machine's.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine()),
        "",
        "## Settings",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in report.settings.items()),
        "",
        "## Results",
        "",
        "msg/s: confirmed / (last confirm − first push), as the simulator saw them (a paced "
        "row: the rate the confirms came at). Latency: push → confirm per message, measured "
        "by the simulator. CPU: user + system seconds of the bridge process(es) per 100,000 "
        "messages, counted from the first confirm to the last (start-up excluded; in "
        "brackets: from process start). RSS: peak (VmHWM) of the bridge process. Cores busy: "
        "all cores, over the same window (what the simulator, the broker and the bench took "
        "besides the bridge).",
        "",
        "| Run | Messages | msg/s | × raw | p50 ms | p99 ms | p999 ms | CPU s / 100k | "
        "Peak RSS MiB | Simulator CPU s | Broker CPU s | Cores busy | Notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in report.ceilings:
        notes = "; ".join(c.notes)
        cpu = fmt(c.cpu_per_100k)
        out.append(
            f"| {c.label} | {c.messages:,} | {c.rate:,.0f} | | | | | {cpu} | | | | | {notes} |"
        )
    for r in report.runs:
        ratio = f"{r.rate / raw.rate:.2f}" if raw and raw.rate and "rocketmq" not in r.label else ""
        if "fixed rate" in r.label:
            ratio = ""  # an offered load, not a ceiling to compare
        elif "rocketmq" in r.label:
            rmq = report.ceiling("rocketmq raw orderly sends")
            ratio = f"{r.rate / rmq.rate:.2f}" if rmq and rmq.rate else ""
        cpu = fmt(r.cpu_per_100k)
        if r.cpu_per_100k_total is not None:
            cpu += f" ({r.cpu_per_100k_total:.2f})"
        if len(r.bridge_cpu_s) > 1:
            cpu += " [" + " + ".join(f"{c:.1f} s" for c in r.bridge_cpu_s) + "]"
        notes = "; ".join([*([f"redelivered {r.redelivered}"] if r.redelivered else []), *r.notes])
        if r.commit:
            notes += ("; " if notes else "") + f"sink per batch {r.commit}"
        out.append(
            f"| {r.label} | {r.messages:,} | {r.rate:,.0f} | {ratio} | {_lat(r.p50_ms)} | "
            f"{_lat(r.p99_ms)} | {_lat(r.p999_ms)} | {cpu} | {fmt(r.rss_mb, 0)} | "
            f"{r.sim_cpu_s:.1f} | {fmt(r.broker_cpu_s, 1)} | {r.machine_busy:.0%} | {notes} |"
        )
    for label, why in report.failed:
        out.append(f"| {label} | | failed twice | | | | | | | | | | {why} |")
    out += ["", "![throughput and latency](benchmarks.png)", ""]
    if report.findings:
        out += ["## What the run shows", "", *(f"* {f}" for f in report.findings), ""]
    return "\n".join(out)


def chart(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6), width_ratios=[3, 2])
    bars = [(c.label, c.rate, "#999999") for c in report.ceilings] + [
        (r.label, r.rate, "#d62728" if r.label.startswith("naive") else "#1f77b4")
        for r in report.runs
    ]
    names = [b[0] for b in bars]
    left.barh(names, [b[1] for b in bars], color=[b[2] for b in bars])
    left.invert_yaxis()
    left.set_xscale("log")
    left.set_xlabel("messages per second (log scale; grey: raw clients, red: naive)")
    left.set_title("Throughput")
    for i, (_, rate, _) in enumerate(bars):
        left.text(rate, i, f" {rate:,.0f}", va="center", fontsize=8)
    with_lat = [r for r in report.runs if r.p50_ms is not None]
    width = 0.27
    xs = range(len(with_lat))
    for offset, (name, values) in enumerate(
        [
            ("p50", [r.p50_ms or 0.0 for r in with_lat]),
            ("p99", [r.p99_ms or 0.0 for r in with_lat]),
            ("p999", [r.p999_ms or 0.0 for r in with_lat]),
        ]
    ):
        right.bar([x + (offset - 1) * width for x in xs], values, width, label=name)
    right.set_xticks(list(xs), [r.label for r in with_lat], rotation=60, ha="right", fontsize=8)
    right.set_yscale("log")
    right.set_ylabel("push → confirm, ms (log scale)")
    right.set_title("Latency")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
