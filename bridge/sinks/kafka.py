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

librdkafka's own log lines and client errors (unreachable broker, failed SASL login) go
into the bridge's JSON log (:class:`LibrdkafkaLogger`, ``error_cb``), rate-limited and with
secrets redacted, and the latest one is kept in :attr:`KafkaSink.last_error` for
``/readyz``. With a ``logger`` set, confluent-kafka hands log lines and errors over only
from ``poll()``/``flush()``, so the sink thread polls around every blocking call.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Producer

from bridge.config import KafkaSinkConfig
from bridge.errors import SinkError, SinkStopped
from bridge.model import OutRecord
from bridge.observability.metrics import Metrics

log = structlog.get_logger("bridge.sink.kafka")
#: librdkafka's own log lines (see :class:`LibrdkafkaLogger`).
rdlog = structlog.get_logger("bridge.sink.librdkafka")

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


#: How often one kind of client error or librdkafka line may be logged. librdkafka
#: reports a refused connection or a failed SASL login on every reconnect (several times
#: a second, each both as a log line and an error_cb), so identical lines are let through
#: once per window and the next one after it says how many were left out (``repeated``).
THROTTLE_WINDOW_S = 30.0

#: One ``init_transactions`` call blocks at most this long. The call resumes where it
#: stopped when made again, and between calls the sink polls, which is what delivers
#: librdkafka's log lines and error_cb (so an unreachable broker shows within seconds).
INIT_CALL_TIMEOUT_S = 1.0

#: Error texts (last_error, SinkError messages) are cut to this many characters.
MAX_ERROR_CHARS = 300

#: librdkafka setting names whose values are secrets. librdkafka prints such values as
#: ``[redacted]`` itself (checked with debug=all); the bridge redacts them again anyway.
_SENSITIVE_NAME = re.compile(r"password|secret|passphrase|key\.pem|oauthbearer\.config")

#: The variable tail librdkafka appends to a broker failure, e.g.
#: ``(after 0ms in state CONNECT, 3 identical error(s) suppressed)``: not part of the
#: throttling key, or no two lines would ever be identical.
_VARIABLE_TAIL = re.compile(
    r"\s*\(after \d+ms in state [A-Z_]+(?:, \d+ identical error\(s\) suppressed)?\)"
)

#: ``[thrd:sasl_plaintext://127.0.0.1:9093/bootstrap]: <text>``, the prefix of each line.
_THREAD_PREFIX = re.compile(r"\[thrd:(?P<thread>[^\]]*)\]:\s*(?P<text>.*)", re.DOTALL)


def sensitive_values(settings: dict[str, Any]) -> list[str]:
    """Values of the settings whose names mark them as secrets (e.g. ``sasl.password``)."""
    return [
        str(value)
        for key, value in settings.items()
        if _SENSITIVE_NAME.search(key.lower()) and str(value)
    ]


class Redactor:
    """Replaces known secret values in a text by ``[redacted]``."""

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        # Longest first, so a secret containing another one is replaced whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


