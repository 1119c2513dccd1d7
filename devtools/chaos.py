"""``make chaos``: crash the bridge, its broker and its source, then count what was lost or
duplicated.

    python -m devtools.chaos [--seed N] [--only NAME[,NAME]] [--scale F] [--workdir DIR]

Runs against a real Kafka (and RocketMQ) started from the jars in ``.cache/`` and the
project's TMC simulator, every process a child of this one, the bridges configured with
short timeouts (simulator confirm timeout 2.5 s, ``transaction_timeout_ms: 10000``,
``commit_timeout_s: 2``). Scenarios (each with its own simulator, data topics and
committed-ids topic, so none sees another's ids):

``kill-steady``
    a steady feed; the bridge SIGKILLed at random moments (10 times) and restarted at
    once with the same ``transactional.id``, as a StatefulSet restarts its pod.
``kill-backlog``
    the same with the whole backlog queued at once (the server window always full).
``broker-kill``
    Kafka SIGKILLed twice during a steady feed and restarted (same data dir and port),
    once briefly and once for longer than ``transaction.timeout.ms`` (the coordinator
    then aborts the bridge's open transaction on its own).
``sim-faults``
    the simulator drops connections and pushes duplicates and malformed frames at random.
``replicas``
    two bridges (two ``transactional.id``) on one app key and group; one SIGKILLed
    repeatedly and restarted, at the end killed once more and left dead: the survivor
    finishes, and the dead one's open transaction stalls read_committed readers until the
    broker aborts it (``transaction.timeout.ms``).
``commit-crash``
    replica A (``devtools.crash_bridge --crash after_commit:N``) exits right after its
    N-th commit, before confirming; the simulator hands the dead connection's unconfirmed
    messages to replica B at once (``--redeliver-on-disconnect``): B receives messages A
    committed milliseconds earlier. Five crashes.
``rocketmq-ordered`` / ``rocketmq-transactional``
    the RocketMQ sink in both modes, the bridge SIGKILLed at random (5 times each); the
    duplicates are held against what the README promises for the mode
    (:data:`ROCKETMQ_DUPLICATES_PER_KILL`).

Every scenario ends when the simulator saw every message confirmed; the topics are then
read back (Kafka: ``read_committed``, waiting while an open transaction holds the last
stable offset back, :func:`devtools.harness.read_back`) and compared with the simulator's
ledger. One table row per scenario:

* ``sent``: messages the simulator published; ``delivered``: of those, found in the topics;
  ``lost``: not found; ``dups``: records beyond the first for one message id;
* ``confirmed``: confirmed at the simulator;
* ``absorbed``: redeliveries of already committed messages that the bridges confirmed
  without writing them again (``tmc_bridge_source_duplicate_messages_total``, every kind but
  ``in_flight``, scraped from each bridge run until it was killed);
* ``stall_s``: the longest a read_committed reader waited for records already written
  (sampled every 0.25 s: high watermark now, time until the last stable offset passed it;
  broker downtime left out), or the read-back's own wait, whichever is longer;
* ``order``: per-key order violations that neither a redelivery (one of the two messages
  was pushed more than once) nor two connections (each pushed once, on different
  connections: the README promises order per connection) explain; RocketMQ
  transactional mode promises no per-key queue placement (``n/a``).

The suite exits 1 on any loss, any duplicate in Kafka, any unexplained order violation,
any message left unconfirmed, RocketMQ duplicates beyond the mode's allowance, or a bridge
that ended by itself; the last line of its output is always

    chaos: scenarios=S sent=N lost=L duplicates=D max_stall_s=X

over the Kafka scenarios. Random choices come from ``--seed`` (printed first; each scenario
draws from its own generator, so ``--only NAME --seed N`` repeats that scenario's choices).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import random
import secrets
import shutil
import signal
import sys
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from confluent_kafka import KafkaException
from prometheus_client.parser import text_string_to_metric_families

from devtools import harness
from devtools.crash_bridge import CRASH_EXIT_CODE

if TYPE_CHECKING:  # the brokers' modules are loaded when first needed
    from devtools.brokers.kafka import KafkaBroker
    from devtools.brokers.rocketmq import RocketMQBroker

Sink = Literal["kafka", "rocketmq"]

#: Seconds the simulator waits for a confirm before it redelivers (TMC: about a minute).
CONFIRM_TIMEOUT_S = 2.5
#: The Kafka sink's ``transaction_timeout_ms``: how long a dead replica's open transaction
#: holds read_committed readers back.
TRANSACTION_TIMEOUT_MS = 10_000
#: The Kafka sink's ``commit_timeout_s``.
COMMIT_TIMEOUT_S = 2.0
#: How often the broker aborts timed-out transactions (its default, 10 s, would add up to
#: 10 s to every stall beyond ``transaction.timeout.ms``).
ABORT_CHECK_INTERVAL_MS = 1000

#: The local RocketMQ's account (ACL on, as against ONS).
ROCKETMQ_ACCESS_KEY = "chaos-access-key"
ROCKETMQ_SECRET_KEY = "chaos-secret-key-0123"  # noqa: S105 - the local test broker's account
#: ``pipeline.max_in_flight`` of the RocketMQ scenarios' bridges.
ROCKETMQ_MAX_IN_FLIGHT = 2000
#: RocketMQ ``mode: ordered`` may write this many duplicates per SIGKILL: what was sent
#: (SEND_OK) but not confirmed when the bridge died is redelivered and sent again, and the
#: bridge holds at most ``pipeline.max_in_flight`` messages (README: at least once).
ORDERED_DUPLICATES_PER_KILL = ROCKETMQ_MAX_IN_FLIGHT
#: RocketMQ ``mode: transactional``: a redelivery to the restarted bridge is found in its
#: journal and confirmed without a second send, so no duplicates.
TRANSACTIONAL_DUPLICATES_PER_KILL = 0
ROCKETMQ_DUPLICATES_PER_KILL: dict[str, int] = {
    "ordered": ORDERED_DUPLICATES_PER_KILL,
    "transactional": TRANSACTIONAL_DUPLICATES_PER_KILL,
}

#: At full scale (``--scale 1``, every scenario) the Kafka scenarios must add up to this.
MIN_KAFKA_SCENARIOS = 5
MIN_KAFKA_MESSAGES = 300_000

#: Partitions of every Kafka data topic, queues of every RocketMQ topic.
PARTITIONS = 3
QUEUES = 4
#: How long one scenario may take to get everything confirmed after its chaos ended.
SETTLE_TIMEOUT_S = 180.0
#: Sampling period of the reader-stall meter, and of the bridges' /metrics.
STALL_TICK_S = 0.25
SCRAPE_EVERY_S = 0.5


def log(text: str) -> None:
    print(f"chaos: {text}", flush=True)


# --------------------------------------------------------------------------------------------
# Counting (pure)
# --------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the topics hold, held against the simulator's ledger."""

    sent: int = 0
    #: Sent message ids found at least once.
    delivered: int = 0
    lost: int = 0
    #: Records beyond the first for one message id.
    duplicates: int = 0
    #: Per-key order violations neither a redelivery nor two connections explain, plus
    #: keys found in more than one partition.
    order_violations: int = 0
    #: Reversed pairs where one of the two messages was pushed more than once.
    reordered_by_redelivery: int = 0
    #: Reversed pairs of messages pushed once each, on different connections.
    reordered_across_connections: int = 0
    #: Records whose message id the ledger does not hold.
    strays: int = 0
    #: Examples: lost and duplicated ids, order violations.
    details: list[str] = field(default_factory=list)


