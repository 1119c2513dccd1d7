"""Kafka sink: one confluent-kafka transactional producer, owned by one thread.

Every call except :meth:`KafkaSink.stop` blocks and must run on the sink's own thread
(the pipeline uses a single-thread executor), so librdkafka's transactional API is never
entered concurrently.

The transaction error contract of librdkafka / confluent-kafka is applied literally:

* ``retriable()``         -> call the same method again (commit/abort/begin/init).
* ``txn_requires_abort()`` -> abort; the pipeline re-sends the *same* batch in the same
  order. Records the broker refused for good (too large, invalid) are reported back so
  the pipeline can dead-letter them instead.
* ``fatal()``             -> the producer is unusable: :class:`SinkError` with ``fatal``;
  the pipeline calls :meth:`rebuild`, whose ``init_transactions`` fences and aborts
  whatever the old producer left open.

:meth:`write_batch` returns only after ``commit_transaction()`` returned, i.e. when every
record is durably written and visible to ``read_committed`` consumers. Nothing else
counts as success.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Producer

from bridge.config import KafkaSinkConfig
from bridge.errors import SinkError, SinkStopped
from bridge.model import OutRecord
from bridge.observability.metrics import Metrics

log = structlog.get_logger("bridge.sink.kafka")

#: Per-record errors that no retry can fix: the record goes to the dead-letter topic.
PERMANENT_RECORD_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_MSG,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError._INVALID_ARG,
    }
)

#: Rejections: (index in the batch, reason).
Rejections = list[tuple[int, str]]


def _describe(err: KafkaError) -> str:
    return f"{err.name()}: {err.str()}"


class KafkaSink:
    """Transactional writer of record batches. See the module docstring for the contract."""

    name = "kafka"

    def __init__(
        self,
        config: KafkaSinkConfig,
        *,
        producer_factory: Callable[[dict[str, Any]], Producer] = Producer,
        metrics: Metrics | None = None,
        probe_topic: str | None = None,
        probe_timeout_s: float = 5.0,
    ) -> None:
        self._config = config
        self._factory = producer_factory
        self._metrics = metrics or Metrics()
        self._probe_topic = probe_topic
        self._probe_timeout_s = probe_timeout_s
        self._producer: Producer | None = None
        self._stopping = threading.Event()
        self._record_errors: dict[int, KafkaError] = {}
        self.ready = False

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
        }
        cfg.update(self._config.extra)
        return cfg

    def start(self) -> None:
        """Create the producer and run ``init_transactions`` (fences older instances)."""
        self._producer = self._factory(self.producer_config())
        self._retry(lambda p: p.init_transactions(self._config.commit_timeout_s), "init")
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
        producer.poll(0)
        try:
            producer.list_topics(self._probe_topic, timeout=self._probe_timeout_s)
        except KafkaException as exc:
            self.ready = False
            err: KafkaError = exc.args[0]
            raise SinkError(
                f"broker did not answer a metadata request: {_describe(err)}",
                error_class=err.name(),
            ) from None
        self.ready = True
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

    # -- the batch ---------------------------------------------------------------

    def write_batch(self, records: Sequence[OutRecord]) -> Rejections:
        """Write all records in one transaction and commit it.

        Returns ``[]`` when committed. Returns the refused records (index, reason) when
        some were refused for good; the transaction is then aborted and nothing is
        committed. Raises SinkError when the batch is not committed for another reason.
        """
        producer = self._require()
        self._record_errors = {}
        self._call(producer.begin_transaction, "begin")
        local: Rejections = []
        for i, rec in enumerate(records):
            on_error = functools.partial(self._on_delivery_error, i)
            while True:
                try:
                    producer.produce(
                        rec.topic,
                        value=rec.value,
                        key=rec.key,
                        headers=list(rec.headers),
                        on_delivery=on_error,
                    )
                    break
                except BufferError:
                    # Local queue full: serve delivery reports until there is room.
                    producer.poll(0.05)
                    self._check_stopping(producer)
                except KafkaException as exc:
                    err: KafkaError = exc.args[0]
                    if err.code() in PERMANENT_RECORD_ERRORS:
                        local.append((i, _describe(err)))
                        break
                    self._abort(producer)
                    raise SinkError(
                        f"produce failed: {_describe(err)}",
                        fatal=err.fatal(),
                        error_class=err.name(),
                    ) from None
        if local:
            self._abort(producer)
            return local
        while True:
            try:
                producer.commit_transaction(self._config.commit_timeout_s)
                self.ready = True
                return []
            except KafkaException as exc:
                err = exc.args[0]
                if err.fatal():
                    raise SinkError(
                        f"commit failed fatally: {_describe(err)}",
                        fatal=True,
                        error_class=err.name(),
                    ) from None
                if err.txn_requires_abort():
                    self._abort(producer)
                    refused = [
                        (i, _describe(e))
                        for i, e in sorted(self._record_errors.items())
                        if e.code() in PERMANENT_RECORD_ERRORS
                    ]
                    if refused:
                        return refused
                    raise SinkError(
                        f"transaction aborted: {_describe(err)}", error_class=err.name()
                    ) from None
                if not err.retriable():
                    self._abort(producer)
                    raise SinkError(
                        f"commit failed: {_describe(err)}", error_class=err.name()
                    ) from None
                # Outcome not known yet (e.g. broker down): only another commit call may
                # resolve it. Aborting here could drop a commit that is in progress.
                self.ready = False
                self._metrics.sink_error(self.name, err.name())
                log.warning("commit not acknowledged yet, retrying", error=_describe(err))
                self._check_stopping(producer, abort=False)

    # -- helpers -----------------------------------------------------------------

    def _require(self) -> Producer:
        if self._producer is None:
            raise SinkError("kafka producer is not started", fatal=True, error_class="not_started")
        return self._producer

    def _on_delivery_error(self, index: int, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._record_errors[index] = err

    def _on_client_error(self, err: KafkaError) -> None:
        # Broker connectivity and the like. Addresses only; no record content, no secrets.
        self._metrics.sink_error(self.name, err.name())
        if err.code() == KafkaError._ALL_BROKERS_DOWN or err.fatal():
            self.ready = False
        log.warning("kafka client error", error=_describe(err), fatal=err.fatal())

    def _check_stopping(self, producer: Producer, *, abort: bool = True) -> None:
        if self._stopping.is_set():
            if abort:
                self._abort(producer, give_up=True)
            raise SinkStopped("sink stopping; batch not committed")

    def _call(self, fn: Callable[[], None], what: str) -> None:
        try:
            fn()
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            raise SinkError(
                f"{what} failed: {_describe(err)}",
                fatal=err.fatal() or not err.retriable(),
                error_class=err.name(),
            ) from None

    def _abort(self, producer: Producer, *, give_up: bool = False) -> None:
        """Abort the open transaction, retrying while the broker is unreachable."""
        while True:
            try:
                producer.abort_transaction(self._config.commit_timeout_s)
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.fatal() or not err.retriable():
                    raise SinkError(
                        f"abort failed: {_describe(err)}", fatal=True, error_class=err.name()
                    ) from None
                if give_up or self._stopping.is_set():
                    # The broker aborts the transaction itself after transaction.timeout.ms.
                    raise SinkStopped("sink stopping during abort") from None
                self.ready = False
                self._metrics.sink_error(self.name, err.name())
                log.warning("abort not acknowledged yet, retrying", error=_describe(err))

    def _retry(self, fn: Callable[[Producer], None], what: str) -> None:
        backoff = 0.5
        while True:
            producer = self._require()
            try:
                fn(producer)
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.fatal() or not err.retriable():
                    raise SinkError(
                        f"{what} failed: {_describe(err)}", fatal=True, error_class=err.name()
                    ) from None
                log.warning(f"kafka {what} not acknowledged yet, retrying", error=_describe(err))
            if self._stopping.wait(backoff):
                raise SinkStopped(f"sink stopping during {what}")
            backoff = min(backoff * 2, 10.0)
