"""The pipeline: deliveries in, transactional batches out, confirms after commit.

Guarantees, and how they are kept:

* **Confirm after commit.** A delivery's acks are confirmed only after the sink's
  ``write_batch`` returned for the batch holding it (for Kafka: after
  ``commit_transaction()`` returned). A batch that raised is never confirmed.
* **Arrival order per key.** There is one queue in arrival order and one batch in the
  sink at a time; a failed batch is re-sent whole, in the same order, before anything
  that arrived after it. So records of one key reach the sink in the order received.
* **No duplicates from redelivery.** A redelivery of a message that is still held is
  folded into the first delivery (both are confirmed on commit); a redelivery of a
  committed message (its confirm was lost with a connection or a crash) is confirmed at
  once from the committed-ids store, without writing it again. A store that other
  replicas write to (Kafka's committed-ids topic) is asked only once it is current as of
  the delivery's arrival: the delivery takes a ticket and waits, in arrival order, until
  the store served it. These decisions are the pure
  :class:`~bridge.pipeline.ledger.Ledger`'s; this module is the asyncio driver.
* **Back-pressure.** :meth:`Pipeline.submit` waits while ``max_in_flight`` deliveries are
  held; sources await it before reading more, so a slow sink slows the socket reads.

The blocking sink runs on one dedicated thread; the event loop never blocks on it. The
sink contract is :mod:`bridge.pipeline.ports`; retries wait as :class:`~bridge.retry.Backoff`
says.

Health, for ``/readyz``: the sink is ready once started, as long as its last batch or
idle probe went through and no batch has been stuck in it for ``sink_stall_s``. While
idle, the writer probes the sink every ``sink_probe_interval_s`` (for Kafka, a metadata
round trip), so a broker that went away is noticed without traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import structlog

from bridge.errors import SinkError, SinkStopped
from bridge.headers import H_FILTER_RULE
from bridge.model import Delivery, OutRecord, SourceMessage, stream_key
from bridge.observability import metrics as m
from bridge.pipeline.filters import DIVERT, Filters, Verdict
from bridge.pipeline.ledger import Admission, Ledger, LruCommittedIds, swap_refused
from bridge.pipeline.ports import TAKEN, Batch, BatchSink, CommittedIds, Refused
from bridge.pipeline.routing import Router
from bridge.retry import Backoff

if TYPE_CHECKING:
    # A type only: the config package (YAML, the registry) is not loaded for it.
    from bridge.config import PipelineConfig

log = structlog.get_logger("bridge.pipeline")
_T = TypeVar("_T")


@dataclass(slots=True)
class _Entry:
    key: tuple[str, int]
    delivery: Delivery
    arrived: float
    #: The committed-ids store's ticket: decided once the store served it.
    ticket: int
    #: The routed record, once decided new (None while undecided).
    record: OutRecord | None = None


@dataclass(slots=True)
class PipelineStats:
    """Counters for logs, tests and the benchmark (Prometheus has its own, see metrics)."""

    received: int = 0
    duplicates_in_flight: int = 0
    duplicates_committed: int = 0
    committed: int = 0
    dead_lettered: int = 0
    batches: int = 0
    batch_retries: int = 0
    failed_back: int = 0
    given_up: int = 0
    #: New messages a filter rule dropped (confirmed, not written) or diverted.
    filter_dropped: int = 0
    filter_diverted: int = 0


def _live(entry: _Entry) -> bool:
    """Some delivery of it can still be confirmed (see :meth:`bridge.model.Ack.alive`);
    a delivery without acks (nothing to settle, e.g. in tests) always is."""
    acks = entry.delivery.acks
    if len(acks) == 1:  # the usual case, without a generator per message
        return acks[0].alive()
    return not acks or any(ack.alive() for ack in acks)


def _routed(entry: _Entry) -> OutRecord:
    record = entry.record
    if record is None:  # only decided entries are queued
        raise AssertionError(f"message {entry.key} queued before it was decided")
    return record


class Pipeline:
    """Owns ordering, batching, retries and the ack decision. One per bridge process."""

    def __init__(
        self,
        config: PipelineConfig,
        router: Router,
        sink: BatchSink,
        *,
        metrics: m.Metrics,
        committed: CommittedIds | None = None,
        log_message_ids: bool = False,
        clock: Callable[[], float] = time.monotonic,
        filters: Filters | None = None,
    ) -> None:
        self._config = config
        self._router = router
        #: Drop/divert rules (``filters``), decided for new messages only.
        self._filters = filters if filters else None
        self._sink = sink
        self._clock = clock
        self.metrics = metrics
        self._log_ids = log_message_ids
        #: Held messages, and the committed-ids store (in memory unless one is given).
        self._committed: CommittedIds = (
            committed if committed is not None else LruCommittedIds(config.dedupe_cache_size)
        )
        self._ledger: Ledger[_Entry] = Ledger(self._committed)
        #: Held, in arrival order, until the store served their ticket (then decided).
        self._undecided: deque[_Entry] = deque()
        #: The highest ticket the committed-ids store served.
        self._served = 0
        self._served_changed = asyncio.Event()
        self._backoff = Backoff(config.retry_backoff_min_s, config.retry_backoff_max_s)
        self.metrics.in_flight.set_function(lambda: len(self._ledger))
        self.metrics.sink_up(sink.name, lambda: self.sink_problem() is None)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{sink.name}-sink")
        self._queue: deque[_Entry] = deque()
        self._has_work = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._closed = False
        self._aborted = False
        self._sink_started = False
        #: Why the last batch attempt or probe failed; None once one went through.
        self._sink_error: str | None = None
        #: Clock time the batch now in the sink went in (None while idle).
        self._writing_since: float | None = None
        self.stats = PipelineStats()
        #: Called on the loop after each commit with (messages, seconds in the sink).
        self.on_commit: Callable[[int, float], None] | None = None

    # -- intake ------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._ledger)

    @property
    def accepting(self) -> bool:
        return not self._closed

    def submit(self, delivery: Delivery) -> Awaitable[None]:
        """Take a delivery; the awaitable returned waits while the pipeline is full. Never
        confirms by itself except for a message already committed (a redelivery).

        An awaitable, not always a coroutine: a delivery taken at once (the usual case,
        once per message) costs no coroutine. ``asyncio.create_task`` needs one: wrap it."""
        if self._offer(delivery):
            return TAKEN
        return self._submit_when_room(delivery)

    async def _submit_when_room(self, delivery: Delivery) -> None:
        while not self._offer(delivery):
            # Full: wait for room, then decide again (it may have arrived meanwhile).
            self._has_room.clear()
            await self._has_room.wait()

    def _offer(self, delivery: Delivery) -> bool:
        """Take ``delivery`` now (held, folded into the one held, or left to its source
        while draining) and return True; False when the pipeline is full."""
        msg = delivery.message
        key = stream_key(msg)
        ledger = self._ledger
        held = ledger.holding(key)
        if held is not None:
            self.stats.duplicates_in_flight += 1
            self.metrics.duplicate(msg.source, Admission.HELD.value)
            held.delivery.acks.extend(delivery.acks)
            return True
        if len(ledger) >= self._config.max_in_flight:
            return False
        if self._closed:
            # Draining: not accepted, not confirmed; the source will redeliver it.
            return True
        entry = _Entry(key, delivery, self._clock(), self._committed.ticket())
        ledger.hold(key, entry)
        if entry.ticket <= self._served and not self._undecided:
            self._decide(entry)
        else:
            self._undecided.append(entry)
        return True

    def _on_served(self, ticket: int) -> None:
        """The store is current as of ``ticket``: decide what waited for it, in order."""
        self._served = max(self._served, ticket)
        self._served_changed.set()
        waiting = self._undecided
        while waiting and waiting[0].ticket <= self._served:
            self._decide(waiting.popleft())

    def _decide(self, entry: _Entry) -> None:
        """A redelivery of a committed message is confirmed at once; one its source will
        redeliver anyway is given up; anything else is routed and queued for the writer."""
        msg = entry.delivery.message
        if self._ledger.committed(entry.key):
            self._absorb(entry)
            return
        if not _live(entry):
            self._give_up([entry])
            return
        self.stats.received += 1
        verdict = None
        if self._filters is not None and msg.malformed is None:
            # The ledger holds this message too: the figure the thresholds compare with.
            verdict = self._filters.decide(msg, len(self._ledger))
            if verdict is not None and verdict.action != DIVERT:
                self._drop(entry, verdict)
                return
        entry.record = self._route(msg)
        if verdict is not None:
            entry.record = self._divert(entry, entry.record, verdict)
        self._queue.append(entry)
        self._has_work.set()

    def _absorb(self, entry: _Entry) -> None:
        """Committed before (by this process, an earlier one or another replica)."""
        self._ledger.release([entry.key])
        self.stats.duplicates_committed += 1
        self.metrics.duplicate(entry.delivery.message.source, Admission.COMMITTED.value)
        for ack in entry.delivery.acks:
            ack.confirm()
        self._has_room.set()
        self._has_work.set()  # a drain may be waiting for the last undecided one

    def _drop(self, entry: _Entry, verdict: Verdict) -> None:
        """Dropped by a filter rule: confirmed at once (delivered by policy), never
        written, released like :meth:`_absorb` (a redelivery is decided anew)."""
        msg = entry.delivery.message
        self._ledger.release([entry.key])
        self.stats.filter_dropped += 1
        self.metrics.received(msg.source, msg.topic, msg.publish_time_ms)
        self.metrics.filtered(verdict.rule, verdict.action, verdict.label)
        log.debug(
            "message dropped by a filter",
            message_id=msg.message_id,
            topic=msg.topic,
            rule=verdict.rule,
            reason=verdict.reason,
        )
        for ack in entry.delivery.acks:
            ack.confirm()
        self._has_room.set()
        self._has_work.set()  # a drain may be waiting for the last undecided one

    def _divert(self, entry: _Entry, record: OutRecord, verdict: Verdict) -> OutRecord:
        """To the rule's ``divert_to`` topic, key and headers kept, the rule named in a
        header. A dead letter (the message could not be routed) stays one."""
        if record.dead_letter_reason is not None or verdict.divert_to is None:
            return record
        self.stats.filter_diverted += 1
        self.metrics.filtered(verdict.rule, verdict.action, verdict.label)
        log.debug(
            "message diverted by a filter",
            message_id=entry.key[1],
            topic=entry.delivery.message.topic,
            rule=verdict.rule,
            reason=verdict.reason,
            to=verdict.divert_to,
        )
        return OutRecord(
            topic=verdict.divert_to,
            key=record.key,
            value=record.value,
            headers=(*record.headers, (H_FILTER_RULE, verdict.rule.encode())),
        )

    def _give_up(self, entries: list[_Entry]) -> None:
        """Not written, not confirmed: the source redelivers these (maybe to another
        replica, which writes them), so writing them here could write them twice."""
        self._ledger.release(e.key for e in entries)
        for entry in entries:
            self.metrics.given_up(entry.delivery.message.source)
        self.stats.given_up += len(entries)
        self._has_room.set()
        self._has_work.set()
        log.info("messages given up: their source redelivers them", messages=len(entries))

    async def _current(self) -> None:
        """Until the committed-ids store is current as of now."""
        ticket = self._committed.ticket()
        while self._served < ticket and not self._aborted:
            self._served_changed.clear()
            await self._served_changed.wait()

    def _route(self, msg: SourceMessage) -> OutRecord:
        """Route one message under a guard: routing and metrics are pure and written not
        to raise for any input, but should one still raise (a bug meeting an input nobody
        thought of), that message is dead-lettered with the reason and the bridge goes on,
        instead of the exception ending the source's connection task."""
        try:
            self.metrics.received(msg.source, msg.topic, msg.publish_time_ms)
            return self._router.route(msg)
        except Exception as exc:
            log.exception("routing failed; dead-lettering the message", message_id=msg.message_id)
            reason = f"bridge could not route this message: {type(exc).__name__}: {exc}"
            return self._router.last_resort(msg, reason[:300])

    # -- the writer loop ---------------------------------------------------------

    async def start_sink(self) -> None:
        self._committed.listen(self._on_served)
        await self._in_sink(self._sink.start)
        self._sink_started = True

    def sink_problem(self) -> str | None:
        """None when the sink is ready, else why not (one short line, no secrets)."""
        last = self._sink.last_error
        cause = f": last error {last}" if last else ""
        if not self._sink_started:
            return f"{self._sink.name} sink starting{cause}" if last else "sink starting"
        if not self._sink.ready:
            return f"{self._sink.name} sink not connected{cause}"
        if self._sink_error is not None:
            return f"{self._sink.name} sink failing: {self._sink_error}"
        since = self._writing_since
        if since is not None and self._clock() - since > self._config.sink_stall_s:
            return f"{self._sink.name} sink stalled: one batch for {self._clock() - since:.0f} s"
        return None

    async def run(self) -> None:
        """Write batches until :meth:`close` was called and the queue is empty."""
        linger_s = self._config.batch_linger_ms / 1000.0
        max_batch = self._config.batch_max_messages
        while not self._aborted:
            if not self._queue:
                if self._closed and not self._undecided:
                    return
                self._has_work.clear()
                try:
                    await asyncio.wait_for(
                        self._has_work.wait(), self._config.sink_probe_interval_s
                    )
                except TimeoutError:
                    await self._probe()
                continue
            # Linger counts from the oldest queued message: what waited while the
            # previous batch was committing goes out at once, so under load batches
            # grow by themselves and an idle bridge still adds at most linger_ms.
            wait = self._queue[0].arrived + linger_s - self._clock()
            if len(self._queue) < max_batch and wait > 0 and not self._closed:
                self._has_work.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._has_work.wait(), wait)
                continue
            batch = [self._queue.popleft() for _ in range(min(max_batch, len(self._queue)))]
            gone = [e for e in batch if not _live(e)]
            if gone:
                self._give_up(gone)
                batch = [e for e in batch if _live(e)]
                if not batch:
                    continue
            if not await self._write(batch):
                return
        # Aborted: whatever is still queued stays unconfirmed; the source redelivers it.

    async def _probe(self) -> None:
        try:
            checked = await self._in_sink(self._sink.probe)
        except SinkError as exc:
            if self._sink_error is None:
                log.warning("sink probe failed", error=str(exc), error_class=exc.error_class)
            self._sink_error = str(exc)
            return
        if not checked:
            return  # no real check: only a committed batch clears a failure
        if self._sink_error is not None:
            log.info("sink probe succeeded again")
        self._sink_error = None

    async def _write(self, batch: list[_Entry]) -> bool:
        """Commit one batch, retrying until it is in; False when the sink stopped."""
        try:
            return await self._write_until_done(batch)
        finally:
            self._writing_since = None

    async def _write_until_done(self, entries: list[_Entry]) -> bool:
        # The same Batch object on every attempt (the sink may resume on its seq), unless
        # messages left it between attempts (then it is a new batch).
        batch = self._batch(entries)
        records = batch.records
        first_try = self._clock()
        delays = self._backoff.delays()
        sink = self._sink.name
        attempt = 0
        while True:
            if attempt:
                self.metrics.transaction(sink, m.RETRIED)
            attempt += 1
            started = self._writing_since = self._clock()
            try:
                refused = await self._call_sink(batch)
            except SinkStopped:
                self.metrics.transaction(sink, m.ABORTED)
                log.warning("sink stopped; batch left unconfirmed", messages=len(entries))
                return False
            except SinkError as exc:
                self.metrics.transaction(sink, m.ABORTED)
                self.metrics.sink_error(sink, exc.error_class)
                self._sink_error = str(exc)
                self.stats.batch_retries += 1
                delay = next(delays)
                log.warning(
                    "batch not committed, will retry",
                    error=str(exc),
                    error_class=exc.error_class,
                    fatal=exc.fatal,
                    messages=len(entries),
                    retry_in_s=round(delay, 2),
                )
                if exc.fatal and not await self._rebuild():
                    return False
                give_up = self._config.give_up_after_s
                if give_up and self._clock() - first_try > give_up:
                    self._fail_back(entries, f"sink unavailable: {exc}")
                    return True
                await asyncio.sleep(delay)
                # Meanwhile another replica may have committed some of these (their source
                # redelivered them there), or their source gave up on them here.
                kept = await self._still_to_write(entries)
                if not kept:
                    return True
                if len(kept) != len(entries):
                    entries = kept
                    batch = self._batch(entries)
                    records = batch.records
                continue
            if refused:
                self.metrics.transaction(sink, m.ABORTED)
                for item in refused:
                    log.warning(
                        "record refused by the sink, dead-lettering",
                        message_id=entries[item.index].key[1],
                        reason=item.reason,
                    )
                if swap_refused(records, refused, self._router.dead_letter):
                    # Even an empty dead letter was refused (e.g. an invalid dead-letter
                    # topic): a configuration problem. Keep trying, but not in a hot loop.
                    log.error("dead-letter record refused; check routing.dead_letter_topic")
                    await asyncio.sleep(next(delays))
                continue
            self._sink_error = None
            self._settle(entries, records, self._clock() - started)
            return True

    async def _call_sink(self, batch: Batch) -> list[Refused]:
        """``write_batch``, with anything it raises besides SinkError (a bug, or a client
        error it failed to classify) taken as a fatal SinkError: the client is rebuilt
        and the batch sent again, instead of the exception ending the bridge. Nothing of
        such a batch counts as committed."""
        try:
            return await self._in_sink(self._sink.write_batch, batch)
        except SinkError:
            raise
        except Exception as exc:
            log.exception("sink raised an unexpected error; rebuilding its client")
            raise SinkError(
                f"unexpected {type(exc).__name__} from the sink: {exc}"[:300],
                fatal=True,
                error_class=type(exc).__name__,
            ) from exc

    def _batch(self, entries: list[_Entry]) -> Batch:
        def still_wanted() -> str | None:
            # On the sink thread: reads the acks' connection state, changes nothing.
            gone = sum(not _live(e) for e in entries)
            return f"{gone} of its messages will be redelivered by their source" if gone else None

        return Batch(
            [_routed(e) for e in entries],
            keys=[e.key for e in entries],
            still_wanted=still_wanted,
        )

    async def _still_to_write(self, entries: list[_Entry]) -> list[_Entry]:
        """Before a retry: confirm what is committed by now, give up what the source
        redelivers anyway, keep the rest (in order)."""
        await self._current()
        kept, gone = [], []
        for entry in entries:
            if self._ledger.committed(entry.key):
                self._absorb(entry)
            elif not _live(entry):
                gone.append(entry)
            else:
                kept.append(entry)
        if gone:
            self._give_up(gone)
        return kept

    async def _rebuild(self) -> bool:
        while True:
            try:
                await self._in_sink(self._sink.rebuild)
                return True
            except SinkStopped:
                return False
            except SinkError as exc:
                log.error("sink rebuild failed, retrying", error=str(exc))
                await asyncio.sleep(self._config.retry_backoff_max_s)

    def _settle(self, batch: list[_Entry], records: list[OutRecord], took_s: float) -> None:
        metrics, now = self.metrics, self._clock()
        confirmed: Counter[tuple[str, str]] = Counter()
        per_topic: Counter[str] = Counter()
        dead_per_topic: Counter[str] = Counter()
        for entry, record in zip(batch, records, strict=True):
            for ack in entry.delivery.acks:
                ack.confirm()
            msg = entry.delivery.message
            metrics.confirm_latency(msg.source, now - entry.arrived)
            confirmed[(msg.source, msg.topic)] += 1
            per_topic[record.topic] += 1
            if record.dead_letter_reason is not None:
                dead_per_topic[msg.topic] += 1
        self._ledger.settle([e.key for e in batch])
        dead = dead_per_topic.total()
        metrics.committed(
            self._sink.name,
            confirmed=confirmed.items(),
            topics=per_topic.items(),
            dead=dead_per_topic.items(),
            size=len(batch),
            took_s=took_s,
        )
        self.stats.committed += len(batch)
        self.stats.dead_lettered += dead
        self.stats.batches += 1
        self._has_room.set()
        ids: dict[str, object] = {"first_id": batch[0].key[1], "last_id": batch[-1].key[1]}
        if self._log_ids:
            ids["message_ids"] = [e.key[1] for e in batch]
        log.info(
            "batch committed",
            messages=len(batch),
            dead_lettered=dead,
            sink_ms=round(took_s * 1000, 1),
            **ids,
        )
        if self.on_commit is not None:
            self.on_commit(len(batch), took_s)

    def _fail_back(self, batch: list[_Entry], reason: str) -> None:
        """Hand the batch and everything queued behind it back to the source as failed.

        Only called after the sink raised SinkError, i.e. nothing of the batch was
        committed. The queue behind goes too, so no later event of a key overtakes an
        earlier one that is handed back.
        """
        entries = batch + list(self._queue) + list(self._undecided)
        self._queue.clear()
        self._undecided.clear()
        self._ledger.release(e.key for e in entries)
        for entry in entries:
            for ack in entry.delivery.acks:
                ack.fail(reason)
            msg = entry.delivery.message
            self.metrics.failed(msg.source, msg.topic)
        self.stats.failed_back += len(entries)
        self._has_room.set()
        log.error("batch handed back as failed", messages=len(entries), reason=reason)

    async def _in_sink(self, fn: Callable[..., _T], *args: object) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    # -- shutdown ----------------------------------------------------------------

    def close(self) -> None:
        """Stop taking deliveries; :meth:`run` returns once what is queued is committed."""
        self._closed = True
        self._has_work.set()
        self._has_room.set()

    def abort(self) -> None:
        """Make the sink give up at its next retry point; nothing more is confirmed."""
        self._closed = True
        self._aborted = True
        self._sink.stop()
        self._has_work.set()

    async def shutdown(self) -> None:
        """Close the sink (aborting any open transaction) and its thread."""
        try:
            await self._in_sink(self._sink.close)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
