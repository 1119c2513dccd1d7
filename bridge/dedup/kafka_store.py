"""The durable committed-ids store: every replica follows the committed-ids topic.

The Kafka sink writes one marker per source and transaction (:mod:`bridge.dedup.marker`)
into the topic, inside the transaction of the records. Each bridge follows the topic
with a ``read_committed`` consumer on a thread of its own and keeps the ids of its app
and group for the window in an :class:`~bridge.dedup.window.IdWindow` (12 bytes per id).
So an id is known to every replica exactly when its records are visible to readers, and
never for an aborted batch.

Deliveries are decided only once the store is current as of their arrival (see
:mod:`bridge.dedup.fence`): the pipeline takes a :meth:`ticket` per delivery and decides it
once :meth:`listen`'s callback says the ticket was served. Start-up reads the topic from
its beginning to the high watermark found at start before the source starts; ``/readyz``
says so meanwhile, with progress in the log.

A replica that died with an open transaction holds the store (and every read_committed
reader) back until its transaction ends: at once when it restarts under the same
``transactional.id`` (fencing aborts it), else after ``transaction.timeout.ms`` plus the
broker's abort check interval. Deliveries wait meanwhile; they are never guessed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from bridge.dedup import marker
from bridge.dedup.fence import Fences
from bridge.dedup.kafka_topic import ensure_topic
from bridge.dedup.window import IdWindow
from bridge.errors import SinkError
from bridge.numbers import INT64_MAX, INT64_MIN
from bridge.observability.metrics import Metrics
from bridge.pipeline.ledger import LruCommittedIds
from bridge.pipeline.ports import MessageKey
from bridge.retry import Backoff
from bridge.sinks.kafka_config import KafkaSinkConfig
from bridge.sinks.kafka_log import (
    VARIABLE_TAIL,
    LibrdkafkaLogger,
    Redactor,
    Throttle,
    one_line,
    sensitive_values,
)

log = structlog.get_logger("bridge.dedup")

#: Producer-only librdkafka properties of ``sink.kafka.extra`` that a consumer would
#: warn about; everything else (security, sasl, ssl, socket, ...) is shared.
_PRODUCER_ONLY = (
    "acks",
    "batch.",
    "compression.",
    "delivery.",
    "enable.idempotence",
    "linger.ms",
    "max.in.flight",
    "message.",
    "partitioner",
    "queue.buffering.",
    "request.required.acks",
    "request.timeout.ms",
    "retries",
    "sticky.",
    "transaction",
)
#: Committed ids outside int64 remembered in memory (at least once across crashes).
WIDE_IDS_REMEMBERED = 200_000
#: A delivery that waited this long makes /readyz name the store.
BEHIND_PROBLEM_S = 30.0
#: How often ids that left the window are dropped.
EXPIRE_EVERY_S = 60.0
#: Progress lines while catching up at start.
PROGRESS_EVERY_S = 5.0
#: How long one follower read blocks while deliveries wait for a ticket, and while none do.
_BUSY_WAIT_S = 0.002
_IDLE_WAIT_S = 0.05


def consumer_settings(config: KafkaSinkConfig) -> dict[str, Any]:
    """The sink's connection settings (security, SASL, ...) without producer-only ones."""
    shared = {
        key: value
        for key, value in config.extra.items()
        if not any(key == p or key.startswith(p) for p in _PRODUCER_ONLY)
    }
    return {"bootstrap.servers": config.bootstrap_servers, **shared}