def tally(
    ledger: Sequence[Mapping[str, Any]],
    arrived: Iterable[harness.Arrived],
    *,
    check_order: bool = True,
) -> Tally:
    """Count lost, duplicated and reordered messages.

    ``ledger`` is the simulator's (``id``, ``pushes``, ``conn``: the connection it was last
    pushed to). Message ids grow in publish order, so within one key (per topic) they must
    grow with the offset, and a key must stay in one partition. A reversed pair is
    explained when one of the two was pushed more than once (a redelivery arrives late, a
    re-sent duplicate lands after newer records), or when both were pushed once, on
    different connections (no order across connections or replicas). Anything else is an
    order violation.
    """
    info = {int(m["id"]): (int(m.get("pushes", 1)), int(m.get("conn", 0))) for m in ledger}
    counts: Counter[int] = Counter()
    by_key: dict[tuple[str, bytes], list[harness.Arrived]] = defaultdict(list)
    out = Tally(sent=len(info))
    for rec in arrived:
        counts[rec.message_id] += 1
        if rec.key is not None:
            by_key[(rec.topic, rec.key)].append(rec)
    lost = sorted(i for i in info if i not in counts)
    out.lost = len(lost)
    out.delivered = out.sent - out.lost
    out.duplicates = sum(n - 1 for i, n in counts.items() if i in info)
    out.strays = sum(n for i, n in counts.items() if i not in info)
    if lost:
        out.details.append(f"lost ids (first 5 of {len(lost)}): {lost[:5]}")
    if out.duplicates:
        dup = sorted(i for i, n in counts.items() if n > 1 and i in info)
        out.details.append(f"duplicated ids (first 5 of {len(dup)}): {dup[:5]}")
    if out.strays:
        out.details.append(f"{out.strays} records with ids the simulator never published")
    if not check_order:
        return out
    unexplained: list[str] = []
    for (topic, key), recs in by_key.items():
        if len({r.partition for r in recs}) > 1:
            out.order_violations += 1
            unexplained.append(f"key {key!r} of {topic} is in several partitions")
            continue
        recs.sort(key=lambda r: r.offset)
        for before, after in itertools.pairwise(recs):
            if after.message_id >= before.message_id:
                continue
            pushes_b, conn_b = info.get(before.message_id, (1, 0))
            pushes_a, conn_a = info.get(after.message_id, (1, 0))
            if pushes_a > 1 or pushes_b > 1:
                out.reordered_by_redelivery += 1
            elif conn_a != conn_b:
                out.reordered_across_connections += 1
            else:
                out.order_violations += 1
                unexplained.append(
                    f"key {key!r} of {topic}: {after.message_id} after {before.message_id}, "
                    f"both pushed once on connection {conn_a}"
                )
    if unexplained:
        out.details.append(
            f"order violations (first 3 of {len(unexplained)}): {'; '.join(unexplained[:3])}"
        )
    return out


class StallMeter:
    """How long read_committed readers wait for records already written.

    Every sample pairs the partitions' high watermarks (what is written, committed or
    not) taken at time ``t`` with the time the last stable offsets (what read_committed
    readers may read) had all reached them. An open transaction holds the LSO of its
    partitions at its first record, so a transaction left open by a dead producer shows
    as a stall until the broker aborts it. Time the broker was down is left out (readers
    cannot read at all then; that is an outage, not a stall).
    """

    def __init__(self) -> None:
        self._pending: list[tuple[float, dict[tuple[str, int], int]]] = []
        self._down: list[tuple[float, float | None]] = []
        self.max_s = 0.0
        self.samples = 0

    def written(self, t: float, high: Mapping[tuple[str, int], int]) -> None:
        self._pending.append((t, dict(high)))
        self.samples += 1

    def stable(self, t: float, lso: Mapping[tuple[str, int], int]) -> None:
        keep = []
        for t0, high in self._pending:
            if all(lso.get(k, -1) >= v for k, v in high.items()):
                self.max_s = max(self.max_s, self._stalled(t0, t))
            else:
                keep.append((t0, high))
        self._pending = keep

    def broker_down(self, t: float) -> None:
        self._down.append((t, None))

    def broker_up(self, t: float) -> None:
        if self._down and self._down[-1][1] is None:
            self._down[-1] = (self._down[-1][0], t)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def worst(self, now: float) -> float:
        """The longest stall seen, counting samples still waiting as stalled until ``now``."""
        open_s = max((self._stalled(t0, now) for t0, _ in self._pending), default=0.0)
        return max(self.max_s, open_s)

    def _stalled(self, t0: float, t1: float) -> float:
        down = sum(
            max(0.0, min(t1, end if end is not None else t1) - max(t0, start))
            for start, end in self._down
        )
        return max(0.0, t1 - t0 - down)


