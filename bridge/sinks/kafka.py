"""Kafka sink: one confluent-kafka transactional producer, owned by one thread.

Every call except :meth:`KafkaSink.stop` blocks and must run on the sink's own thread
(the pipeline uses a single-thread executor), so librdkafka's transactional API is never
entered concurrently.

The transaction error contract of librdkafka / confluent-kafka is decided in
:mod:`bridge.sinks.kafka_errors` (pure, unit-tested with librdkafka's codes) and applied
here: retry the same call, abort and let the pipeline re-send the same batch, report the
records refused for good (the pipeline dead-letters them), or raise a fatal SinkError
(the pipeline calls :meth:`rebuild`, whose ``init_transactions`` fences and aborts
whatever the old producer left open).

:meth:`write_batch` returns only after ``commit_transaction()`` returned, i.e. when every
record is durably written and the transaction is committed (``read_committed`` readers
see it once the broker has written its commit markers, milliseconds later). Nothing
else counts as success.

librdkafka's own log lines and client errors (unreachable broker, failed SASL login) go
into the bridge's JSON log (:class:`LibrdkafkaLogger`, ``error_cb``), rate-limited and with
secrets redacted, and the latest one is kept in :attr:`KafkaSink.last_error` for
``/readyz``. With a ``logger`` set, confluent-kafka hands log lines and errors over only
from ``poll()``/``flush()``, so the sink thread polls around every blocking call.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Producer

from bridge.dedup import marker
from bridge.errors import SinkError, SinkStopped
from bridge.model import OutRecord
from bridge.observability.metrics import Metrics
from bridge.pipeline.ports import Batch, Refused
from bridge.retry import Backoff
from bridge.sinks import kafka_errors
from bridge.sinks.kafka_config import KafkaSinkConfig
from bridge.sinks.kafka_errors import Action
from bridge.sinks.kafka_log import (
    VARIABLE_TAIL,
    LibrdkafkaLogger,
    Redactor,
    Throttle,
    one_line,
    sensitive_values,
)

log = structlog.get_logger("bridge.sink.kafka")

#: One ``init_transactions`` call blocks at most this long. The call resumes where it
#: stopped when made again, and between calls the sink polls, which is what delivers
#: librdkafka's log lines and error_cb (so an unreachable broker shows within seconds).
INIT_CALL_TIMEOUT_S = 1.0

#: Between attempts of init/abort that the broker did not acknowledge.
_CONTROL_BACKOFF = Backoff(0.5, 10.0)

#: Errors that say less than one kept in last_error already: a timeout or "all brokers
#: down" follows the transport or authentication error that caused it.
_VAGUE_ERRORS = frozenset({KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN})


class KafkaSink:
    """Transactional writer of record batches. See the module docstring for the contract."""

    name = "kafka"

    def __init__(
        self,
        config: KafkaSinkConfig,
        *,
        producer_factory: Callable[[dict[str, Any]], Producer] = Producer,
        metrics: Metrics,
        probe_topic: str | None = None,
        probe_timeout_s: float = 5.0,
        after_commit_hook: Callable[[], None] | None = None,
        dedup_namespace: str | None = None,
    ) -> None:
        self._config = config
        #: Set (``sink.kafka.dedup.store: kafka``): each transaction also writes the ids
        #: of its messages to the committed-ids topic, see :mod:`bridge.dedup.marker`.
        self._dedup_namespace = dedup_namespace
        #: Called on the sink thread right after each commit returned, before the
        #: pipeline confirms: the crash tests end the process there (devtools).
        self._after_commit_hook = after_commit_hook
        self._factory = producer_factory
        self._metrics = metrics
        self._probe_topic = probe_topic
        self._probe_timeout_s = probe_timeout_s
        self._producer: Producer | None = None
        self._stopping = threading.Event()
        self._record_errors: dict[int, KafkaError] = {}
        self._redact = Redactor(sensitive_values(dict(config.extra)))
        self._throttle = Throttle()
        self._librdkafka_logger = LibrdkafkaLogger(self._redact, self._throttle)
        self.ready = False
        #: The latest client error or failed call, e.g. ``_TRANSPORT: 127.0.0.1:9092/bootstrap:
        #: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms in state
        #: CONNECT)``; None after a successful init, commit or probe. One line, secrets
        #: redacted; read from any thread (``/readyz``).
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------

    def producer_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "bootstrap.servers": self._config.bootstrap_servers,
            "transactional.id": self._config.transactional_id,
            # Same key -> partition mapping as the Java client's default partitioner.
            "partitioner": "murmur2_random",
            "transaction.timeout.ms": self._config.transaction_timeout_ms,
            "linger.ms": 5,
            # We only need to hear about failures; successes are implied by the commit.
            "delivery.report.only.error": True,
            "error_cb": self._on_client_error,
            # librdkafka's log lines into our JSON log instead of raw lines on stderr.
            # They are then delivered by poll()/flush() only: see _serve.
            "logger": self._librdkafka_logger,
        }
        cfg.update(self._config.extra)
        return cfg

    def start(self) -> None:
        """Create the producer and run ``init_transactions`` (fences older instances)."""
        self._producer = self._factory(self.producer_config())
        timeout_s = min(INIT_CALL_TIMEOUT_S, self._config.commit_timeout_s)
        self._retry(lambda p: p.init_transactions(timeout_s), "init")
        self.ready = True
        log.info("kafka producer ready", transactional_id=self._config.transactional_id)

    def rebuild(self) -> None:
        """Replace a producer that raised a fatal error."""
        self.ready = False
        old, self._producer = self._producer, None
        if old is not None:
            # Purge, not flush: nothing of an unusable producer may be delivered.
            try:
                old.purge()
                old.flush(0)
            except (KafkaException, RuntimeError):
                pass
        self.start()

    def probe(self) -> bool:
        """Idle health check: serve pending callbacks, then one metadata round trip."""
        producer = self._require()
        self._serve(producer)
        try:
            producer.list_topics(self._probe_topic, timeout=self._probe_timeout_s)
        except KafkaException as exc:
            self.ready = False
            err: KafkaError = exc.args[0]
            self._serve(producer)  # error_cb may name the cause of a timeout
            self._note(err)
            raise SinkError(
                f"broker did not answer a metadata request: {self._describe(err)}",
                error_class=err.name(),
            ) from None
        self._serve(producer)
        self.ready = True
        self.last_error = None
        return True

    def stop(self) -> None:
        """Thread-safe: make pending retry loops give up with SinkStopped."""
        self._stopping.set()

    def close(self) -> None:
        """Abort an open transaction (never commit on close) and drop the producer."""
        self.ready = False
        producer, self._producer = self._producer, None
        if producer is not None:
            # No open transaction, or the broker is gone: it aborts on transaction timeout.
            with contextlib.suppress(KafkaException):
                producer.abort_transaction(1.0)
            with contextlib.suppress(SinkError, RuntimeError):
                self._serve(producer)  # the last log lines

    # -- the batch ---------------------------------------------------------------

    def write_batch(self, batch: Batch) -> list[Refused]:
        """Write all records in one transaction and commit it.

        Returns ``[]`` when committed. Returns the records refused for good when some
        were (the transaction is then aborted and nothing is committed). Raises SinkError
        when the batch is not committed for another reason. Each error is handled as
        :mod:`bridge.sinks.kafka_errors` classifies it.
        """
        producer = self._require()
        self._serve(producer)
        self._record_errors = {}
        self._begin(producer)
        refused: list[Refused] = []
        for i, rec in enumerate(batch.records):
            err = self._produce(producer, i, rec)
            if err is None:
                continue
            if kafka_errors.on_produce(err) is Action.REFUSE_RECORD:
                refused.append(Refused(i, self._describe(err)))
                continue
            self._note(err)
            self._abort(producer)
            # A record the broker refused for good fails the transaction, and librdkafka
            # then refuses every later produce() with _STATE: report that record, or the
            # same batch would be re-sent (and refused) forever.
            earlier = self._permanent_refusals(producer)
            if earlier:
                return earlier
            raise SinkError(
                f"produce failed: {self._describe(err)}",
                fatal=err.fatal(),
                error_class=err.name(),
            )
        if refused:
            self._abort(producer)
            return refused
        given_up = batch.still_wanted() if batch.still_wanted is not None else None
        if given_up is not None:
            # Taken back before the commit: its source redelivers the message, maybe to
            # another replica, which would write it a second time.
            self._abort(producer)
            raise SinkError(f"batch taken back before commit: {given_up}", error_class="given_up")
        self._produce_markers(producer, batch)
        return self._commit(producer)

    def _produce_markers(self, producer: Producer, batch: Batch) -> None:
        """The batch's message ids into the committed-ids topic, in this transaction:
        readers (other replicas included) see them exactly when they see the records."""
        namespace = self._dedup_namespace
        if namespace is None or not batch.keys:
            return
        by_source: dict[str, list[int]] = {}
        for source, message_id in batch.keys:
            by_source.setdefault(source, []).append(message_id)
        chunks = [
            (source, ids[start : start + marker.MAX_IDS])
            for source, ids in by_source.items()
            for start in range(0, len(ids), marker.MAX_IDS)
        ]
        for number, (source, ids) in enumerate(chunks):
            scope = marker.scope(namespace, source)
            rec = OutRecord(self._config.dedup.topic, scope.encode(), marker.encode(ids), ())
            # Negative indices: delivery errors of markers are not records to dead-letter.
            # Partition 0 whatever the key hashes to: the followers read that one.
            err = self._produce(producer, -1 - number, rec, partition=0)
            if err is None:
                continue
            self._note(err)
            self._abort(producer)
            raise SinkError(
                f"committed-ids marker not written to {rec.topic}: {self._describe(err)}",
                fatal=err.fatal(),
                error_class=err.name(),
            )

    def _begin(self, producer: Producer) -> None:
        try:
            producer.begin_transaction()
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            self._note(err)
            raise SinkError(
                f"begin failed: {self._describe(err)}",
                fatal=kafka_errors.on_begin(err) is Action.FATAL,
                error_class=err.name(),
            ) from None

    def _produce(
        self, producer: Producer, index: int, rec: OutRecord, *, partition: int = -1
    ) -> KafkaError | None:
        """Queue one record in the open transaction; the error if produce() refused it.
        ``partition`` -1: the partitioner's choice (the key's partition)."""
        on_error = functools.partial(self._on_delivery_error, index)
        while True:
            try:
                producer.produce(
                    rec.topic,
                    value=rec.value,
                    key=rec.key,
                    headers=list(rec.headers),
                    partition=partition,
                    on_delivery=on_error,
                )
                return None
            except BufferError:
                # Local queue full: serve delivery reports until there is room.
                self._poll(producer, 0.05)
                self._check_stopping(producer)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                return error

    def _commit(self, producer: Producer) -> list[Refused]:
        while True:
            try:
                producer.commit_transaction(self._config.commit_timeout_s)
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                self._serve(producer)  # error_cb may name the cause of a timeout
                self._note(err)
                action = kafka_errors.on_commit(err)
                if action is Action.FATAL:
                    raise SinkError(
                        f"commit failed fatally: {self._describe(err)}",
                        fatal=True,
                        error_class=err.name(),
                    ) from None
                if action is Action.ABORT_AND_RESEND:
                    self._abort(producer)
                    refused = self._permanent_refusals(producer)
                    if refused:
                        return refused
                    raise SinkError(
                        f"transaction aborted: {self._describe(err)}", error_class=err.name()
                    ) from None
                if action is Action.FAIL:
                    self._abort(producer)
                    raise SinkError(
                        f"commit failed: {self._describe(err)}", error_class=err.name()
                    ) from None
                # RETRY: the outcome is not known yet (e.g. broker down); only another
                # commit call may resolve it. Aborting here could drop a commit in progress.
                self.ready = False
                self._metrics.sink_error(self.name, err.name())
                log.warning("commit not acknowledged yet, retrying", error=self.last_error)
                self._check_stopping(producer, abort=False)
                continue
            if self._after_commit_hook is not None:
                self._after_commit_hook()
            self._serve(producer)
            self.ready = True
            self.last_error = None
            return []

    # -- helpers -----------------------------------------------------------------

    def _require(self) -> Producer:
        if self._producer is None:
            raise SinkError("kafka producer is not started", fatal=True, error_class="not_started")
        return self._producer

    def _describe(self, err: KafkaError) -> str:
        return one_line(self._redact(f"{err.name()}: {err.str()}"))

    def _note(self, err: KafkaError) -> None:
        """Keep ``err`` as last_error, unless it only restates the one kept already."""
        if err.code() in _VAGUE_ERRORS and self.last_error is not None:
            return
        self.last_error = self._describe(err)

    def _serve(self, producer: Producer) -> None:
        """Hand over what librdkafka queued for the application: log lines (with a
        ``logger`` set they wait in this queue), error_cb calls and delivery reports."""
        self._poll(producer, 0)

    def _poll(self, producer: Producer, timeout_s: float) -> None:
        """``poll`` raises when the producer hit a fatal error meanwhile (e.g. the broker
        aborted a transaction that outlived transaction.timeout.ms while it was away):
        the producer must then be rebuilt, which a fatal SinkError tells the pipeline."""
        try:
            producer.poll(timeout_s)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            self._note(err)
            raise SinkError(
                f"kafka producer failed: {self._describe(err)}",
                fatal=True,
                error_class=err.name(),
            ) from None

    def _permanent_refusals(self, producer: Producer) -> list[Refused]:
        """The records whose delivery reports say the broker refused them for good."""
        self._serve(producer)  # delivery reports arrive through poll
        permanent = [
            (i, e)
            for i, e in sorted(self._record_errors.items())
            if kafka_errors.is_permanent_record_error(e)
        ]
        for i, e in permanent:
            if i < 0:  # a marker: the committed-ids topic refuses it (its configuration)
                raise SinkError(
                    f"committed-ids topic {self._config.dedup.topic} refused a marker: "
                    f"{self._describe(e)}",
                    error_class=e.name(),
                )
        return [Refused(i, self._describe(e)) for i, e in permanent]

    def _on_delivery_error(self, index: int, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._record_errors[index] = err

    def _on_client_error(self, err: KafkaError) -> None:
        # Broker connectivity, authentication and the like: addresses and librdkafka's
        # text, no record content; secret values are redacted all the same.
        self._metrics.sink_error(self.name, err.name())
        if err.code() == KafkaError._ALL_BROKERS_DOWN or err.fatal():
            self.ready = False
        self._note(err)
        described = self._describe(err)
        # Keyed on the whole text: a long one (a TLS failure) is cut before its variable
        # tail, which would make every repetition look new.
        left_out = self._throttle.admit(("error", err.name(), VARIABLE_TAIL.sub("", err.str())))
        if left_out is None:
            return
        more = {"repeated": left_out} if left_out else {}
        log.warning(
            "kafka client error",
            error=described,
            error_class=err.name(),
            fatal=err.fatal(),
            **more,
        )

    def _check_stopping(self, producer: Producer, *, abort: bool = True) -> None:
        if self._stopping.is_set():
            if abort:
                self._abort(producer, give_up=True)
            raise SinkStopped("sink stopping; batch not committed")

    def _abort(self, producer: Producer, *, give_up: bool = False) -> None:
        """Abort the open transaction, retrying while the broker is unreachable."""
        while True:
            try:
                producer.abort_transaction(self._config.commit_timeout_s)
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                self._serve(producer)
                self._note(err)
                if kafka_errors.on_control(err) is Action.FATAL:
                    raise SinkError(
                        f"abort failed: {self._describe(err)}",
                        fatal=True,
                        error_class=err.name(),
                    ) from None
                if give_up or self._stopping.is_set():
                    # The broker aborts the transaction itself after transaction.timeout.ms.
                    raise SinkStopped("sink stopping during abort") from None
                self.ready = False
                self._metrics.sink_error(self.name, err.name())
                log.warning("abort not acknowledged yet, retrying", error=self.last_error)

    def _retry(self, fn: Callable[[Producer], None], what: str) -> None:
        """Call ``fn`` until it went through, serving callbacks between calls."""
        delays = _CONTROL_BACKOFF.delays()
        while True:
            producer = self._require()
            try:
                fn(producer)
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                self._serve(producer)  # error_cb names the cause of a timeout
                self._note(err)
                if kafka_errors.on_control(err) is Action.FATAL:
                    raise SinkError(
                        f"{what} failed: {self._describe(err)}",
                        fatal=True,
                        error_class=err.name(),
                    ) from None
                left_out = self._throttle.admit(("retry", what, err.name()))
                if left_out is not None:
                    more = {"repeated": left_out} if left_out else {}
                    log.warning(
                        f"kafka {what} not acknowledged yet, retrying",
                        error=self.last_error,
                        **more,
                    )
                if err.code() == KafkaError._TIMED_OUT:
                    # Still in progress in librdkafka: the next call resumes it (the short
                    # pause only guards against a hot loop should it return at once).
                    self._pause(producer, 0.05, what)
                else:
                    self._pause(producer, next(delays), what)
                continue
            self._serve(producer)
            self.last_error = None
            return

    def _pause(self, producer: Producer, seconds: float, what: str) -> None:
        """Wait ``seconds`` while serving callbacks; SinkStopped once stop() was called."""
        deadline = time.monotonic() + seconds
        while True:
            if self._stopping.is_set():
                raise SinkStopped(f"sink stopping during {what}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._poll(producer, min(remaining, 0.1))