class Throttle:
    """Lets the first of identical lines through, then at most one per ``window_s``.

    :meth:`admit` returns None for a line to leave out, else how many identical lines were
    left out since the last one let through. Keys are bounded (oldest forgotten first).
    Thread-safe, although all callers run on the sink thread (they are served by poll).
    """

    def __init__(
        self,
        window_s: float = THROTTLE_WINDOW_S,
        *,
        max_keys: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window_s = window_s
        self._max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        #: key -> [time last let through, lines left out since]
        self._seen: OrderedDict[Hashable, list[float]] = OrderedDict()

    def admit(self, key: Hashable) -> int | None:
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self._window_s:
                seen[1] += 1
                return None
            left_out = int(seen[1]) if seen is not None else 0
            self._seen[key] = [now, 0]
            self._seen.move_to_end(key)
            while len(self._seen) > self._max_keys:
                self._seen.popitem(last=False)
            return left_out


def _std_level(level: int) -> int:
    """The nearest standard logging level at or below ``level`` (structlog needs one)."""
    for std in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if level >= std:
            return std
    return logging.DEBUG


class LibrdkafkaLogger:
    """The producer's ``logger`` setting: librdkafka's log lines as structlog JSON lines.

    Without it librdkafka prints raw ``%3|1700000000.123|FAIL|rdkafka#producer-1| ...``
    lines to stderr. confluent-kafka calls ``logger.log(level, "%s [%s] %s", facility,
    client, text)`` (see ``log_cb`` in its ``confluent_kafka.c``) with librdkafka's
    syslog level already mapped to a logging level: 0-2 (emerg, alert, crit) CRITICAL,
    3 (err) ERROR, 4 (warning) WARNING, 5-6 (notice, info) INFO, 7 (debug) DEBUG. Only
    ``log`` is ever called, so this is a small object with that method rather than a
    ``logging.Logger``: the stdlib route (``ProcessorFormatter`` in
    :mod:`bridge.observability.logging`) would keep only the formatted text and drop the
    facility, client and thread fields this logger adds.

    A JSON line from it, e.g. for a wrong SASL password (logged at debug, see below)::

        {"facility": "FAIL", "client": "rdkafka#producer-1",
         "thread": "sasl_plaintext://10.0.0.5:9093/bootstrap",
         "event": "sasl_plaintext://10.0.0.5:9093/bootstrap: SASL authentication error:
         Authentication failed: Invalid username or password (after 302ms in state
         AUTH_REQ)", "level": "debug", "logger": "bridge.sink.librdkafka", ...}

    Decisions:

    * ``FAIL`` lines at error level are logged at debug: librdkafka sends each of them to
      ``error_cb`` too (``rd_kafka_broker_set_error``), where the bridge logs it once, with
      the error name (``_TRANSPORT``, ``_AUTHENTICATION``) and the metric.
    * Identical lines (below debug) are throttled, see :data:`THROTTLE_WINDOW_S`.
    * Values of secret settings are redacted (librdkafka does not print them anyway).
    * It never raises: an exception here would surface from ``poll()``.
    """

    name = "bridge.sink.librdkafka"

    def __init__(self, redact: Redactor | None = None, throttle: Throttle | None = None) -> None:
        self._redact = redact or Redactor()
        self._throttle = throttle or Throttle()

    def log(self, level: int, msg: str, *args: object, **_kwargs: object) -> None:
        try:
            self._log(level, msg, args)
        except Exception:  # a log line must never break poll()
            with contextlib.suppress(Exception):
                rdlog.warning("unreadable librdkafka log line")

    def _log(self, level: int, msg: str, args: tuple[object, ...]) -> None:
        fields: dict[str, object] = {}
        if len(args) == 3 and msg == "%s [%s] %s":
            facility, client, text = (str(a) for a in args)
            fields["facility"] = facility
            fields["client"] = client
        else:  # not the shape confluent-kafka uses today; keep the text
            facility, text = "", (msg % args if args else msg)
        match = _THREAD_PREFIX.match(text)
        if match:
            fields["thread"] = match["thread"]
            text = match["text"]
        level = _std_level(level)
        if level > logging.DEBUG:
            left_out = self._throttle.admit(("log", facility, _VARIABLE_TAIL.sub("", text)))
            if left_out is None:
                return
            if left_out:
                fields["repeated"] = left_out
        if facility == "FAIL" and level >= logging.ERROR:
            level = logging.DEBUG  # error_cb reports the same failure, with its name
        rdlog.log(level, self._redact(text), **fields)


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
            with contextlib.suppress(KafkaException, RuntimeError):
                self._serve(producer)  # the last log lines

    # -- the batch ---------------------------------------------------------------

    def write_batch(self, records: Sequence[OutRecord]) -> Rejections:
        """Write all records in one transaction and commit it.

        Returns ``[]`` when committed. Returns the refused records (index, reason) when
        some were refused for good; the transaction is then aborted and nothing is
        committed. Raises SinkError when the batch is not committed for another reason.
        """
        producer = self._require()
        self._serve(producer)
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
                        local.append((i, self._describe(err)))
                        break
                    self._note(err)
                    self._abort(producer)
                    raise SinkError(
                        f"produce failed: {self._describe(err)}",
                        fatal=err.fatal(),
                        error_class=err.name(),
                    ) from None
        if local:
            self._abort(producer)
            return local
        while True:
            try:
                producer.commit_transaction(self._config.commit_timeout_s)
            except KafkaException as exc:
                err = exc.args[0]
                self._serve(producer)  # error_cb may name the cause of a timeout
                self._note(err)
                if err.fatal():
                    raise SinkError(
                        f"commit failed fatally: {self._describe(err)}",
                        fatal=True,
                        error_class=err.name(),
                    ) from None
                if err.txn_requires_abort():
                    self._abort(producer)
                    refused = [
                        (i, self._describe(e))
                        for i, e in sorted(self._record_errors.items())
                        if e.code() in PERMANENT_RECORD_ERRORS
                    ]
                    if refused:
                        return refused
                    raise SinkError(
                        f"transaction aborted: {self._describe(err)}", error_class=err.name()
                    ) from None
                if not err.retriable():
                    self._abort(producer)
                    raise SinkError(
                        f"commit failed: {self._describe(err)}", error_class=err.name()
                    ) from None
                # Outcome not known yet (e.g. broker down): only another commit call may
                # resolve it. Aborting here could drop a commit that is in progress.
                self.ready = False
                self._metrics.sink_error(self.name, err.name())
                log.warning("commit not acknowledged yet, retrying", error=self.last_error)
                self._check_stopping(producer, abort=False)
                continue
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
        return _one_line(self._redact(f"{err.name()}: {err.str()}"))

    def _note(self, err: KafkaError) -> None:
        """Keep ``err`` as last_error, unless it only restates the one kept already."""
        if err.code() in _VAGUE_ERRORS and self.last_error is not None:
            return
        self.last_error = self._describe(err)

    def _serve(self, producer: Producer) -> None:
        """Hand over what librdkafka queued for the application: log lines (with a
        ``logger`` set they wait in this queue), error_cb calls and delivery reports."""
        producer.poll(0)

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
        left_out = self._throttle.admit(("error", err.name(), _VARIABLE_TAIL.sub("", described)))
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

    def _call(self, fn: Callable[[], None], what: str) -> None:
        try:
            fn()
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            self._note(err)
            raise SinkError(
                f"{what} failed: {self._describe(err)}",
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
                self._serve(producer)
                self._note(err)
                if err.fatal() or not err.retriable():
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
        backoff = 0.5
        while True:
            producer = self._require()
            try:
                fn(producer)
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                self._serve(producer)  # error_cb names the cause of a timeout
                self._note(err)
                if err.fatal() or not err.retriable():
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
                    self._pause(producer, backoff, what)
                    backoff = min(backoff * 2, 10.0)
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
            producer.poll(min(remaining, 0.1))