@dataclass
class Row:
    """One scenario's line of the table."""

    scenario: str
    sink: Sink
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    confirmed: int = 0
    absorbed: int = 0
    #: None: not measured (RocketMQ).
    stall_s: float | None = None
    #: None: the sink does not promise per-key order (RocketMQ transactional).
    order_violations: int | None = 0
    kills: int = 0
    seconds: float = 0.0
    #: Duplicates the sink may write in this scenario (Kafka: none).
    allowed_duplicates: int = 0
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{self.lost} lost")
        if self.duplicates > self.allowed_duplicates:
            allowed = f" (allowed {self.allowed_duplicates})" if self.allowed_duplicates else ""
            found.append(f"{self.duplicates} duplicates{allowed}")
        if self.order_violations:
            found.append(f"{self.order_violations} order violations")
        if self.confirmed < self.sent:
            found.append(f"{self.sent - self.confirmed} unconfirmed")
        if self.sent == 0:
            found.append("nothing sent")
        return found + self.problems

    @property
    def ok(self) -> bool:
        return not self.failures()


COLUMNS = (
    ("scenario", "<22"),
    ("sink", "<8"),
    ("sent", ">7"),
    ("delivered", ">9"),
    ("lost", ">5"),
    ("dups", ">5"),
    ("confirmed", ">9"),
    ("absorbed", ">8"),
    ("stall_s", ">7"),
    ("order", ">5"),
    ("kills", ">5"),
    ("time_s", ">6"),
    ("result", "<6"),
)


def table(rows: Sequence[Row]) -> list[str]:
    """The table: a header and one line per scenario."""
    lines = [" ".join(f"{name:{fmt}}" for name, fmt in COLUMNS)]
    for r in rows:
        cells = (
            r.scenario,
            r.sink,
            r.sent,
            r.delivered,
            r.lost,
            r.duplicates,
            r.confirmed,
            r.absorbed,
            "-" if r.stall_s is None else f"{r.stall_s:.1f}",
            "n/a" if r.order_violations is None else r.order_violations,
            r.kills,
            f"{r.seconds:.0f}",
            "ok" if r.ok else "FAIL",
        )
        lines.append(" ".join(f"{c:{fmt}}" for c, (_, fmt) in zip(cells, COLUMNS, strict=True)))
    return lines


def final_line(rows: Sequence[Row]) -> str:
    """``chaos: scenarios=S sent=N lost=L duplicates=D max_stall_s=X`` over the Kafka rows."""
    kafka = [r for r in rows if r.sink == "kafka"]
    stall = max((r.stall_s or 0.0 for r in kafka), default=0.0)
    return (
        f"chaos: scenarios={len(kafka)} sent={sum(r.sent for r in kafka)} "
        f"lost={sum(r.lost for r in kafka)} duplicates={sum(r.duplicates for r in kafka)} "
        f"max_stall_s={stall:.1f}"
    )


def coverage_problems(rows: Sequence[Row]) -> list[str]:
    """What a full run must cover: at least 5 Kafka scenarios and 300,000 messages."""
    kafka = [r for r in rows if r.sink == "kafka"]
    sent = sum(r.sent for r in kafka)
    found = []
    if len(kafka) < MIN_KAFKA_SCENARIOS:
        found.append(f"only {len(kafka)} Kafka scenarios ran (at least {MIN_KAFKA_SCENARIOS})")
    if sent < MIN_KAFKA_MESSAGES:
        found.append(f"the Kafka scenarios sent {sent} messages (at least {MIN_KAFKA_MESSAGES})")
    return found


def kill_points(rng: random.Random, total: int, kills: int, low: float, high: float) -> list[int]:
    """``kills`` confirmed-message counts in ``[low, high) * total``, ascending: the moments
    (in progress) at which to kill."""
    return sorted(int(rng.uniform(low, high) * total) for _ in range(kills))


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


class Replica:
    """One bridge replica (a StatefulSet pod): one run after another with the same config
    (and so the same ``transactional.id`` / producer group), killed and restarted."""

    def __init__(
        self,
        world: World,
        name: str,
        config: Path,
        *,
        crashes: Iterator[str] | None = None,
    ) -> None:
        self.world = world
        self.name = name
        self.config = config
        self.child: harness.Child | None = None
        self.runs = 0
        self.kills = 0
        #: Killed for good (the replicas scenario's last kill): not restarted any more.
        self.retired = False
        #: Runs that ended with the crash hook's exit code.
        self.crashes = 0
        self._crash_points = crashes
        self._crash: str | None = None
        self._lock = threading.Lock()
        self._absorbed_done = 0
        self._absorbed_live = 0

    @property
    def absorbed(self) -> int:
        with self._lock:
            return self._absorbed_done + self._absorbed_live

    def start(self) -> None:
        self._crash = next(self._crash_points, None) if self._crash_points else None
        self.runs += 1
        child = harness.start_bridge(
            self.world.dir,
            self.config,
            sim_port=self.world.sim_port,
            extra_env={"TMC_BRIDGE_LOG_LEVEL": "info", **self.world.env},
            name=f"{self.name}-{self.runs}",
            crash=self._crash,
        )
        with self._lock:
            self.child = child
            self._absorbed_live = 0

    def scrape(self) -> None:
        """Remember the current run's count of absorbed redeliveries (best effort)."""
        child = self.child
        if child is None or child.proc.poll() is not None or not child.http_port:
            return
        status, text = harness.http_get(child.http_port, "/metrics", timeout_s=1.0)
        if status != 200:
            return
        value = absorbed_in(text)
        with self._lock:
            if self.child is child:
                self._absorbed_live = max(self._absorbed_live, value)

    def kill(self) -> None:
        """SIGKILL the running bridge (after a last look at its /metrics)."""
        self.scrape()
        child = self.child
        if child is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.proc.pid, signal.SIGKILL)
        child.proc.wait()
        self.kills += 1
        self._ended()

    def stop(self) -> int | None:
        """SIGTERM (a graceful drain), as at the end of a scenario; a run that only just
        started is given the time to set up its signal handlers first."""
        child = self.child
        if child is None:
            return None
        deadline = time.monotonic() + 20
        while child.proc.poll() is None and time.monotonic() < deadline:
            if harness.http_get(child.http_port, "/livez", timeout_s=1.0)[0] == 200:
                break
            time.sleep(0.1)
        self.scrape()
        code = child.stop(timeout_s=30)
        self._ended()
        return code

    def check(self) -> None:
        """Restart a bridge that ended by itself: expected after its crash point, a
        problem otherwise (the bridge never exits on its own while it is not told to)."""
        child = self.child
        if child is None or self.retired:
            return
        code = child.proc.poll()
        if code is None:
            return
        crashed = self._crash is not None and code == CRASH_EXIT_CODE
        if crashed:
            self.crashes += 1
        else:
            last = child.tail(3).replace("\n", " | ")
            self.world.problem(f"{child.name} exited by itself with code {code}: {last}")
        self._ended()
        self.start()

    def _ended(self) -> None:
        with self._lock:
            if self.child is not None:
                self.child.stop(timeout_s=1)
            self.child = None
            self._absorbed_done += self._absorbed_live
            self._absorbed_live = 0


