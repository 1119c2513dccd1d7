"""RocketMQ sink: ordered by sharding key (default) or transactional.

Both modes send synchronously through :mod:`bridge.rocketmq_sdk` and return from
:meth:`RocketMQSink.write_batch` only when every record of the batch was acknowledged
(SEND_OK; in transactional mode, committed and journalled), so the pipeline confirms the
source only then.

* **ordered**: each record goes out with its key (the order id) as sharding key; the
  client picks queue ``hash(key) % queues``, so one order's events share a queue.
* **transactional**: a half message per record; the local transaction appends the
  source message id and the half message's transaction id to the
  :class:`~bridge.sinks.journal.Journal` and commits; the broker's check-back is
  answered from the journal by transaction id. RocketMQ clients cannot choose the
  queue of a transactional send, so this mode gives up per-order queue placement.

**Order and progress within a batch.** Records are spread over ``send_threads`` lanes by
key; a lane sends its records one after another, so a key's records go out in batch
order, and a lane stops at its first failure so nothing of that key overtakes the failed
record. The sink remembers which records of the current batch are already acknowledged:
when the pipeline retries the batch (the same list), only the rest is sent. So a retry
never writes a record twice, and a record the broker refused for good is reported back,
replaced by its dead letter, and sent in its place.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import structlog

from bridge import rocketmq_sdk as sdk
from bridge.config import RocketMQSinkConfig
from bridge.errors import BridgeError, SinkError, SinkStopped
from bridge.headers import H_MESSAGE_ID, H_TOPIC
from bridge.model import OutRecord
from bridge.sinks.journal import Journal

log = structlog.get_logger("bridge.sink.rocketmq")

#: RocketMQ refuses empty bodies; a dead letter whose value had to be dropped (see
#: Router.dead_letter) carries this placeholder instead. Its headers say why.
_EMPTY_BODY = b"-"
#: Fault injection for the crash tests: ``before_journal:N`` / ``after_journal:N`` kills
#: the process (exit 86) inside the N-th local transaction, i.e. between the half message
#: and its commit, before or after the journal entry. Never set in production.
CRASH_ENV = "TMC_BRIDGE_TEST_CRASH"

#: RocketMQ encodes properties as name\x01value\x02...; these bytes cannot appear.
_PROPERTY_UNSAFE = str.maketrans({"\x01": " ", "\x02": " "})


def _lane(record: OutRecord, index: int, lanes: int) -> int:
    if record.key is None:
        return index % lanes
    return zlib.crc32(record.key) % lanes


def _header(record: OutRecord, name: str) -> str | None:
    for key, value in record.headers:
        if key == name:
            return value.decode("utf-8", "replace")
    return None


def to_message(record: OutRecord) -> sdk.OutMessage:
    """Tags = TMC topic; keys = order id and source message id; properties = headers."""
    message_id = _header(record, H_MESSAGE_ID)
    keys = [k for k in (record.key.decode() if record.key else None, message_id) if k]
    props = [
        (name, value.decode("utf-8", "replace").translate(_PROPERTY_UNSAFE))
        for name, value in record.headers
    ]
    return sdk.OutMessage(
        topic=record.topic,
        body=record.value or _EMPTY_BODY,
        tags=_header(record, H_TOPIC),
        keys=keys,
        properties=props,
    )


class _Progress:
    """Which records of the batch in hand are acknowledged (see the module docstring)."""

    def __init__(self, records: Sequence[OutRecord]) -> None:
        self.records = records
        self.done = [False] * len(records)


class RocketMQSink:
    """A :class:`~bridge.pipeline.engine.BatchSink` over one RocketMQ producer."""

    name = "rocketmq"

    def __init__(self, config: RocketMQSinkConfig) -> None:
        self._config = config
        self._settings = sdk.ClientSettings(
            name_server=config.name_server,
            name_server_domain=config.name_server_domain,
            credentials=config.credentials("sink.rocketmq.secret_key_file"),
            instance_name=config.instance_name or sdk.default_instance_name(config.producer_group),
        )
        self._transactional = config.mode == "transactional"
        self._journal: Journal | None = None
        if self._transactional:
            self._journal = Journal(
                config.journal_dir,
                segment_entries=config.journal_segment_entries,
                fsync=config.journal_fsync,
            )
        self._producer: sdk.Producer | sdk.TransactionalProducer | None = None
        # Transactional sends go one at a time (see write_batch): no lane threads then.
        self._lane_count = 1 if self._transactional else config.send_threads
        self._lanes = ThreadPoolExecutor(
            max_workers=self._lane_count, thread_name_prefix="rocketmq-lane"
        )
        self._progress: _Progress | None = None
        self._stopping = threading.Event()
        self._crash = _crash_point(os.environ.get(CRASH_ENV, ""))
        self._local_count = itertools.count(1)
        self.ready = False
        #: BatchSink.last_error: always None here; failed sends already show through the
        #: pipeline ("rocketmq sink failing: ...").
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        sdk.ensure_library()
        if self._journal is not None:
            self._journal.open()
            log.info("journal opened", path=str(self._config.journal_dir), ids=len(self._journal))
        self._producer = self._new_producer()
        self.ready = True
        log.info(
            "rocketmq producer started",
            mode=self._config.mode,
            group=self._config.producer_group,
            name_server=self._config.name_server or self._config.name_server_domain,
        )

    def _new_producer(self) -> sdk.Producer | sdk.TransactionalProducer:
        cfg = self._config
        producer: sdk.Producer | sdk.TransactionalProducer
        if self._journal is not None:
            producer = sdk.TransactionalProducer(
                cfg.producer_group,
                self._settings,
                self._check,
                send_timeout_ms=cfg.send_timeout_ms,
                max_message_bytes=cfg.max_message_bytes,
                check_properties=(H_MESSAGE_ID,),
            )
        else:
            producer = sdk.Producer(
                cfg.producer_group,
                self._settings,
                send_timeout_ms=cfg.send_timeout_ms,
                max_message_bytes=cfg.max_message_bytes,
            )
        try:
            producer.start()
        except sdk.SendFailed as exc:
            raise BridgeError(f"RocketMQ producer did not start: {exc}") from None
        return producer

    def _check(self, message: sdk.InMessage) -> bool | None:
        """The broker's check-back: the journal decides, by transaction id."""
        assert self._journal is not None
        txn = sdk.transaction_id(message)
        committed = self._journal.has_transaction(txn)
        log.info(
            "transaction check-back",
            message_id=message.properties.get(H_MESSAGE_ID),
            transaction_id=txn,
            decision="commit" if committed else "rollback",
        )
        return committed

    def probe(self) -> bool:
        """No cheap broker round trip exists in rocketmq-client-python; readiness comes
        from the outcome of real sends (the pipeline tracks it)."""
        return False

    def rebuild(self) -> None:
        old, self._producer = self._producer, None
        if old is not None:
            old.shutdown()
        self._producer = self._new_producer()

    def stop(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        self._stopping.set()
        self._lanes.shutdown(wait=True, cancel_futures=True)
        if self._producer is not None:
            self._producer.shutdown()
            self._producer = None
        if self._journal is not None:
            self._journal.close()
        self.ready = False

    # -- writing -----------------------------------------------------------------

    def write_batch(self, records: Sequence[OutRecord]) -> list[tuple[int, str]]:
        """Send the batch; return refused records (to dead-letter) or raise SinkError."""
        if self._stopping.is_set():
            raise SinkStopped("sink stopping")
        if self._progress is None or self._progress.records is not records:
            self._progress = _Progress(records)
        progress = self._progress
        lanes: dict[int, list[int]] = {}
        # Transactional sends are serialised by the client wrapper anyway (see
        # rocketmq_sdk.TransactionalProducer); one lane keeps that explicit.
        count = self._lane_count
        for index, record in enumerate(records):
            if not progress.done[index]:
                lanes.setdefault(_lane(record, index, count), []).append(index)
        if len(lanes) <= 1:
            outcomes = [self._send_lane(progress, idx) for idx in lanes.values()]
        else:
            futures = [self._lanes.submit(self._send_lane, progress, idx) for idx in lanes.values()]
            outcomes = [f.result() for f in futures]
        refused = [o for o in outcomes if isinstance(o, tuple)]
        if refused:
            return sorted(refused)
        errors = [o for o in outcomes if isinstance(o, sdk.SendFailed)]
        if self._stopping.is_set() and not all(progress.done):
            raise SinkStopped("sink stopping")
        if errors:
            raise SinkError(
                f"{len(errors)} send lane(s) failed, first: {self._explain(errors[0])}",
                error_class="send_failed",
            )
        if self._journal is not None:
            self._journal.sync()
        self._progress = None
        return []

    def _send_lane(
        self, progress: _Progress, indices: list[int]
    ) -> tuple[int, str] | sdk.SendFailed | None:
        """Send one lane in order; stop at the first failure (returned, not raised)."""
        for index in indices:
            if self._stopping.is_set():
                return None
            outcome = self._send_one(progress.records[index])
            if outcome is not None:
                if outcome.permanent:
                    return (index, str(outcome))
                return outcome
            progress.done[index] = True
        return None

    def _send_one(self, record: OutRecord) -> sdk.SendFailed | None:
        producer = self._producer
        if producer is None:
            return sdk.SendFailed("producer not started", permanent=False)
        message = to_message(record)
        journal_id = _header(record, H_MESSAGE_ID) if self._journal is not None else None
        if (
            journal_id is not None
            and self._journal is not None
            and self._journal.has_message(journal_id)
        ):
            # Committed before a restart (or decided so for the next check-back).
            return None
        attempts = self._config.retries + 1
        failure: sdk.SendFailed | None = None
        for attempt in range(attempts):
            try:
                if isinstance(producer, sdk.TransactionalProducer):
                    producer.send(message, self._local_transaction(journal_id))
                else:
                    producer.send(message, record.key.decode() if record.key else None)
                return None
            except sdk.SendFailed as exc:
                failure = exc
                if exc.permanent or self._stopping.is_set():
                    break
                time.sleep(min(0.05 * 2**attempt, 1.0))
        return failure

    def _local_transaction(self, journal_id: str | None) -> Callable[[str], bool]:
        journal = self._journal
        assert journal is not None
        crash = self._crash
        # Records without a message id (none today: the router always sets one) are
        # journalled under 0, so their check-back still finds the transaction.
        message_id = journal_id if journal_id and journal_id.isdigit() else "0"

        def local(transaction_id: str) -> bool:
            if crash is not None and next(self._local_count) == crash[1]:
                if crash[0] == "after_journal":
                    journal.record(message_id, transaction_id)
                log.warning("test crash inside a local transaction", point=crash[0])
                os._exit(86)
            journal.record(message_id, transaction_id)
            return True

        return local

    def _explain(self, exc: sdk.SendFailed) -> str:
        text = str(exc)
        if self._settings.credentials is not None and (
            "no route info" in text.lower() or "permission" in text.lower()
        ):
            # With ACL on, librocketmq reports a refused signature as missing routes.
            text += " (check sink.rocketmq access_key, secret_key and channel, and the ACL)"
        return text


def _crash_point(spec: str) -> tuple[str, int] | None:
    point, _, count = spec.partition(":")
    if point in ("before_journal", "after_journal") and count.isdigit():
        return point, int(count)
    return None
