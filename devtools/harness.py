"""Shared plumbing of the demo, the benchmark and the integration tests.

Starts the simulator and the bridge as child processes (the way a user runs them), reads
Kafka topics back with a ``read_committed`` consumer, and checks what arrived against the
simulator's ledger: lost, duplicated, reordered.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from confluent_kafka import Consumer, Message, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

_T = TypeVar("_T")

DEMO_SECRET = "demo-app-secret-0123456789"  # noqa: S105 - the simulator's demo credential
DEMO_APP_KEY = "12345678"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    """A child process with its output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes]
    #: The bridge's /metrics, /livez, /readyz port (0 for other children).
    http_port: int = 0

    def stop(self, timeout_s: float = 30.0, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def cpu_seconds(self) -> float:
        """User+system CPU time of the (still running) child, from /proc (Linux)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def spawn(name: str, args: list[str], workdir: Path, env: dict[str, str]) -> Child:
    log_path = workdir / f"{name}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
        cwd=workdir,
    )
    return Child(name, proc, log_path, log)


def start_simulator(
    workdir: Path,
    *,
    port: int,
    messages: int = 0,
    window: int = 1000,
    confirm_timeout_s: float = 60.0,
    secret: str = DEMO_SECRET,
) -> Child:
    child = spawn(
        "simulator",
        [
            "simulate",
            "--port",
            str(port),
            "--app-key",
            DEMO_APP_KEY,
            "--messages",
            str(messages),
            "--window",
            str(window),
            "--confirm-timeout-s",
            str(confirm_timeout_s),
            "--log-level",
            "warning",
        ],
        workdir,
        {"TMC_APP_SECRET": secret},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            sim_get(port, "stats")
            return child
        except OSError:
            if child.proc.poll() is not None:
                raise RuntimeError(f"simulator exited:\n{child.tail()}") from None
            time.sleep(0.1)
    raise RuntimeError("simulator did not come up in 30 s")


def sim_get(port: int, what: str) -> Any:
    url = f"http://127.0.0.1:{port}/_sim/{what}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def start_bridge(
    workdir: Path,
    config: Path,
    *,
    sim_port: int,
    extra_env: dict[str, str] | None = None,
    secret: str = DEMO_SECRET,
    name: str = "bridge",
) -> Child:
    """The bridge as a child process; broker addresses come in ``extra_env``. Its HTTP
    port is a free one, passed as ``TMC_BRIDGE_HTTP_PORT`` (the example configs read it)."""
    http_port = free_port()
    env = {
        "TMC_URL": f"ws://127.0.0.1:{sim_port}/",
        "TMC_APP_KEY": DEMO_APP_KEY,
        "TMC_APP_SECRET": secret,
        "HOSTNAME": "demo-0",
        "TMC_BRIDGE_HTTP_PORT": str(http_port),
        **(extra_env or {}),
    }
    child = spawn(name, ["run", "--config", str(config.resolve())], workdir, env)
    child.http_port = http_port
    return child


def http_get(port: int, path: str, timeout_s: float = 10.0) -> tuple[int, str]:
    """GET one of the bridge's endpoints: (status, body); (0, error) when it is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    status, text = http_get(port, "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}: {text[:200]}")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric_sum(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= set(lbl))


def wait_confirmed(
    port: int, expected: int, timeout_s: float, watch: Child | None = None
) -> dict[str, Any]:
    """Poll the simulator until ``expected`` messages are confirmed (or time runs out)."""
    deadline = time.monotonic() + timeout_s
    stats: dict[str, Any] = sim_get(port, "stats")
    while time.monotonic() < deadline:
        stats = sim_get(port, "stats")
        if stats["confirmed"] >= expected:
            break
        if watch is not None and watch.proc.poll() is not None:
            raise RuntimeError(f"{watch.name} exited early:\n{watch.tail()}")
        time.sleep(0.2)
    return stats


@dataclass(frozen=True)
class Arrived:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    message_id: int


def read_topics(bootstrap: str, topics: list[str], *, timeout_s: float = 30.0) -> list[Arrived]:
    """Everything committed in ``topics``, read with isolation.level=read_committed."""
    return read_messages(bootstrap, topics, _arrived, timeout_s=timeout_s)


def read_messages(
    bootstrap: str,
    topics: list[str],
    convert: Callable[[Message], _T],
    *,
    timeout_s: float = 30.0,
) -> list[_T]:
    """Every committed message of ``topics`` (read_committed), each through ``convert``."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"verify-{time.monotonic_ns()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        meta = consumer.list_topics(timeout=10)
        parts = [
            TopicPartition(t, p, 0)
            for t in topics
            if t in meta.topics
            for p in meta.topics[t].partitions
        ]
        ends = {}
        for tp in parts:
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            ends[(tp.topic, tp.partition)] = high
        consumer.assign(parts)
        out: list[_T] = []
        # Read until every partition reached its end offset (transaction markers included,
        # so the position may pass the last record).
        deadline = time.monotonic() + timeout_s
        done = {k for k, v in ends.items() if v == 0}
        while len(done) < len(ends) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    continue
                out.append(convert(msg))
            for tp in consumer.position([TopicPartition(t, p) for t, p in ends]):
                if tp.offset >= ends[(tp.topic, tp.partition)]:
                    done.add((tp.topic, tp.partition))
        return out
    finally:
        consumer.close()


def _arrived(msg: Message) -> Arrived:
    headers = dict(msg.headers() or [])
    key = msg.key()
    raw_id = headers.get("tmc.message_id")
    return Arrived(
        topic=str(msg.topic()),
        partition=int(msg.partition() or 0),
        offset=int(msg.offset() or 0),
        key=key.encode() if isinstance(key, str) else key,
        message_id=int(raw_id) if isinstance(raw_id, bytes | str) else -1,
    )


@dataclass
class Verdict:
    sent: int
    confirmed: int
    delivered: int
    duplicates: int
    order_violations: int
    lost: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.duplicates == 0
            and self.order_violations == 0
            and self.lost == 0
            and self.confirmed == self.sent
        )

    def line(self) -> str:
        return (
            f"demo summary: sent={self.sent} confirmed={self.confirmed} "
            f"delivered={self.delivered} duplicates={self.duplicates} "
            f"order_violations={self.order_violations} lost={self.lost}"
        )


def verify(ledger: list[dict[str, Any]], arrived: list[Arrived], confirmed: int) -> Verdict:
    """Compare the simulator's ledger with what Kafka holds.

    * lost: a published message id that is in no topic;
    * duplicates: records beyond the first for one message id;
    * order violations: within one key, message ids (which the simulator assigns in
      publish order) not increasing in offset order, or one key in two partitions.
    """
    sent_ids = {int(m["id"]) for m in ledger}
    seen: dict[int, int] = defaultdict(int)
    by_key: dict[tuple[str, bytes], list[Arrived]] = defaultdict(list)
    for rec in arrived:
        seen[rec.message_id] += 1
        if rec.key is not None:
            by_key[(rec.topic, rec.key)].append(rec)
    problems: list[str] = []
    violations = 0
    for (topic, key), recs in by_key.items():
        if len({r.partition for r in recs}) > 1:
            violations += 1
            problems.append(f"key {key!r} of {topic} is in several partitions")
        recs.sort(key=lambda r: (r.partition, r.offset))
        for before, after in itertools.pairwise(recs):
            if after.message_id < before.message_id:
                violations += 1
                problems.append(f"key {key!r}: {after.message_id} after {before.message_id}")
    lost = sent_ids - set(seen)
    duplicates = sum(n - 1 for n in seen.values())
    if lost:
        problems.append(f"lost ids (first 5): {sorted(lost)[:5]}")
    return Verdict(
        len(sent_ids),
        confirmed,
        len(set(seen) & sent_ids),
        duplicates,
        violations,
        len(lost),
        problems,
    )