def absorbed_in(metrics_text: str) -> int:
    """Redeliveries the bridge confirmed without writing them again, from its /metrics:
    ``tmc_bridge_source_duplicate_messages_total`` of every kind but ``in_flight``."""
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if (
                sample.name == "tmc_bridge_source_duplicate_messages_total"
                and sample.labels.get("kind") != "in_flight"
            ):
                total += sample.value
    return int(total)


class Feeder(threading.Thread):
    """Publishes ``total`` messages at ``rate`` per second through the simulator's HTTP
    control (``/_sim/publish``); ``total`` may be raised while it runs."""

    TICK_S = 0.05

    def __init__(self, sim_port: int, rate: float, total: int) -> None:
        super().__init__(name="feeder", daemon=True)
        self.sim_port = sim_port
        self.rate = rate
        self.total = total
        self.sent = 0
        self.error: str | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self._halt.is_set():
            due = min(self.total, int((time.monotonic() - started) * self.rate))
            if due > self.sent:
                try:
                    harness.sim_get(self.sim_port, f"publish?count={due - self.sent}")
                except OSError as exc:
                    self.error = str(exc)
                    return
                self.sent = due
            elif self.sent >= self.total:
                # Keep the clock: a raised total continues at the rate from here.
                started = time.monotonic() - self.sent / self.rate
            self._halt.wait(self.TICK_S)

    @property
    def done(self) -> bool:
        return self.sent >= self.total

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