class KafkaCommittedIds:
    """:class:`~bridge.pipeline.ports.CommittedIds` backed by the committed-ids topic."""

    def __init__(
        self,
        config: KafkaSinkConfig,
        namespace: str,
        *,
        metrics: Metrics,
        consumer_factory: Callable[[dict[str, Any]], Consumer] = Consumer,
        admin_factory: Callable[[dict[str, Any]], AdminClient] = AdminClient,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._topic = config.dedup.topic
        self._tp = TopicPartition(self._topic, 0)
        self._namespace = namespace
        #: Marker keys of this namespace start with one of these (see marker.scope).
        self._prefixes = (f"{namespace}|".encode(), f"{namespace}/".encode())
        self._window_s = config.dedup.window_h * 3600.0
        self._metrics = metrics
        self._consumer_factory = consumer_factory
        self._admin_factory = admin_factory
        self._wall = wall_clock
        self._redact = Redactor(sensitive_values(dict(config.extra)))
        #: Same line over and over while the broker is away: one per interval, counted.
        self._throttle = Throttle()
        self._logger = LibrdkafkaLogger(self._redact, self._throttle)
        #: source name -> its ids (written by the follower thread, read by the loop).
        self._windows: dict[str, IdWindow] = {}
        #: Committed ids outside int64 (no marker holds them): this process only.
        self._wide = LruCommittedIds(WIDE_IDS_REMEMBERED)
        self._fences = Fences()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: Callable[[int], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()
        #: Why the store is not current (catching up, or an error), for /readyz.
        self._problem: str | None = "committed-ids store starting"
        #: Follower thread state, kept when it starts again after a failure: the
        #: catch-up is done; the (low, high) offsets found at start; the next offset to
        #: read; the outstanding fence (ticket, high watermark to reach).
        self._caught_up = False
        self._span: tuple[int, int] | None = None
        self._position: int | None = None
        self._target: tuple[int, int | None] | None = None
        #: Monotonic time the oldest unserved ticket was taken (None: none pending).
        self._waiting_since: float | None = None
        self.error: BaseException | None = None
        metrics.dedup_ids.set_function(lambda: sum(len(w) for w in list(self._windows.values())))
        metrics.dedup_bytes.set_function(
            lambda: sum(w.nbytes for w in list(self._windows.values()))
        )
        metrics.dedup_behind.set_function(self._behind_s)

    # -- the loop's side -------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) != 2:
            return False
        window = self._windows.get(key[0])
        return (window is not None and key[1] in window) or key in self._wide

    def add_all(self, keys: Iterable[MessageKey]) -> None:
        """Committed ids come back through the topic, to every replica alike, and a
        delivery is decided only after the store read past its arrival. Only ids that do
        not fit a marker (ONS ids of 128 bits) are remembered here, by this process."""
        wide = [key for key in keys if not INT64_MIN <= key[1] <= INT64_MAX]
        if wide:
            self._wide.add_all(wide)

    def ticket(self) -> int:
        return self._fences.ticket()

    def listen(self, callback: Callable[[int], None]) -> None:
        """``callback(ticket)`` on the calling thread's event loop whenever every delivery
        holding ``ticket`` or a lower one can be decided."""
        self._loop = asyncio.get_running_loop()
        self._listener = callback

    def problem(self) -> str | None:
        if self._problem is not None:
            return self._problem
        behind = self._behind_s()
        if behind > BEHIND_PROBLEM_S:
            return (
                f"committed-ids store behind: deliveries have waited {behind:.0f} s for "
                f"{self._topic} (an open transaction, e.g. of a replica that died and was "
                "not restarted, holds read_committed readers until it times out)"
            )
        return None

    def start(self) -> None:
        """Start following the topic (a thread); :meth:`wait_ready` waits for catch-up."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="dedup-follower", daemon=True)
        self._thread.start()

    async def wait_ready(self) -> None:
        """Until the topic was read up to its end as of start (raises what stopped it)."""
        await self._ready.wait()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _behind_s(self) -> float:
        since = self._waiting_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def _call_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # RuntimeError: the loop closed meanwhile (shutdown).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)

    # -- the follower thread ---------------------------------------------------------

    def _client_settings(self) -> dict[str, Any]:
        return {
            **consumer_settings(self._config),
            "logger": self._logger,
            "error_cb": self._on_client_error,
        }

    def _run(self) -> None:
        """Follow until closed. A topic that cannot serve ends the start (wait_ready
        raises it); any other failure is logged and the follower starts again where it
        was, with fresh clients: deliveries wait meanwhile, none is guessed."""
        delays = Backoff(1.0, 30.0).delays()
        while not self._stop.is_set():
            try:
                self._follow()
                return
            except SinkError as exc:
                log.error("committed-ids store cannot start", error=str(exc))
                self.error = exc
                self._problem = str(exc)
                self._call_loop(self._ready.set)
                return
            except Exception as exc:
                log.exception("committed-ids store failed; following again")
                self._problem = f"committed-ids store failed: {type(exc).__name__}"
                self._stop.wait(next(delays))

    def _follow(self) -> None:
        settings = self._client_settings()
        admin = self._admin_factory(settings)
        self._retry(lambda: ensure_topic(admin, self._topic, int(self._window_s * 1000)))
        group = f"tmc-bridge-dedup-{uuid.uuid4().hex[:12]}"  # never committed to
        watermarks = self._consumer_factory(
            {**settings, "group.id": group, "isolation.level": "read_uncommitted"}
        )
        follower = self._consumer_factory(
            {
                **settings,
                "group.id": group,
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                # Deliveries wait for the follower: answer fetches soon after new data.
                "fetch.wait.max.ms": 10,
            }
        )
        try:
            self._read(watermarks, follower)
        finally:
            follower.close()
            watermarks.close()

    def _read(self, watermarks: Consumer, follower: Consumer) -> None:
        if self._span is None:
            self._span = self._retry(lambda: self._watermarks(watermarks))
            log.info(
                "committed-ids store catching up",
                topic=self._topic,
                records=self._span[1] - self._span[0],
                window_h=self._config.dedup.window_h,
            )
        low, start_end = self._span
        position = low if self._position is None else self._position
        follower.assign([TopicPartition(self._topic, 0, position)])
        started = last_progress = last_expire = time.monotonic()
        ready = self._caught_up
        if ready:
            self._problem = None  # following again after a failure
        while not self._stop.is_set():
            # consume() blocks for its whole timeout unless the batch fills, and markers
            # come a few per transaction: while a delivery waits for its ticket, block only
            # briefly, so the ticket is taken and served within milliseconds (it is most
            # of the bridge's push-to-confirm latency at a moderate rate otherwise).
            busy = ready and (self._target is not None or self._fences.waiting())
            for msg in follower.consume(500, _BUSY_WAIT_S if busy else _IDLE_WAIT_S):
                self._apply(msg)
            found = follower.position([self._tp])[0].offset
            if found >= 0:
                position = max(position, found)
                self._position = position
            now = time.monotonic()
            if not ready:
                if position >= start_end:
                    ready = self._caught_up = True
                    self._problem = None
                    log.info(
                        "committed-ids store caught up",
                        records=start_end - low,
                        ids=sum(len(w) for w in self._windows.values()),
                        seconds=round(now - started, 2),
                    )
                    self._call_loop(self._ready.set)
                elif now - last_progress >= PROGRESS_EVERY_S:
                    last_progress = now
                    self._problem = (
                        f"committed-ids store catching up: {position - low} of "
                        f"{start_end - low} records read"
                    )
                    log.info(
                        "committed-ids store catching up",
                        read=position - low,
                        of=start_end - low,
                        ids=sum(len(w) for w in self._windows.values()),
                    )
                continue
            if self._target is None:
                taken = self._fences.take()
                if taken is not None:
                    self._waiting_since = now
                    # Kept before the query: should it fail, the follower starts again
                    # and queries for this ticket then (a later query serves it too).
                    self._target = (taken, None)
            target = self._target
            if target is not None and target[1] is None:
                end = self._retry(lambda: self._watermarks(watermarks))[1]
                target = self._target = (target[0], end)
            if target is not None and target[1] is not None and position >= target[1]:
                self._waiting_since = None
                self._target = None
                self._serve(target[0])
            if now - last_expire >= EXPIRE_EVERY_S:
                last_expire = now
                for window in list(self._windows.values()):
                    window.expire(self._wall())

    def _watermarks(self, consumer: Consumer) -> tuple[int, int]:
        low, high = consumer.get_watermark_offsets(self._tp, timeout=5.0)
        return int(low), int(high)

    def _apply(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                self._on_client_error(err)
            return
        key = msg.key()
        if key is None or not key.startswith(self._prefixes):
            self._metrics.dedup_records.labels("other").inc()
            return
        try:
            found = marker.decode(key, msg.value())
        except marker.MarkerError as exc:
            self._metrics.dedup_records.labels("unreadable").inc()
            log.warning("committed-ids record skipped", offset=msg.offset(), reason=str(exc))
            return
        source = marker.source_of(self._namespace, found.scope)
        if source is None:
            self._metrics.dedup_records.labels("other").inc()
            return
        window = self._windows.get(source)
        if window is None:
            window = self._windows[source] = IdWindow(self._window_s)
        _, timestamp_ms = msg.timestamp()
        at_s = timestamp_ms / 1000.0 if timestamp_ms > 0 else self._wall()
        window.add_packed(found.packed, at_s)
        self._metrics.dedup_records.labels("applied").inc()

    def _serve(self, ticket: int) -> None:
        listener = self._listener
        if listener is not None:
            self._call_loop(listener, ticket)

    def _retry(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` until it went through; the store cannot answer without the broker."""
        delays = Backoff(0.2, 5.0).delays()
        failed = False
        while True:
            try:
                result = fn()
            except KafkaException as exc:
                failed = True
                if self._stop.is_set():
                    raise
                err: KafkaError = exc.args[0]
                self._problem = f"committed-ids store: {self._describe(err)}"
                left_out = self._throttle.admit(("retry", err.name()))
                if left_out is not None:
                    more = {"repeated": left_out} if left_out else {}
                    log.warning(
                        "committed-ids store: broker did not answer", error=self._problem, **more
                    )
                self._stop.wait(next(delays))
                continue
            if failed and self._caught_up:
                self._problem = None  # answering again
            return result

    def _describe(self, err: KafkaError) -> str:
        return one_line(self._redact(f"{err.name()}: {err.str()}"))

    def _on_client_error(self, err: KafkaError) -> None:
        self._metrics.sink_error("kafka-dedup", err.name())
        described = self._describe(err)
        left_out = self._throttle.admit(("error", err.name(), VARIABLE_TAIL.sub("", described)))
        if left_out is None:
            return
        more = {"repeated": left_out} if left_out else {}
        log.warning("committed-ids store client error", error=described, **more)
