"""Shared plumbing of the demo, the benchmark, the chaos suite and the integration tests.

Starts the simulator and the bridge as child processes (the way a user runs them), reads
Kafka topics back with a ``read_committed`` consumer, and checks what arrived against the
simulator's ledger: lost, duplicated, reordered.

Reading back waits out open transactions: it first takes every partition's end as a
``read_uncommitted`` client sees it (the high watermark: everything written so far,
committed or not), then reads with ``read_committed`` until its position reached that
offset on every partition. A transaction left open by a crashed producer holds the last
stable offset (LSO) back until the broker aborts it (``transaction.timeout.ms``), and a
read that stopped at the LSO would report what is behind it as lost. librdkafka moves
the consumer's position past transaction control records (commit and abort markers) and
past aborted records it filters out, so the position does reach the high watermark once
the LSO passed it (checked with librdkafka 2.16).
"""

from __future__ import annotations

import contextlib
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
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

from confluent_kafka import Consumer, IsolationLevel, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

# `confluent_kafka.admin` imports it without re-exporting it (for a type checker).
from confluent_kafka.admin._listoffsets import OffsetSpec
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


def spawn(
    name: str, args: list[str], workdir: Path, env: dict[str, str], *, module: str = "bridge"
) -> Child:
    """``python -m <module> <args>`` in ``workdir``, its output in ``<name>.log``.

    ``module`` is ``bridge`` (what ``tmc-bridge`` runs) or a devtools module such as
    ``devtools.crash_bridge``; devtools is not installed, so the repository root is put on
    ``PYTHONPATH`` for those."""
    full_env = {**os.environ, **env}
    if module.split(".", maxsplit=1)[0] == "devtools":
        root = str(Path(__file__).resolve().parents[1])
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, full_env.get("PYTHONPATH")) if p)
    log_path = workdir / f"{name}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=full_env,
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
    seed: int = 1,
    redeliver_on_disconnect: bool = False,
    name: str = "simulator",
) -> Child:
    """``tmc-bridge simulate`` as a child process, once its HTTP control answers.
    ``redeliver_on_disconnect``: a dropped connection's unconfirmed messages go to another
    connection at once (else after ``confirm_timeout_s``, as TMC does)."""
    extra = ["--redeliver-on-disconnect"] if redeliver_on_disconnect else []
    child = spawn(
        name,
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
            "--seed",
            str(seed),
            "--log-level",
            "warning",
            *extra,
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
    crash: str | None = None,
) -> Child:
    """The bridge as a child process; broker addresses come in ``extra_env``. Its HTTP
    port is a free one, passed as ``TMC_BRIDGE_HTTP_PORT`` (the example configs read it).
    ``crash`` (e.g. ``after_commit:3``) runs it through :mod:`devtools.crash_bridge`,
    which ends the process with exit code 86 at that point."""
    http_port = free_port()
    env = {
        "TMC_URL": f"ws://127.0.0.1:{sim_port}/",
        "TMC_APP_KEY": DEMO_APP_KEY,
        "TMC_APP_SECRET": secret,
        "HOSTNAME": "demo-0",
        "TMC_BRIDGE_HTTP_PORT": str(http_port),
        **(extra_env or {}),
    }
    if crash is None:
        child = spawn(name, ["run", "--config", str(config.resolve())], workdir, env)
    else:
        args = ["--crash", crash, "--config", str(config.resolve())]
        child = spawn(name, args, workdir, env, module="devtools.crash_bridge")
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


#: How long a read-back waits, by default, for everything written before it began to be
#: readable: longer than a crashed producer's open transaction can hold read_committed
#: readers back (``transaction.timeout.ms``, 60 s by default, plus the broker's check).
READ_TIMEOUT_S = 120.0

#: How often a read-back asks for the LSO of partitions it has not seen pass their end.
_LSO_POLL_S = 0.2


@dataclass
class ReadBack(Generic[_T]):
    """What :func:`read_back` read, and how long it was held back."""

    records: list[_T]
    #: Seconds from the start of the read until the last stable offset of every partition
    #: had passed the end offset a read_uncommitted client saw when the read began: how
    #: long open transactions stalled a read_committed reader (0.0 when none was open).
    lso_wait_s: float
    #: False when ``timeout_s`` passed before every partition was read to its end; the
    #: records then miss what was behind an open transaction.
    complete: bool
    #: (topic, partition) -> (position reached, end offset), for partitions not read to
    #: their end (empty when complete).
    behind: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)