class Watch(threading.Thread):
    """In the background during a scenario: the reader-stall meter (Kafka) and the bridges'
    /metrics."""

    def __init__(self, world: World) -> None:
        super().__init__(name="watch", daemon=True)
        self.world = world
        self.meter = StallMeter()
        self._halt = threading.Event()
        self._ends: harness.EndOffsets | None = None
        if world.sink == "kafka":
            self._ends = harness.EndOffsets(world.bootstrap, world.topics, request_timeout_s=3)
        self._lock = threading.Lock()

    def run(self) -> None:
        next_scrape = 0.0
        while not self._halt.is_set():
            now = time.monotonic()
            if now >= next_scrape:
                for replica in list(self.world.replicas):
                    replica.scrape()
                next_scrape = now + SCRAPE_EVERY_S
            self._sample()
            self._halt.wait(STALL_TICK_S)

    def _sample(self) -> None:
        if self._ends is None:
            return
        try:
            t0 = time.monotonic()
            high = self._ends.high()
            lso = self._ends.stable()
            t1 = time.monotonic()
        except (KafkaException, FutureTimeout, RuntimeError):
            return
        with self._lock:
            self.meter.written(t0, high)
            self.meter.stable(t1, lso)

    def broker_down(self) -> None:
        with self._lock:
            self.meter.broker_down(time.monotonic())

    def broker_up(self) -> None:
        with self._lock:
            self.meter.broker_up(time.monotonic())

    def settle(self, timeout_s: float) -> None:
        """Wait until every sample's records became readable (or ``timeout_s`` passed)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self.meter.pending == 0:
                    return
            time.sleep(STALL_TICK_S)

    def worst_stall(self) -> float:
        with self._lock:
            return self.meter.worst(time.monotonic())

    def stop(self) -> None:
        self._halt.set()
        self.join(15)


@dataclass
class Lab:
    """What all scenarios share: options, brokers (started on first use)."""

    workdir: Path
    seed: int
    scale: float
    #: Closed at the very end (the brokers).
    stack: contextlib.ExitStack
    #: Closed after each scenario (its simulator and bridges), whatever happened.
    scenario_stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    kafka: KafkaBroker | None = None
    rocketmq: RocketMQBroker | None = None

    def rng(self, scenario: str) -> random.Random:
        return random.Random(f"{self.seed}:{scenario}")

    def size(self, full: int, minimum: int = 1000) -> int:
        return max(minimum, round(full * self.scale))

    def count(self, full: int, minimum: int = 2) -> int:
        """A number of kills or crashes: as given at scale 1, fewer for quick runs."""
        return max(minimum, round(full * min(1.0, self.scale)))

    def kafka_broker(self) -> KafkaBroker:
        if self.kafka is None:
            from devtools.brokers.kafka import KafkaBroker

            broker = KafkaBroker(
                self.workdir / "kafka",
                properties={
                    "transaction.abort.timed.out.transaction.cleanup.interval.ms": str(
                        ABORT_CHECK_INTERVAL_MS
                    )
                },
            )
            started = time.monotonic()
            broker.start()
            self.stack.callback(broker.stop)
            log(f"kafka {broker.bootstrap} up in {time.monotonic() - started:.1f} s")
            self.kafka = broker
        return self.kafka

    def rocketmq_broker(self) -> RocketMQBroker:
        if self.rocketmq is None:
            from devtools.brokers.rocketmq import RocketMQBroker

            broker = RocketMQBroker(
                self.workdir / "rocketmq", acl={ROCKETMQ_ACCESS_KEY: ROCKETMQ_SECRET_KEY}
            )
            started = time.monotonic()
            broker.start()
            self.stack.callback(broker.stop)
            log(f"rocketmq {broker.namesrv_addr} up in {time.monotonic() - started:.1f} s")
            self.rocketmq = broker
        return self.rocketmq


class World:
    """One scenario's world: its own simulator, topics, committed-ids topic and replicas."""

    def __init__(
        self,
        lab: Lab,
        name: str,
        sink: Sink,
        *,
        backlog: int = 0,
        redeliver_on_disconnect: bool = False,
        mode: str = "ordered",
    ) -> None:
        self.lab = lab
        self.name = name
        self.sink = sink
        self.mode = mode
        self.rng = lab.rng(name)
        self.dir = lab.workdir / name
        self.dir.mkdir(parents=True)
        self.started = time.monotonic()
        self.replicas: list[Replica] = []
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.env: dict[str, str] = {}
        self.bootstrap = ""
        slug = name.replace("-", "_")
        if sink == "kafka":
            broker = lab.kafka_broker()
            self.bootstrap = broker.bootstrap
            self.topics = [f"chaos.{name}.{t}" for t in ("trade", "refund", "other", "dlq")]
            for topic in self.topics:
                broker.create_topic(topic, partitions=PARTITIONS)
            self.env = {"KAFKA_BOOTSTRAP": broker.bootstrap}
        else:
            rmq = lab.rocketmq_broker()
            self.topics = [f"chaos_{slug}_all", f"chaos_{slug}_dlq"]
            for topic in self.topics:
                rmq.create_topic(topic, queues=QUEUES, order=True)
            self.env = {"ROCKETMQ_NAMESRV": rmq.namesrv_addr}
        self.sim_port = harness.free_port()
        self.sim = harness.start_simulator(
            self.dir,
            port=self.sim_port,
            messages=backlog,
            confirm_timeout_s=CONFIRM_TIMEOUT_S,
            seed=self.rng.randrange(1, 2**31),
            redeliver_on_disconnect=redeliver_on_disconnect,
        )
        lab.scenario_stack.callback(self.close)
        self.watch = Watch(self)
        self.watch.start()
        self.feeder: Feeder | None = None
        #: Kills of something else than a replica (the broker), crashes at a crash point.
        self.extra_kills = 0

    # -- set-up ------------------------------------------------------------------------

    def config(self, replica: str) -> Path:
        """The bridge config of ``replica`` (its own transactional.id / producer group)."""
        doc: dict[str, Any] = {
            "source": {
                "type": "tmc",
                "tmc": {
                    "url": "${TMC_URL}",
                    "app_key": "${TMC_APP_KEY}",
                    "app_secret": "${TMC_APP_SECRET}",
                    "group": "default",
                    "pull_interval_s": 2,
                    # The simulator may drop the connection every second or so; the
                    # platform's 10 s floor would make this scenario take minutes.
                    "reconnect_min_s": 0.3,
                    "reconnect_max_s": 2,
                },
            },
            "pipeline": {
                "batch_max_messages": 2000,
                "batch_linger_ms": 10,
                "drain_timeout_s": 5,
                "retry_backoff_min_s": 0.2,
                "retry_backoff_max_s": 2,
                "sink_probe_interval_s": 2,
            },
            "log": {"level": "info", "format": "json"},
            "http": {"host": "127.0.0.1", "port": "${TMC_BRIDGE_HTTP_PORT}"},
        }
        if self.sink == "kafka":
            trade, refund, other, dlq = self.topics
            kafka: dict[str, Any] = {
                "bootstrap_servers": "${KAFKA_BOOTSTRAP}",
                "transactional_id": f"chaos-{self.name}-{replica}",
                "transaction_timeout_ms": TRANSACTION_TIMEOUT_MS,
                "commit_timeout_s": COMMIT_TIMEOUT_S,
            }
            if kafka_dedup_supported():
                kafka["dedup"] = {
                    "store": "kafka",
                    "topic": f"chaos.{self.name}.committed-ids",
                    "window_h": 24,
                }
            doc["sink"] = {"type": "kafka", "kafka": kafka}
            doc["routing"] = {
                "topics": {"taobao_trade_*": trade, "taobao_refund_*": refund, "*": other},
                "dead_letter_topic": dlq,
            }
            doc["pipeline"]["max_in_flight"] = 20000
        else:
            everything, dlq = self.topics
            doc["sink"] = {
                "type": "rocketmq",
                "rocketmq": {
                    "name_server": "${ROCKETMQ_NAMESRV}",
                    "access_key": ROCKETMQ_ACCESS_KEY,
                    "secret_key": ROCKETMQ_SECRET_KEY,
                    "mode": self.mode,
                    "producer_group": f"chaos_{self.name.replace('-', '_')}_{replica}",
                    "send_timeout_ms": 3000,
                    "retries": 2,
                    "send_threads": 8,
                    "journal_dir": str((self.dir / f"journal-{replica}").resolve()),
                },
            }
            doc["routing"] = {"topics": {"*": everything}, "dead_letter_topic": dlq}
            doc["pipeline"]["max_in_flight"] = ROCKETMQ_MAX_IN_FLIGHT
        path = self.dir / f"{replica}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def replica(self, name: str, *, crashes: Iterator[str] | None = None) -> Replica:
        rep = Replica(self, name, self.config(name), crashes=crashes)
        self.replicas.append(rep)
        rep.start()
        return rep

    def feed(self, rate: float, total: int) -> Feeder:
        self.feeder = Feeder(self.sim_port, rate, total)
        self.feeder.start()
        return self.feeder

    def problem(self, text: str) -> None:
        self.problems.append(text)
        log(f"{self.name}: problem: {text}")

    # -- progress ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = harness.sim_get(self.sim_port, "stats")
        return stats

    def confirmed(self) -> int:
        return int(self.stats()["confirmed"])

    def check(self) -> None:
        for rep in self.replicas:
            rep.check()
        if self.feeder is not None and self.feeder.error is not None:
            raise RuntimeError(f"feeding the simulator failed: {self.feeder.error}")

    def wait(self, what: str, cond: Callable[[], bool], timeout_s: float = 120.0) -> bool:
        """Poll ``cond`` (restarting bridges that ended); False (and a problem) on timeout."""
        deadline = time.monotonic() + timeout_s
        while not cond():
            self.check()
            if time.monotonic() > deadline:
                self.problem(f"timed out after {timeout_s:.0f} s waiting for {what}")
                return False
            time.sleep(0.05)
        return True

    def kill_at(self, replica: Replica, at_confirmed: int) -> None:
        """Kill ``replica`` once ``at_confirmed`` messages are confirmed and its current run
        confirmed something (or nothing is left), a random fraction of a batch later, and
        start it again at once (same config: same transactional.id / producer group)."""
        runs = replica.runs
        base = self.confirmed()

        def due() -> bool:
            stats = self.stats()
            confirmed, published = int(stats["confirmed"]), int(stats["published"])
            progressed = confirmed > base or confirmed >= published
            return replica.runs != runs or (confirmed >= at_confirmed and progressed)

        self.wait(f"{at_confirmed} confirmed before a kill of {replica.name}", due)
        time.sleep(self.rng.uniform(0.0, 0.25))
        replica.kill()
        replica.start()

    def kill_in_transaction(self, replica: Replica, attempts: int = 60) -> bool:
        """SIGKILL ``replica`` while it has a Kafka transaction open (records written, not
        committed), so that its transaction outlives it. It is frozen (SIGSTOP) first; if
        the LSO then stays behind the high watermark of that moment for 0.6 s (another
        replica's transactions end within milliseconds), the open transaction is the
        frozen one's and it is killed. Else it runs on and is frozen again a few tens of
        milliseconds later: it is then busy with what arrived while it was frozen, so
        likely in a transaction. True when it died with a transaction open."""
        ends = harness.EndOffsets(self.bootstrap, self.topics, request_timeout_s=3)
        for _ in range(attempts):
            child = replica.child
            if child is None:
                return False
            if self.feeder is not None and self.feeder.done:
                self.feeder.total += 100  # it only opens transactions while messages come
            replica.scrape()
            os.kill(child.proc.pid, signal.SIGSTOP)
            held = False
            with contextlib.suppress(KafkaException, FutureTimeout):
                high = ends.high()
                held = True
                deadline = time.monotonic() + 0.6
                while held and time.monotonic() < deadline:
                    lso = ends.stable()
                    held = any(lso.get(k, -1) < v for k, v in high.items())
                    time.sleep(0.05)
            if held:
                replica.kill()  # SIGKILL ends a stopped process too
                return True
            os.kill(child.proc.pid, signal.SIGCONT)
            time.sleep(self.rng.uniform(0.01, 0.08))
        replica.kill()
        return False

    def wait_confirmed(self, count: int) -> None:
        self.wait(f"{count} confirmed", lambda: self.confirmed() >= count)

    def settle(self, timeout_s: float = SETTLE_TIMEOUT_S) -> dict[str, Any]:
        """Wait until the feed is out and every published message is confirmed."""

        def settled() -> bool:
            if self.feeder is not None and not self.feeder.done:
                return False
            stats = self.stats()
            return bool(stats["confirmed"] >= stats["published"] > 0)

        self.wait("every message confirmed", settled, timeout_s)
        return self.stats()

    # -- the end ---------------------------------------------------------------------------

    def finish(self, *, allowed_duplicates: int = 0, check_order: bool = True) -> Row:
        """Stop everything, read the topics back, count."""
        stats = self.settle()
        if self.feeder is not None:
            self.feeder.stop()
        ledger: list[dict[str, Any]] = harness.sim_get(self.sim_port, "ledger")
        # For a look afterwards (or a count by other means): what the simulator published.
        (self.dir / "ledger.json").write_text(json.dumps(ledger))
        row = Row(self.name, self.sink, allowed_duplicates=allowed_duplicates)
        if self.sink == "kafka":
            self.stop_replicas()
            self.watch.settle(timeout_s=3 * TRANSACTION_TIMEOUT_MS / 1000)
            self.watch.stop()
            read = harness.read_back(self.bootstrap, self.topics, harness.arrived_of)
            if not read.complete:
                self.problem(f"read-back incomplete (position, end): {read.behind}")
            arrived = read.records
            row.stall_s = max(self.watch.worst_stall(), read.lso_wait_s)
            if read.lso_wait_s >= 0.5:
                self.notes.append(f"read-back waited {read.lso_wait_s:.1f} s for the LSO")
        else:
            # Read while the bridge still runs: the broker asks it about half messages
            # a killed run left (transactional mode), and only then are they visible.
            arrived = self.read_rocketmq(ledger)
            self.stop_replicas()
            self.watch.stop()
        counted = tally(ledger, arrived, check_order=check_order)
        row.sent, row.delivered, row.lost = counted.sent, counted.delivered, counted.lost
        row.duplicates = counted.duplicates
        row.order_violations = counted.order_violations if check_order else None
        row.confirmed = int(stats["confirmed"])
        row.absorbed = sum(r.absorbed for r in self.replicas)
        row.kills = sum(r.kills for r in self.replicas) + self.extra_kills
        row.seconds = time.monotonic() - self.started
        row.notes = [
            *self.notes,
            f"redelivered={stats['redelivered']} pushes={stats['pushes']} "
            f"logins={stats['logins_ok']} bridge runs={sum(r.runs for r in self.replicas)}",
            f"reordered: by redelivery={counted.reordered_by_redelivery} "
            f"across connections={counted.reordered_across_connections}",
        ]
        if int(stats.get("unknown_confirms", 0)):
            self.problem(f"{stats['unknown_confirms']} confirms of ids never pushed")
        if counted.strays:
            self.problem(f"{counted.strays} records with ids the simulator never published")
        row.notes.extend(counted.details)
        row.problems = list(self.problems)
        self.close()
        return row

    def stop_replicas(self) -> None:
        for rep in self.replicas:
            code = rep.stop()
            if code not in (None, 0):
                self.problem(f"{rep.name} stopped with exit code {code}")

    def read_rocketmq(self, ledger: list[dict[str, Any]]) -> list[harness.Arrived]:
        """Read the RocketMQ topics until every sent id is there (transactional mode: half
        messages of a killed bridge are committed by the broker's check-back, which reaches
        a restarted producer only after its first heartbeat, up to 30 s), at most 90 s."""
        from devtools.rocketmq_io import read_topics

        assert self.lab.rocketmq is not None
        want = {int(m["id"]) for m in ledger}
        deadline = time.monotonic() + 90
        while True:
            arrived = read_topics(
                self.lab.rocketmq.namesrv_addr,
                self.topics,
                expected=len(want),
                settle_s=2.0,
                credentials=(ROCKETMQ_ACCESS_KEY, ROCKETMQ_SECRET_KEY, "ALIYUN"),
            )
            missing = want - {a.message_id for a in arrived}
            if not missing or time.monotonic() > deadline:
                return arrived
            log(f"{self.name}: {len(missing)} not in RocketMQ yet (check-back?), reading again")
            time.sleep(5)

    def close(self) -> None:
        if self.feeder is not None:
            self.feeder.stop()
        if self.watch.is_alive():
            self.watch.stop()
        for rep in self.replicas:
            if rep.child is not None:
                rep.child.stop(timeout_s=5, sig=signal.SIGKILL)
        self.sim.stop(timeout_s=10)


