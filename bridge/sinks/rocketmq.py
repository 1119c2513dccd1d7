"""RocketMQ sink: ordered by sharding key (default) or transactional.

Both modes send synchronously through :mod:`bridge.rocketmq.client` and return from
:meth:`RocketMQSink.write_batch` only when every record of the batch was acknowledged
(SEND_OK; in transactional mode, committed and journalled), so the pipeline confirms the
source only then.

* **ordered**: each record goes to queue ``crc32(key) % queues`` of its topic
  (:func:`bridge.rocketmq.client.queue_index`; ``queues``: the write queues of the route
  the client last read), so one order's events share a queue. The send is the C
  function ``SendMessageOrderly`` with *no* client-side retry, not the wrapper's
  ``send_orderly_with_sharding_key``: that one retries inside librocketmq up to three
  times, and each of those retries goes to the *next* queue (``sendAutoRetrySelectImpl``
  after a timeout or a busy broker), which split an order over two queues. Our own
  retries (``retries``, below) choose the queue again, so they stay on the same one.
  Changing a topic's queue count moves keys to other queues (as for any RocketMQ
  ordered producer); unkeyed records go round robin.
* **transactional**: a half message per record; the local transaction appends the
  source message id and the half message's transaction id to the
  :class:`~bridge.sinks.rocketmq_journal.Journal` and commits; the broker's check-back is
  answered from the journal by transaction id. RocketMQ clients cannot choose the
  queue of a transactional send, so this mode gives up per-order queue placement. The
  same journal is the pipeline's committed-ids store
  (:class:`~bridge.sinks.rocketmq_journal.JournalCommittedIds`): a redelivery of a message
  journalled within ``dedup_window_h`` is confirmed without entering the sink, and the
  sink checks the journal again before each send.

**Order and progress within a batch.** Records are spread over ``send_threads`` lanes by
key; a lane sends its records one after another, so a key's records go out in batch
order, and a lane stops at its first failure so nothing of that key overtakes the failed
record. The sink remembers which records of the current batch are already acknowledged:
when the pipeline retries the batch (the same :class:`~bridge.pipeline.ports.Batch`, i.e.
the same ``seq``), only the rest is sent. So a retry never writes a record twice, and a
record the broker refused for good is reported back (:class:`~bridge.pipeline.ports.Refused`),
replaced by its dead letter, and sent in its place. A failed send is retried
``retries`` times within the batch, with the shared back-off (:mod:`bridge.retry`).

**The local transaction hook.** Tests kill the bridge inside a local transaction, before or
after its journal entry, to prove that the broker's check-back follows the journal. They do
that through :data:`LocalTransactionHook`, which ``devtools.crash_bridge`` passes in;
``tmc-bridge run`` passes none, and nothing here reads test settings from the environment.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import structlog

from bridge.errors import BridgeError, RocketMQSendError, SinkError, SinkStopped
from bridge.headers import H_MESSAGE_ID, H_TOPIC
from bridge.model import OutRecord
from bridge.observability.metrics import Metrics
from bridge.pipeline.ports import Batch, Refused
from bridge.retry import Backoff
from bridge.rocketmq import client as rmq
from bridge.sinks.rocketmq_config import RocketMQSinkConfig
from bridge.sinks.rocketmq_journal import MESSAGE_ID, Journal, journal_for

log = structlog.get_logger("bridge.sink.rocketmq")

#: RocketMQ refuses empty bodies; a dead letter whose value had to be dropped (see
#: Router.dead_letter) carries this placeholder instead. Its headers say why.
_EMPTY_BODY = b"-"
#: Between the attempts to send one record: 0.05 s, 0.1 s, ... up to 1 s (plus jitter).
_SEND_BACKOFF = Backoff(min_s=0.05, max_s=1.0, factor=2.0)

#: The two points of a local transaction (after the half message was stored, before the
#: commit is sent) around its journal entry.
JournalPoint = Literal["before_journal", "after_journal"]
#: Called at both points of every local transaction, with the point and the transaction
#: id (a test seam: ``devtools.crash_bridge`` ends the process there; production passes
#: none). Whatever it raises fails that local transaction: its half message is left to
#: the broker's check-back, which the journal answers.
LocalTransactionHook = Callable[[JournalPoint, str], None]

#: RocketMQ encodes properties as name\x01value\x02...; these bytes cannot appear.
_PROPERTY_UNSAFE = bytes.maketrans(b"\x01\x02", b"  ")
#: Header names, encoded once.
_NAMES: dict[str, bytes] = {}


def _lane(record: OutRecord, index: int, lanes: int) -> int:
    """A key's lane: ``crc32(key) % lanes``, the same CRC as its queue
    (:func:`bridge.rocketmq.client.queue_index`)."""
    if record.key is None:
        return index % lanes
    return zlib.crc32(record.key) % lanes


def _header(record: OutRecord, name: str) -> str | None:
    for key, value in record.headers:
        if key == name:
            return value.decode("utf-8", "replace")
    return None


def _text(value: bytes) -> bytes:
    """A header value as property text: valid UTF-8 (invalid bytes replaced), without
    RocketMQ's separator bytes."""
    if not value.isascii():
        value = value.decode("utf-8", "replace").encode()
    return value.translate(_PROPERTY_UNSAFE)


