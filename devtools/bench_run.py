"""One measured bridge run of ``make bench``: the simulator (:mod:`devtools.bench_sim`) and
one or more bridge processes, what they cost and how fast and late the confirms came.

* Throughput: confirmed / (last confirm - first push), as the simulator saw them.
* CPU: user + system seconds of each bridge process from /proc, sampled when the first
  message is confirmed (start-up, login, the committed-ids store's catch-up and the first
  batch's warm-up are behind it) and when the last one is; per 100,000 messages of what
  was confirmed in between. The start-up-included figure is given beside it.
* Peak RSS: ``VmHWM`` of each bridge process, read just before it is stopped.
* Latency: push -> confirm per message, as the simulator measured it (p50, p99, p999).
* Machine: how busy all cores were (from /proc/stat) over the same window, and the
  simulator's and the broker's CPU, so a reader sees what else ran on the cores.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from devtools import harness

_T = TypeVar("_T")


@dataclass
class RunResult:
    label: str
    messages: int
    confirmed: int = 0
    #: msg/s, first push -> last confirm (a paced run: the rate the confirms came at).
    rate: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    #: CPU s of the bridge process(es) per 100k messages, start-up excluded / included.
    cpu_per_100k: float | None = None
    cpu_per_100k_total: float | None = None
    #: Peak RSS (VmHWM) of the largest bridge process, MiB.
    rss_mb: float | None = None
    #: CPU s of each bridge process between the first and the last confirm.
    bridge_cpu_s: list[float] = field(default_factory=list)
    sim_cpu_s: float = 0.0
    broker_cpu_s: float | None = None
    #: Share of all cores busy between the first and the last confirm (0..1).
    machine_busy: float = 0.0
    window_s: float = 0.0
    redelivered: int = 0
    commit: str = ""
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        cpu = ", ".join(f"{c:.1f}" for c in self.bridge_cpu_s)
        lat = (
            f"p50 {self.p50_ms:.1f} p99 {self.p99_ms:.1f} p999 {self.p999_ms:.1f} ms"
            if self.p50_ms is not None and self.p99_ms is not None and self.p999_ms is not None
            else "no latency"
        )
        return (
            f"{self.label}: {self.confirmed} of {self.messages} confirmed in "
            f"{self.window_s:.2f} s = {self.rate:,.0f} msg/s; {lat}; bridge CPU s {cpu} "
            f"({fmt(self.cpu_per_100k)} per 100k, start-up excluded; "
            f"{fmt(self.cpu_per_100k_total)} included); peak RSS {fmt(self.rss_mb, 0)} MiB; "
            f"simulator {self.sim_cpu_s:.1f} s, broker {fmt(self.broker_cpu_s)} s, cores "
            f"{self.machine_busy:.0%} busy; redelivered={self.redelivered}"
            + (f"; sink per batch {self.commit}" if self.commit else "")
            + (f"; {'; '.join(self.notes)}" if self.notes else "")
        )


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def proc_cpu(pid: int | None) -> float:
    """User + system CPU seconds of a process (0.0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


def with_retry(label: str, run: Callable[[], _T]) -> tuple[_T | None, list[str]]:
    """``run()``; on any failure (a broker hiccup, a bridge that exited, a run that did not
    finish) once more, saying so. (None, notes) when the second try failed too."""
    notes: list[str] = []
    for attempt in (1, 2):
        try:
            return run(), notes
        except Exception as exc:
            text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
            print(f"bench: {label}: attempt {attempt} failed ({text})", flush=True)
            notes.append(f"attempt {attempt} failed ({text[:120]})")
            if attempt == 1:
                notes[-1] += "; retried once"
    return None, notes


def start_sim(workdir: Path, port: int, messages: int) -> harness.Child:
    args = ["--port", str(port), "--messages", str(messages)]
    child = harness.spawn(
        "simulator",
        args,
        workdir,
        {"TMC_APP_SECRET": harness.DEMO_SECRET},
        module="devtools.bench_sim",
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            harness.sim_get(port, "stats")
            return child
        except OSError:
            if child.proc.poll() is not None:
                raise RuntimeError(f"simulator exited:\n{child.tail()}") from None
            time.sleep(0.1)
    child.stop()
    raise RuntimeError("simulator did not come up in 60 s")


@dataclass
class Session:
    port: int
    sim: harness.Child
    bridges: list[harness.Child]

    def stats(self, what: str = "stats") -> dict[str, Any]:
        out: dict[str, Any] = harness.sim_get(self.port, what)
        return out

    def check_alive(self) -> None:
        for child in (self.sim, *self.bridges):
            if child.proc.poll() is not None:
                raise RuntimeError(f"{child.name} exited early:\n{child.tail(5)}")

    def wait(
        self, done: Callable[[dict[str, Any]], bool], timeout_s: float, poll_s: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.stats()
            if done(stats):
                return stats
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"timed out after {timeout_s:.0f} s: {stats['confirmed']} confirmed "
                    f"of {stats['published']}"
                )
            time.sleep(poll_s)


@contextlib.contextmanager
def session(
    workdir: Path,
    config: Path,
    env: dict[str, str],
    *,
    messages: int,
    bridges: int = 1,
) -> Iterator[Session]:
    """The bench simulator holding ``messages`` and ``bridges`` bridge processes (each its
    own HOSTNAME, so its own transactional.id / producer group) on one TMC group."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = harness.free_port()
    sim = start_sim(workdir, port, messages)
    children: list[harness.Child] = []
    try:
        for i in range(bridges):
            children.append(
                harness.start_bridge(
                    workdir,
                    config,
                    sim_port=port,
                    name=f"bridge-{i}",
                    extra_env={
                        "TMC_BRIDGE_LOG_LEVEL": "warning",
                        # Stable per index: a run's bridge fences an earlier one's
                        # leftover transaction at once (init_transactions).
                        "HOSTNAME": f"bench-{i}",
                        # The HTTP API source's config reads the simulator's gateway here.
                        "TMC_HTTP_URL": f"http://127.0.0.1:{port}/router/rest",
                        **env,
                    },
                )
            )
        yield Session(port, sim, children)
    finally:
        for child in children:
            child.stop(timeout_s=60)
        sim.stop()


@dataclass
class _Mark:
    confirmed: int
    bridges: list[float]
    sim: float
    broker: float
    ticks: tuple[int, int]


def _mark(s: Session, confirmed: int, broker_pid: int | None) -> _Mark:
    return _Mark(
        confirmed,
        [b.cpu_seconds() for b in s.bridges],
        s.sim.cpu_seconds(),
        proc_cpu(broker_pid),
        machine_ticks(),
    )


def _finish(
    result: RunResult, s: Session, start: _Mark, end: _Mark, stats: dict[str, Any]
) -> RunResult:
    result.confirmed = int(stats["confirmed"])
    result.redelivered = int(stats["redelivered"])
    result.bridge_cpu_s = [b - a for a, b in zip(start.bridges, end.bridges, strict=True)]
    counted = end.confirmed - start.confirmed
    if counted > 0:
        result.cpu_per_100k = sum(result.bridge_cpu_s) / counted * 100_000
    if result.confirmed:
        result.cpu_per_100k_total = sum(end.bridges) / result.confirmed * 100_000
    result.sim_cpu_s = end.sim - start.sim
    result.broker_cpu_s = end.broker - start.broker if end.broker else None
    busy, total = (e - a for a, e in zip(start.ticks, end.ticks, strict=True))
    result.machine_busy = busy / total if total else 0.0
    rss = [peak_rss_mb(b.proc.pid) for b in s.bridges]
    result.rss_mb = max((r for r in rss if r is not None), default=None)
    with contextlib.suppress(OSError, RuntimeError):
        result.commit = commit_quantiles(harness.scrape(s.bridges[0].http_port))
    return result


def full_speed(
    label: str,
    workdir: Path,
    config: Path,
    env: dict[str, str],
    messages: int,
    *,
    bridges: int = 1,
    broker_pid: int | None = None,
) -> RunResult:
    """All ``messages`` queued at once: the bridge(s) at full speed (latency under
    saturation: it includes the wait in the server's window)."""
    result = RunResult(label, messages)
    with session(workdir, config, env, messages=messages, bridges=bridges) as s:
        # Fine-grained until the first confirm: that is where the CPU count starts.
        first = s.wait(lambda st: st["confirmed"] > 0, timeout_s=180, poll_s=0.01)
        start = _mark(s, int(first["confirmed"]), broker_pid)
        stats = s.wait(lambda st: st["confirmed"] >= messages, timeout_s=900, poll_s=0.1)
        end = _mark(s, int(stats["confirmed"]), broker_pid)
        lat = s.stats("latency")
        window = stats["last_confirm_at"] - stats["first_push_at"]
        result.window_s = window
        result.rate = stats["confirmed"] / window if window > 0 else 0.0
        result.p50_ms, result.p99_ms = lat.get("p50_ms"), lat.get("p99_ms")
        result.p999_ms = lat.get("p999_ms")
        _finish(result, s, start, end, stats)
    if result.confirmed < messages:
        raise RuntimeError(f"{label}: only {result.confirmed} of {messages} confirmed")
    return result


def paced(
    label: str,
    workdir: Path,
    config: Path,
    env: dict[str, str],
    *,
    rate: float,
    seconds: float,
    warmup_s: float,
    broker_pid: int | None = None,
) -> RunResult:
    """Messages published at a fixed ``rate`` for ``seconds`` (after ``warmup_s`` at the
    same rate whose latencies are dropped) to a bridge that is up and idle: latency and
    CPU per message at that load, not under saturation."""
    total = int(rate * seconds)
    result = RunResult(label, total)
    with session(workdir, config, env, messages=0) as s:
        s.wait(lambda st: st["connections_online"] >= 1, timeout_s=120, poll_s=0.1)
        deadline = time.monotonic() + 120
        while harness.http_get(s.bridges[0].http_port, "/readyz")[0] != 200:
            s.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("bridge not ready after 120 s")
            time.sleep(0.1)
        warm = int(rate * warmup_s)
        if warm:
            s.stats(f"pace?rate={rate}&seconds={warmup_s}")
            s.wait(lambda st: st["confirmed"] >= warm, timeout_s=120, poll_s=0.05)
        s.stats("latency?reset=1")
        base = s.stats()
        start = _mark(s, int(base["confirmed"]), broker_pid)
        started = time.time()
        s.stats(f"pace?rate={rate}&seconds={seconds}")
        stats = s.wait(
            lambda st: st["confirmed"] >= warm + total, timeout_s=seconds + 300, poll_s=0.1
        )
        end = _mark(s, int(stats["confirmed"]), broker_pid)
        lat = s.stats("latency")
        result.window_s = stats["last_confirm_at"] - started
        result.rate = total / result.window_s if result.window_s > 0 else 0.0
        result.p50_ms, result.p99_ms = lat.get("p50_ms"), lat.get("p99_ms")
        result.p999_ms = lat.get("p999_ms")
        _finish(result, s, start, end, stats)
        result.confirmed -= warm
        result.cpu_per_100k_total = None  # the warm-up is in it: not comparable
    result.notes.append(
        f"offered {rate:,.0f} msg/s; msg/s = messages / (last confirm - start of publishing); "
        f"{warm} warm-up messages first (latencies dropped)"
    )
    return result


def commit_quantiles(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> str:
    """Time in the sink per committed batch, from the bridge's histogram: the bucket
    bounds that hold 50%, 99% and all of the batches."""
    buckets = sorted(
        (float(dict(labels)["le"]), count)
        for (name, labels), count in samples.items()
        if name == "tmc_bridge_sink_commit_duration_seconds_bucket"
    )
    total = buckets[-1][1] if buckets else 0
    if not total:
        return ""

    def bound(share: float) -> str:
        upper = next(le for le, count in buckets if count >= share * total)
        return f"<= {upper:g} s" if upper != float("inf") else "> 30 s"

    return f"p50 {bound(0.5)}, p99 {bound(0.99)}, max {bound(1.0)} ({total:.0f} batches)"


def prefill_dedup(bootstrap: str, topic: str, ids: int, *, per_marker: int = 40) -> float:
    """Write ``ids`` committed ids into the committed-ids topic as a bridge of app key
    12345678, group default would have (markers of ``per_marker`` ids, times spread over
    the last hour, ids far below any the simulator hands out). Returns seconds taken."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    from bridge.dedup import marker
    from bridge.dedup.kafka_topic import ensure_topic

    started = time.monotonic()
    ensure_topic(AdminClient({"bootstrap.servers": bootstrap}), topic, 24 * 3600 * 1000)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
    key = marker.scope(f"tmc/{harness.DEMO_APP_KEY}", "tmc@default").encode()
    rng = random.Random(11)
    now_ms = int(time.time() * 1000)
    span_ms = 3600 * 1000
    markers = (ids + per_marker - 1) // per_marker
    base = 2_100_000_000_000_000_000
    for number in range(markers):
        first = base + number * per_marker * 3
        batch = [first + 3 * i + rng.randrange(3) for i in range(per_marker)]
        stamp = now_ms - span_ms + span_ms * number // markers
        while True:
            try:
                producer.produce(
                    topic, key=key, value=marker.encode(batch), partition=0, timestamp=stamp
                )
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise RuntimeError("committed-ids pre-fill: markers not delivered in 120 s")
    return time.monotonic() - started