_DEDUP: list[bool] = []


def kafka_dedup_supported() -> bool:
    """Whether this bridge has ``sink.kafka.dedup`` (the durable committed-ids store)."""
    if not _DEDUP:
        from bridge.sinks.kafka_config import KafkaSinkConfig

        _DEDUP.append("dedup" in KafkaSinkConfig.model_fields)
    return _DEDUP[0]


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------


def kill_steady(lab: Lab) -> Row:
    """A steady feed; the bridge SIGKILLed at random moments and restarted at once."""
    total = lab.size(100_000)
    world = World(lab, "kill-steady", "kafka")
    bridge = world.replica("a")
    world.feed(rate=max(500.0, total / 40), total=total)
    for at in kill_points(world.rng, total, lab.count(10), 0.02, 0.95):
        world.kill_at(bridge, at)
    return world.finish()


def kill_backlog(lab: Lab) -> Row:
    """The whole backlog queued at once; the bridge SIGKILLed at random moments."""
    total = lab.size(100_000)
    world = World(lab, "kill-backlog", "kafka", backlog=total)
    bridge = world.replica("a")
    for at in kill_points(world.rng, total, lab.count(10), 0.02, 0.95):
        world.kill_at(bridge, at)
    return world.finish()


def broker_kill(lab: Lab) -> Row:
    """Kafka SIGKILLed during a steady feed and restarted on the same data and port: once
    briefly, once for longer than ``transaction.timeout.ms`` (the coordinator then aborts
    the transaction the bridge left open, on its own), in random order."""
    total = lab.size(40_000)
    world = World(lab, "broker-kill", "kafka")
    world.replica("a")
    world.feed(rate=max(500.0, total / 25), total=total)
    broker = lab.kafka_broker()
    kills = lab.count(2)
    # Seconds to wait before starting it again (the start itself takes 2-7 s more).
    pauses = [world.rng.uniform(0.2, 2.0) for _ in range(kills - 1)]
    pauses.append(TRANSACTION_TIMEOUT_MS / 1000 + world.rng.uniform(0.0, 2.0))
    world.rng.shuffle(pauses)
    for at, pause in zip(kill_points(world.rng, total, kills, 0.15, 0.8), pauses, strict=True):
        world.wait_confirmed(at)
        time.sleep(world.rng.uniform(0.0, 0.25))
        world.watch.broker_down()
        down = time.monotonic()
        broker.kill()
        time.sleep(pause)
        broker.start()
        world.watch.broker_up()
        world.extra_kills += 1
        world.notes.append(f"broker down {time.monotonic() - down:.1f} s")
    return world.finish()