def to_message(record: OutRecord) -> rmq.WireMessage:
    """Tags = TMC topic; keys = order id and source message id; properties = headers."""
    tags: bytes | None = None
    message_id: bytes | None = None
    props = []
    for name, value in record.headers:
        if name == H_TOPIC and tags is None:
            tags = value
        elif name == H_MESSAGE_ID and message_id is None:
            message_id = value
        encoded = _NAMES.get(name)
        if encoded is None:
            encoded = _NAMES.setdefault(name, name.encode())
        props.append((encoded, _text(value)))
    keys = b" ".join(k for k in (record.key, message_id) if k)
    return rmq.WireMessage(
        topic=record.topic.encode(),
        body=record.value or _EMPTY_BODY,
        tags=_text(tags) if tags else None,
        keys=_text(keys) if keys else None,
        properties=tuple(props),
    )


class _Progress:
    """Which records of the batch in hand are acknowledged (see the module docstring)."""

    def __init__(self, batch: Batch) -> None:
        self.seq = batch.seq
        self.done = [False] * len(batch.records)


class RocketMQSink:
    """A :class:`~bridge.pipeline.ports.BatchSink` over one RocketMQ producer."""

    name = "rocketmq"

    def __init__(
        self,
        config: RocketMQSinkConfig,
        *,
        metrics: Metrics,
        local_transaction_hook: LocalTransactionHook | None = None,
    ) -> None:
        self._config = config
        #: The bridge's metrics. The pipeline counts this sink's batches and errors; the
        #: sink has no client-level series of its own (yet).
        self._metrics = metrics
        self._settings = rmq.ClientSettings(
            name_server=config.name_server,
            name_server_domain=config.name_server_domain,
            credentials=config.credentials("sink.rocketmq.secret_key_file"),
            instance_name=config.instance_name or rmq.default_instance_name(config.producer_group),
        )
        self._transactional = config.mode == "transactional"
        #: Shared with the committed-ids store built from the same config.
        self._journal: Journal | None = journal_for(config) if self._transactional else None
        self._journal_open = False
        self._producer: rmq.Producer | rmq.TransactionalProducer | None = None
        # Transactional sends go one at a time (see write_batch): no lane threads then.
        self._lane_count = 1 if self._transactional else config.send_threads
        self._lanes = ThreadPoolExecutor(
            max_workers=self._lane_count, thread_name_prefix="rocketmq-lane"
        )
        self._progress: _Progress | None = None
        self._stopping = threading.Event()
        self._hook = local_transaction_hook
        self.ready = False
        #: BatchSink.last_error: always None here; failed sends already show through the
        #: pipeline ("rocketmq sink failing: ...").
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        rmq.ensure_library()
        if self._journal is not None and not self._journal_open:
            self._journal.open()  # loads it, unless the committed-ids store did already
            self._journal_open = True
            log.info("journal opened", path=str(self._config.journal_dir), ids=len(self._journal))
        self._producer = self._new_producer()
        self.ready = True
        log.info(
            "rocketmq producer started",
            mode=self._config.mode,
            group=self._config.producer_group,
            name_server=self._config.name_server or self._config.name_server_domain,
        )

    def _new_producer(self) -> rmq.Producer | rmq.TransactionalProducer:
        cfg = self._config
        producer: rmq.Producer | rmq.TransactionalProducer
        if self._journal is not None:
            producer = rmq.TransactionalProducer(
                cfg.producer_group,
                self._settings,
                self._check,
                send_timeout_ms=cfg.send_timeout_ms,
                max_message_bytes=cfg.max_message_bytes,
                check_properties=(H_MESSAGE_ID,),
            )
        else:
            producer = rmq.Producer(
                cfg.producer_group,
                self._settings,
                send_timeout_ms=cfg.send_timeout_ms,
                max_message_bytes=cfg.max_message_bytes,
            )
        try:
            producer.start()
        except RocketMQSendError as exc:
            raise BridgeError(f"RocketMQ producer did not start: {exc}") from None
        return producer

    def _check(self, message: rmq.InMessage) -> bool | None:
        """The broker's check-back: the journal decides, by transaction id."""
        assert self._journal is not None
        txn = rmq.transaction_id(message)
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
        if self._journal is not None and self._journal_open:
            self._journal_open = False
            self._journal.close()
        self.ready = False

    # -- writing -----------------------------------------------------------------

    def write_batch(self, batch: Batch) -> list[Refused]:
        """Send the batch; return refused records (to dead-letter) or raise SinkError.

        A second call with the same batch (``seq``) sends only what is not acknowledged
        yet; its refused records have been replaced by their dead letters meanwhile."""
        if self._stopping.is_set():
            raise SinkStopped("sink stopping")
        if self._progress is None or self._progress.seq != batch.seq:
            self._progress = _Progress(batch)
        progress = self._progress
        records = batch.records
        lanes: dict[int, list[int]] = {}
        # Transactional sends are serialised by the client wrapper anyway (see
        # bridge.rocketmq.client.TransactionalProducer); one lane keeps that explicit.
        count = self._lane_count
        for index, record in enumerate(records):
            if not progress.done[index]:
                lanes.setdefault(_lane(record, index, count), []).append(index)
        if len(lanes) <= 1:
            outcomes = [self._send_lane(records, progress, idx) for idx in lanes.values()]
        else:
            futures = [
                self._lanes.submit(self._send_lane, records, progress, idx)
                for idx in lanes.values()
            ]
            outcomes = [f.result() for f in futures]
        refused = [o for o in outcomes if isinstance(o, Refused)]
        if refused:
            return sorted(refused, key=lambda r: r.index)
        errors = [o for o in outcomes if isinstance(o, RocketMQSendError)]
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
        for topic, before, after in rmq.queue_count_changes():
            # Keys are placed by crc32(key) % queues: a new count moves most of them, so
            # an order's events before and after this point may sit in two queues.
            log.warning(
                "rocketmq topic's queue count changed: keyed records now go to other queues",
                topic=topic,
                queues_before=before,
                queues_after=after,
            )
        return []

    def _send_lane(
        self, records: list[OutRecord], progress: _Progress, indices: list[int]
    ) -> Refused | RocketMQSendError | None:
        """Send one lane in order; stop at the first failure (returned, not raised)."""
        for index in indices:
            if self._stopping.is_set():
                return None
            outcome = self._send_one(records[index])
            if outcome is not None:
                if outcome.permanent:
                    return Refused(index, str(outcome))
                return outcome
            progress.done[index] = True
        return None

    def _send_one(self, record: OutRecord) -> RocketMQSendError | None:
        producer = self._producer
        if producer is None:
            return RocketMQSendError("producer not started", permanent=False)
        too_large = _over_broker_limit(record.value, self._config.max_message_bytes)
        if too_large is not None:
            return RocketMQSendError(too_large, permanent=True)
        journal_id = _header(record, H_MESSAGE_ID) if self._journal is not None else None
        if (
            journal_id is not None
            and self._journal is not None
            and self._journal.has_message(journal_id)
        ):
            # Committed before (or decided so for the next check-back). The pipeline asked
            # the same journal before the message entered the sink; this is the second
            # line of defence (e.g. for a record journalled by an attempt that then
            # reported an error).
            return None
        message = to_message(record)
        key = record.key
        shard = zlib.crc32(key) if key is not None else None
        delays = None
        failure: RocketMQSendError | None = None
        for attempt in range(self._config.retries + 1):
            if attempt > 0:
                delays = delays or _SEND_BACKOFF.delays()
                if self._stopping.wait(next(delays)):
                    break
            try:
                if isinstance(producer, rmq.TransactionalProducer):
                    producer.send(message, self._local_transaction(journal_id))
                elif shard is not None:
                    # The same queue on every attempt (see the module docstring).
                    producer.send_to_shard(message, shard)
                else:
                    producer.send(message, None)
                return None
            except RocketMQSendError as exc:
                failure = exc
                if exc.permanent:
                    break
        return failure

    def _local_transaction(self, journal_id: str | None) -> Callable[[str], bool]:
        journal = self._journal
        assert journal is not None
        hook = self._hook
        # Records without a decimal message id (none today: the router always sets one)
        # are journalled under 0, so their check-back still finds the transaction; the
        # journal never remembers 0 as a committed message.
        message_id = journal_id if journal_id and MESSAGE_ID.fullmatch(journal_id) else "0"

        def local(transaction_id: str) -> bool:
            if hook is not None:
                hook("before_journal", transaction_id)
            journal.record(message_id, transaction_id)
            if hook is not None:
                hook("after_journal", transaction_id)
            return True

        return local

    def _explain(self, exc: RocketMQSendError) -> str:
        text = str(exc)
        if self._settings.credentials is not None and (
            "no route info" in text.lower() or "permission" in text.lower()
        ):
            # With ACL on, librocketmq reports a refused signature as missing routes.
            text += " (check sink.rocketmq access_key, secret_key and channel, and the ACL)"
        return text


#: librocketmq compresses a body of this many bytes or more (zlib, level 5) before it
#: sends it, and the broker checks the compressed size against its maxMessageSize.
_COMPRESS_FROM = 4096
_COMPRESS_LEVEL = 5


def _over_broker_limit(value: bytes, limit: int) -> str | None:
    """Why the broker will refuse ``value`` as too large, or None.

    The client checks the raw size against ``max_message_bytes`` itself; but it then
    compresses, and an incompressible body grows by a few bytes, past a broker limit the
    raw size was under. The broker refuses that, and librocketmq reports it as "No route
    info of this topic", which is retriable: the batch would be retried forever. So the
    compressed size is checked here, where it is still a permanent, dead-lettered refusal.
    Only bodies within 1% of the limit are compressed for it (zlib never grows data more).
    """
    size = len(value)
    if size > limit:
        return f"record of {size} bytes is over sink.rocketmq.max_message_bytes ({limit})"
    if size < _COMPRESS_FROM or size < limit * 0.99:
        return None
    compressed = len(zlib.compress(value, _COMPRESS_LEVEL))
    if compressed > limit:
        return (
            f"record of {size} bytes is {compressed} bytes compressed, over "
            f"sink.rocketmq.max_message_bytes ({limit})"
        )
    return None