class EndOffsets:
    """End offsets of the partitions of ``topics``, as read_uncommitted clients see them
    (the high watermark: everything written) and as read_committed clients see them (the
    last stable offset: nothing of an open transaction or after it). One ListOffsets
    request for all partitions per call."""

    def __init__(self, bootstrap: str, topics: list[str], *, request_timeout_s: float = 5.0):
        # log_level 0: no librdkafka lines on stderr while a broker is down (the calls
        # raise then; callers decide).
        self._admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        self._topics = topics
        self._timeout_s = request_timeout_s
        self._partitions: list[TopicPartition] = []

    def partitions(self) -> list[TopicPartition]:
        """The topics' partitions (those that exist), looked up once."""
        if not self._partitions:
            meta = self._admin.list_topics(timeout=self._timeout_s)
            self._partitions = [
                TopicPartition(t, p)
                for t in self._topics
                if t in meta.topics
                for p in sorted(meta.topics[t].partitions)
            ]
        return self._partitions

    def high(self) -> dict[tuple[str, int], int]:
        """High watermarks (read_uncommitted ends). Raises KafkaException."""
        return self._ends(IsolationLevel.READ_UNCOMMITTED)

    def stable(self) -> dict[tuple[str, int], int]:
        """Last stable offsets (read_committed ends). Raises KafkaException."""
        return self._ends(IsolationLevel.READ_COMMITTED)

    def _ends(self, isolation: IsolationLevel) -> dict[tuple[str, int], int]:
        parts = self.partitions()
        if not parts:
            return {}
        futures = self._admin.list_offsets(
            {tp: OffsetSpec.latest() for tp in parts},  # type: ignore[no-untyped-call]
            isolation_level=isolation,
            request_timeout=self._timeout_s,
        )
        return {
            (tp.topic, tp.partition): int(f.result(timeout=self._timeout_s).offset)
            for tp, f in futures.items()
        }


def read_back(
    bootstrap: str,
    topics: list[str],
    convert: Callable[[Message], _T],
    *,
    timeout_s: float = READ_TIMEOUT_S,
) -> ReadBack[_T]:
    """Every message of ``topics`` written before the call, once committed: read with
    isolation.level=read_committed up to the high watermark each partition had when the
    read began, waiting (up to ``timeout_s``) while an open transaction holds the last
    stable offset back. Aborted records are skipped by the consumer, as any
    read_committed consumer skips them."""
    started = time.monotonic()
    offsets = EndOffsets(bootstrap, topics, request_timeout_s=10.0)
    ends = offsets.high()
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
        consumer.assign([TopicPartition(t, p, 0) for t, p in ends])
        out: list[_T] = []
        positions = dict.fromkeys(ends, 0)
        todo = {k for k, end in ends.items() if end > 0}
        # Partitions whose LSO has not been seen at or past their end yet.
        stalled = set(todo)
        lso_wait_s: float | None = None
        next_check = started
        deadline = started + timeout_s
        while todo:
            now = time.monotonic()
            if stalled and now >= next_check:
                with contextlib.suppress(KafkaException, FutureTimeout):
                    lso = offsets.stable()
                    stalled = {k for k in stalled if lso.get(k, -1) < ends[k]}
                next_check = now + _LSO_POLL_S
            if not stalled and lso_wait_s is None:
                lso_wait_s = time.monotonic() - started
            if now > deadline:
                break
            for msg in consumer.consume(1000, 0.2):
                if msg.error():
                    continue
                out.append(convert(msg))
            for tp in consumer.position([TopicPartition(t, p) for t, p in todo]):
                key = (tp.topic, tp.partition)
                positions[key] = max(positions[key], tp.offset)
                if tp.offset >= ends[key]:
                    # The position passed the end, so the LSO did too.
                    todo.discard(key)
                    stalled.discard(key)
        if lso_wait_s is None:
            lso_wait_s = time.monotonic() - started
        behind = {k: (positions[k], ends[k]) for k in sorted(todo)}
        return ReadBack(out, lso_wait_s, not todo, behind)
    finally:
        consumer.close()


def read_topics(
    bootstrap: str, topics: list[str], *, timeout_s: float = READ_TIMEOUT_S
) -> list[Arrived]:
    """Everything committed in ``topics``, read with isolation.level=read_committed (see
    :func:`read_back`: waits while an open transaction holds the LSO back)."""
    return read_messages(bootstrap, topics, arrived_of, timeout_s=timeout_s)


def read_messages(
    bootstrap: str,
    topics: list[str],
    convert: Callable[[Message], _T],
    *,
    timeout_s: float = READ_TIMEOUT_S,
) -> list[_T]:
    """Every committed message of ``topics`` (read_committed), each through ``convert``;
    :func:`read_back` without the figures."""
    return read_back(bootstrap, topics, convert, timeout_s=timeout_s).records


def arrived_of(msg: Message) -> Arrived:
    """The :class:`Arrived` of a consumed record (its ``tmc.message_id`` header)."""
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