FAULTS = ("drop_connection", "duplicate_push", "malformed_frame")


def sim_faults(lab: Lab) -> Row:
    """The simulator drops connections, pushes duplicates and malformed frames at random."""
    total = lab.size(40_000)
    world = World(lab, "sim-faults", "kafka")
    world.replica("a")
    feeder = world.feed(rate=max(500.0, total / 20), total=total)
    injected: Counter[str] = Counter()
    while not feeder.done:
        world.check()
        time.sleep(world.rng.uniform(0.2, 1.0))
        fault = world.rng.choices(FAULTS, weights=(2, 3, 3))[0]
        if harness.sim_get(world.sim_port, f"fault?name={fault}").get("applied"):
            injected[fault] += 1
    world.notes.append("faults: " + " ".join(f"{k}={v}" for k, v in sorted(injected.items())))
    return world.finish()


def replicas(lab: Lab) -> Row:
    """Two replicas on one group; A killed and restarted, then killed and left dead."""
    total = lab.size(40_000)
    world = World(lab, "replicas", "kafka")
    a = world.replica("a")
    world.replica("b")
    world.feed(rate=max(500.0, total / 20), total=total)
    # The last kill (for good) while the feed still runs: a transaction to leave open.
    for at in kill_points(world.rng, total, lab.count(4), 0.05, 0.5):
        world.kill_at(a, at)
    world.wait_confirmed(int(world.rng.uniform(0.55, 0.7) * total))
    a.retired = True  # not restarted any more
    open_txn = world.kill_in_transaction(a)
    # Not a failure of the bridge when the timing never allowed it, but worth seeing.
    world.notes.append(
        f"replica a killed for good after {a.runs} runs, with a transaction open"
        if open_txn
        else f"replica a killed for good after {a.runs} runs, NOT caught with a transaction "
        "open: the stall of a dead replica's transaction was not measured"
    )
    return world.finish()


def commit_crash(lab: Lab) -> Row:
    """Replica A exits right after its N-th commit, before confirming; its unconfirmed
    messages go to replica B at once."""
    target = lab.size(8_000)
    crashes = lab.count(5)
    world = World(lab, "commit-crash", "kafka", redeliver_on_disconnect=True)
    b = world.replica("b")
    world.wait("replica b logged in", lambda: world.stats()["logins_ok"] >= 1)
    points = (f"after_commit:{world.rng.randint(2, 8)}" for _ in range(crashes))
    a = world.replica("a", crashes=points)
    feeder = world.feed(rate=1000.0, total=target)
    deadline = time.monotonic() + 180
    while a.crashes < crashes:
        world.check()  # restarts A after each crash, with the next crash point
        if feeder.done:
            feeder.total += 200  # A only commits (and crashes) while messages come
        if time.monotonic() > deadline:
            world.problem(f"replica a crashed {a.crashes} times in 180 s, not {crashes}")
            break
        time.sleep(0.05)
    world.notes.append(f"replica a crashed after commit {a.crashes} times; b ran {b.runs} time(s)")
    world.extra_kills += a.crashes
    return world.finish()


def rocketmq_scenario(lab: Lab, mode: str) -> Row:
    """The RocketMQ sink in ``mode``, the bridge SIGKILLed at random; duplicates held
    against the mode's allowance."""
    total = lab.size(10_000 if mode == "ordered" else 4_000)
    world = World(lab, f"rocketmq-{mode}", "rocketmq", backlog=total, mode=mode)
    bridge = world.replica("a")
    for at in kill_points(world.rng, total, lab.count(5), 0.05, 0.9):
        world.kill_at(bridge, at)
    kills = bridge.kills
    return world.finish(
        allowed_duplicates=kills * ROCKETMQ_DUPLICATES_PER_KILL[mode],
        check_order=mode == "ordered",
    )


@dataclass(frozen=True)
class Scenario:
    name: str
    sink: Sink
    run: Callable[[Lab], Row]


SCENARIOS = (
    Scenario("kill-steady", "kafka", kill_steady),
    Scenario("kill-backlog", "kafka", kill_backlog),
    Scenario("broker-kill", "kafka", broker_kill),
    Scenario("sim-faults", "kafka", sim_faults),
    Scenario("replicas", "kafka", replicas),
    Scenario("commit-crash", "kafka", commit_crash),
    Scenario("rocketmq-ordered", "rocketmq", lambda lab: rocketmq_scenario(lab, "ordered")),
    Scenario(
        "rocketmq-transactional", "rocketmq", lambda lab: rocketmq_scenario(lab, "transactional")
    ),
)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def selected(only: Sequence[str]) -> list[Scenario]:
    """The scenarios ``--only`` names (all when empty); unknown names are an error."""
    if not only:
        return list(SCENARIOS)
    names = [n for spec in only for n in spec.split(",") if n]
    known = {s.name: s for s in SCENARIOS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(
            f"chaos: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return [s for s in SCENARIOS if s.name in names]


def run(scenarios: Sequence[Scenario], *, seed: int, scale: float, workdir: Path) -> list[Row]:
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        lab = Lab(workdir=workdir, seed=seed, scale=scale, stack=stack)
        for scenario in scenarios:
            log(f"{scenario.name}: start")
            started = time.monotonic()
            try:
                with contextlib.ExitStack() as lab.scenario_stack:
                    row = scenario.run(lab)
            except Exception as exc:  # one scenario's failure is its row, the others still run
                traceback.print_exc()
                row = Row(scenario.name, scenario.sink, problems=[f"{type(exc).__name__}: {exc}"])
                row.seconds = time.monotonic() - started
            rows.append(row)
            log(
                f"{scenario.name}: {'ok' if row.ok else 'FAIL'} in {row.seconds:.0f} s: "
                f"sent={row.sent} lost={row.lost} duplicates={row.duplicates} "
                f"confirmed={row.confirmed} absorbed={row.absorbed} kills={row.kills}"
            )
            for note in row.notes:
                log(f"{scenario.name}:   {note}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.chaos", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these scenarios (repeatable or comma-separated): "
        f"{', '.join(s.name for s in SCENARIOS)}",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="message counts (and kills, below 1) times F"
    )
    parser.add_argument("--workdir", type=Path, default=Path(".work/chaos"))
    args = parser.parse_args(argv)
    if args.scale <= 0 or not math.isfinite(args.scale):
        parser.error("--scale must be a positive number")
    scenarios = selected(args.only)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    args.workdir.mkdir(parents=True)
    log(
        f"seed={seed} scale={args.scale} scenarios={','.join(s.name for s in scenarios)} "
        f"(repeat with --seed {seed}); logs in {args.workdir}"
    )
    if any(s.sink == "kafka" for s in scenarios) and not kafka_dedup_supported():
        log("this bridge has no sink.kafka.dedup: Kafka scenarios run with the in-memory store")
    started = time.monotonic()
    rows = run(scenarios, seed=seed, scale=args.scale, workdir=args.workdir)
    took = time.monotonic() - started
    print()
    for line in table(rows):
        print(line)
    print()
    failed = False
    for row in rows:
        for failure in row.failures():
            failed = True
            print(f"chaos: FAIL {row.scenario}: {failure}")
    if args.scale >= 1 and len(scenarios) == len(SCENARIOS):
        for failure in coverage_problems(rows):
            failed = True
            print(f"chaos: FAIL coverage: {failure}")
    print(f"chaos: seed={seed} took {took:.0f} s")
    print(final_line(rows), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
