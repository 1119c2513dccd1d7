"""``tmc-bridge dead-letters replay``: dead letters back through the current routing.

**What is read.** The dead-letter topic (``routing.dead_letter_topic``), committed records
only (``read_committed``), from the first offset at or after ``--since`` (the records'
timestamps: when the bridge wrote the dead letter) up to the end of each partition as it
was when the run started, keeping those written before ``--until`` whose
``tmc.dlq.reason`` contains ``--reason`` (any case), at most ``--limit`` of them.

**What is rebuilt.** The message, from the dead letter's value (the content as received)
and headers: ``tmc.topic``, ``tmc.message_id``, ``tmc.user_id``, ``tmc.publish_time_ms``,
``tmc.publisher``, ``tmc.group`` and the ONS source's ``ons.*`` (an ONS message then keeps
its message key as the ``dataid`` fallback). With ``value_format: envelope``, a dead
letter the sink refused holds the envelope: it is unwrapped (content, nick, data id).
The TMC ``dataid`` and nick of a raw-format dead letter are not in it: a route that
relies on ``routing.missing_key: dataid`` sees none.

**Not replayed** (counted as skipped, with why): a record without ``tmc.dlq.reason``
(not a dead letter); one whose value was cut (``tmc.dlq.truncated``: the content is
lost); one without ``tmc.message_id`` or ``tmc.topic``; and one the *source* could not
decode (a bad gzip, a frame too large, an ONS body that is no event, a field of the wrong
type: :data:`SOURCE_REASONS`), whose value is not the event's content, so that no route
can make it right.

**What is written** (``--apply``; without it nothing is written: a dry run). Each
rebuilt message is routed by the current ``routing`` (filters do not apply) and its
record (to its topic, or to the dead-letter topic again with today's reason) is written
with the header ``tmc.replay.of: <topic>:<partition>:<offset>`` of the dead letter, in
Kafka transactions of the sink's own producer settings under the transactional id
``<sink.kafka.transactional_id>-replay`` (so a running bridge is never fenced; two
replays at once fence each other). Each transaction also writes a *replay marker* to
the dead-letter topic (key ``tmc-bridge.replay``, header ``tmc.dlq.replayed``, no
``tmc.dlq.reason``) naming the dead letters it replayed, so records and marker are
visible together or not at all. A later run reads the markers in its range and skips
those dead letters: running the same replay twice writes nothing the second time. A
dead letter that is dead again is a new dead letter, replayable by a later run.

**Limits.** A replayed event reaches its topic after newer events of the same order
(consumers should order by publish time or the object's modified time, as for any
redelivery). Markers are found only from ``--since`` on: a dead letter is replayed again
if a later run starts after its marker was written but before the dead letter itself
(not possible with ranges by record time: markers always come later in the log).
The dead letters selected are held in memory until written (the markers that exclude
some come later in the log), so keep ranges to what fits; ``--limit`` bounds what one
run writes, and a run after it picks up the rest.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from bridge.errors import BridgeError, ConfigError, SinkError
from bridge.headers import (
    H_DLQ_REASON,
    H_DLQ_TRUNCATED,
    H_GROUP,
    H_MESSAGE_ID,
    H_ONS_KEYS,
    H_PUBLISH_TIME,
    H_PUBLISHER,
    H_TOPIC,
    H_USER_ID,
)
from bridge.model import OutRecord, SourceMessage
from bridge.numbers import decimal_int64
from bridge.pipeline.ports import Batch
from bridge.pipeline.routing import Router

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message

    from bridge.config import BridgeConfig
    from bridge.sinks.kafka_config import KafkaSinkConfig

#: On a replayed record: the dead letter it came from, ``<topic>:<partition>:<offset>``.
H_REPLAY_OF: Final = "tmc.replay.of"
#: On a replay marker (a record in the dead-letter topic that is no dead letter).
H_REPLAYED: Final = "tmc.dlq.replayed"
MARKER_KEY: Final = b"tmc-bridge.replay"
#: Progress lines of a long read or write, at most one this often.
PROGRESS_EVERY_S: Final = 5.0
#: Records per transaction.
BATCH_RECORDS: Final = 500
#: Reasons the sources give when what they received is not an event the routing could
#: handle (tmc: session.py, tmc_http: parse.py, ons: ons.py): never replayed.
SOURCE_REASONS: Final = (
    "field '",
    "data push without",
    "message without",
    "content is a ByteArray",
    "content has format",
    "content is not valid Unicode",
    "gzip content",
    "frame of ",
    "ONS body",
)
#: Envelope members (bridge.pipeline.routing._envelope).
_ENVELOPE_KEYS: Final = frozenset(
    {"topic", "id", "user_id", "nick", "publish_time_ms", "publisher", "data_id", "content"}
)
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, *, now: float | None = None) -> int:
    """``--since``/``--until`` in epoch ms: ``now``, a duration before now (``90s``,
    ``30m``, ``2h``, ``7d``, ``1h30m``), or an ISO 8601 time (without an offset: this
    machine's local time). Raises ConfigError."""
    clock = time.time() if now is None else now
    raw = text.strip()
    if raw == "now":
        return int(clock * 1000)
    parts = _RELATIVE.findall(raw)
    if parts and _RELATIVE.sub("", raw).strip() == "":
        seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
        return int((clock - seconds) * 1000)
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{text!r} is not a time: use an ISO 8601 time (2025-01-31T08:00:00+08:00), "
            "a duration before now (30m, 2h, 7d) or 'now'"
        ) from None
    return int(when.timestamp() * 1000)


@dataclass(frozen=True)
class Selection:
    since_ms: int | None = None
    until_ms: int | None = None
    reason: str | None = None
    limit: int = 10_000

    def wants(self, timestamp_ms: int | None, reason: str) -> bool:
        if timestamp_ms is not None and timestamp_ms >= 0:
            if self.since_ms is not None and timestamp_ms < self.since_ms:
                return False
            if self.until_ms is not None and timestamp_ms >= self.until_ms:
                return False
        return self.reason is None or self.reason.lower() in reason.lower()


@dataclass
class Planned:
    """One dead letter selected, and what the current routing makes of it."""

    where: str  # topic:partition:offset
    partition: int
    offset: int
    message_id: str
    outcome: str
    record: OutRecord | None = None


@dataclass
class Report:
    dead_letter_topic: str
    #: Per partition: (first offset read, end offset).
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)
    read: int = 0
    markers: int = 0
    already_replayed: int = 0
    not_selected: int = 0
    planned: list[Planned] = field(default_factory=list)
    limit_reached: bool = False
    #: (partition, offset) of the dead letters the markers read name.
    replayed_before: set[tuple[int, int]] = field(default_factory=set)
    written: int = 0
    transactions: int = 0

    def outcomes(self) -> Counter[str]:
        return Counter(p.outcome for p in self.planned)


def _headers(
    raw: dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]] | None,
) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    pairs = list(raw.items()) if isinstance(raw, dict) else (raw or [])
    for name, value in pairs:
        if name not in out:  # the first one, as the router wrote them
            out[name] = value.encode() if isinstance(value, str) else (value or b"")
    return out


def _text(headers: dict[str, bytes], name: str) -> str | None:
    value = headers.get(name)
    return None if value is None else value.decode("utf-8", "replace")


def _int(headers: dict[str, bytes], name: str) -> int | None:
    text = _text(headers, name)
    return None if text is None else decimal_int64(text.strip())


def source_problem(reason: str) -> bool:
    """Whether ``reason`` says the source could not decode the message (not replayed)."""
    return reason.startswith(SOURCE_REASONS)


def rebuild(value: bytes, raw_headers: dict[str, bytes]) -> SourceMessage | str:
    """The message a dead letter was made from, or why it cannot be rebuilt."""
    reason = _text(raw_headers, H_DLQ_REASON)
    if reason is None:
        return "skipped: not a dead letter (no tmc.dlq.reason)"
    if _text(raw_headers, H_DLQ_TRUNCATED) == "true":
        return "skipped: its value was cut (tmc.dlq.truncated), the content is lost"
    if source_problem(reason):
        return "skipped: the source could not decode it"
    message_id = _int(raw_headers, H_MESSAGE_ID)
    topic = _text(raw_headers, H_TOPIC)
    if message_id is None or not topic:
        return "skipped: no tmc.message_id or tmc.topic header"
    ons = {k: v for k, v in raw_headers.items() if k.startswith("ons.")}
    msg = SourceMessage(
        source="ons" if ons else "tmc",
        message_id=message_id,
        topic=topic,
        content=value,
        publish_time_ms=_int(raw_headers, H_PUBLISH_TIME),
        publisher=_text(raw_headers, H_PUBLISHER),
        user_id=_int(raw_headers, H_USER_ID),
        group=_text(raw_headers, H_GROUP),
        extra_headers=tuple(ons.items()),
    )
    if ons:
        keys = (_text(raw_headers, H_ONS_KEYS) or "").split()
        msg.data_id = decimal_int64(keys[0]) if keys else None
    _unwrap_envelope(msg)
    return msg


def _unwrap_envelope(msg: SourceMessage) -> None:
    """A value that is the bridge's own envelope of this message (a record the sink
    refused under ``value_format: envelope``): take the content and fields back out."""
    if not msg.content.startswith(b"{"):
        return
    try:
        doc = json.loads(msg.content)
    except (ValueError, RecursionError):
        return
    if not isinstance(doc, dict) or set(doc) != _ENVELOPE_KEYS:
        return
    if doc.get("id") != str(msg.message_id) or not isinstance(doc.get("content"), str):
        return
    msg.content = doc["content"].encode("utf-8", "replace")
    nick, data_id = doc.get("nick"), doc.get("data_id")
    msg.nick = nick if isinstance(nick, str) else None
    msg.data_id = decimal_int64(data_id) if isinstance(data_id, str) else None


def plan(router: Router, where: str, value: bytes, headers: dict[str, bytes]) -> Planned:
    """What replaying one dead letter does (``where``: topic:partition:offset)."""
    _, partition, offset = where.rsplit(":", 2)
    built = rebuild(value, headers)
    message_id = _text(headers, H_MESSAGE_ID) or "?"
    if isinstance(built, str):
        return Planned(where, int(partition), int(offset), message_id, built)
    try:
        record = router.route(built)
    except Exception as exc:  # routing never raises by design; a bug must not stop a run
        return Planned(where, int(partition), int(offset), message_id, f"skipped: {exc!r:.100}")
    record.headers = (*record.headers, (H_REPLAY_OF, where.encode()))
    if record.dead_letter_reason is not None:
        outcome = f"dead again: {record.dead_letter_reason[:120]}"
    else:
        outcome = f"routed to {record.topic}"
    return Planned(where, int(partition), int(offset), message_id, outcome, record)


# -- markers ------------------------------------------------------------------------------


def marker_record(topic: str, done: Iterable[tuple[int, int]]) -> OutRecord:
    """The replay marker of a transaction: the dead letters it replayed, as offset
    ranges per partition."""
    ranges: dict[str, list[list[int]]] = {}
    for partition, offset in sorted(done):
        spans = ranges.setdefault(str(partition), [])
        if spans and spans[-1][1] == offset - 1:
            spans[-1][1] = offset
        else:
            spans.append([offset, offset])
    value = json.dumps({"replayed": ranges}, separators=(",", ":")).encode()
    return OutRecord(topic, MARKER_KEY, value, ((H_REPLAYED, b"1"),))


def marker_offsets(value: bytes) -> set[tuple[int, int]]:
    """(partition, offset) of every dead letter a marker names; empty if unreadable."""
    try:
        doc = json.loads(value)
        spans = doc["replayed"]
        return {
            (int(partition), offset)
            for partition, pairs in spans.items()
            for first, last in pairs
            for offset in range(int(first), int(last) + 1)
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        return set()


# -- Kafka --------------------------------------------------------------------------------


class _Quiet:
    def log(self, *args: object, **kwargs: object) -> None:
        pass


def _consumer(config: KafkaSinkConfig) -> Consumer:
    from confluent_kafka import Consumer

    from bridge.dedup.kafka_store import consumer_settings

    return Consumer(
        {
            **consumer_settings(config),
            "group.id": f"{config.transactional_id}-replay",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "logger": _Quiet(),
        }
    )


def read(
    config: BridgeConfig,
    selection: Selection,
    *,
    timeout_s: float = 10.0,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Read the dead-letter topic and plan every selected dead letter (nothing written)."""
    from confluent_kafka import KafkaException, TopicPartition

    kafka = _kafka_config(config)
    topic = config.routing.dead_letter_topic
    router = Router(config.routing, envelope=config.value_format == "envelope")
    report = Report(topic)
    consumer = _consumer(kafka)
    try:
        meta = consumer.list_topics(timeout=timeout_s)
        found = meta.topics.get(topic)
        if found is None or found.error is not None:
            raise BridgeError(f"dead-letter topic {topic} not found on {kafka.bootstrap_servers}")
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for partition in sorted(found.partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s
            )
            start = int(low)
            if selection.since_ms is not None:
                at = consumer.offsets_for_times(
                    [TopicPartition(topic, partition, selection.since_ms)], timeout=timeout_s
                )[0].offset
                start = int(high) if at < 0 else max(start, int(at))
            report.ranges[partition] = (start, int(high))
            if start < high:
                ends[partition] = int(high)
                starts.append(TopicPartition(topic, partition, start))
        selected = _Scan(router, selection, report, progress).run(consumer, starts, ends)
    except KafkaException as exc:
        raise BridgeError(f"reading {topic} failed: {exc.args[0].str()}") from None
    finally:
        consumer.close()
    done = report.replayed_before
    fresh = [p for p in selected if (p.partition, p.offset) not in done]
    report.already_replayed = len(selected) - len(fresh)
    report.limit_reached = len(fresh) > selection.limit
    report.planned = fresh[: selection.limit]
    return report


class _Scan:
    """One pass over the dead-letter partitions, from their start offsets to their ends
    as of the start of the run: markers noted, dead letters selected and planned."""

    def __init__(
        self,
        router: Router,
        selection: Selection,
        report: Report,
        progress: Callable[[str], None] | None,
    ) -> None:
        self.router = router
        self.selection = selection
        self.report = report
        self.progress = progress
        self.selected: list[Planned] = []

    def run(self, consumer: Consumer, starts: list[Any], ends: dict[int, int]) -> list[Planned]:
        from confluent_kafka import KafkaError

        if not starts:
            return self.selected
        consumer.assign(starts)
        open_parts = set(ends)
        total = sum(ends[p.partition] - p.offset for p in starts)
        last_progress = time.monotonic()
        while open_parts:
            for msg in consumer.consume(500, 1.0):
                partition = int(msg.partition() or 0)
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        open_parts.discard(partition)
                        continue
                    raise BridgeError(f"reading the dead-letter topic failed: {error.str()}")
                offset = int(msg.offset() or 0)
                if offset >= ends.get(partition, 0):
                    open_parts.discard(partition)
                    continue
                self.report.read += 1
                if offset + 1 >= ends[partition]:
                    open_parts.discard(partition)
                self.take(msg, partition, offset)
            now = time.monotonic()
            if self.progress is not None and now - last_progress >= PROGRESS_EVERY_S:
                last_progress = now
                self.progress(
                    f"read {self.report.read} of {total} records of {self.report.dead_letter_topic}"
                )
        return self.selected

    def take(self, msg: Message, partition: int, offset: int) -> None:
        report = self.report
        headers = _headers(msg.headers())
        value = msg.value() or b""
        if isinstance(value, str):
            value = value.encode()
        if H_REPLAYED in headers:
            report.markers += 1
            report.replayed_before |= marker_offsets(value)
            return
        _, timestamp = msg.timestamp()
        reason = _text(headers, H_DLQ_REASON) or ""
        if not self.selection.wants(timestamp, reason):
            report.not_selected += 1
            return
        where = f"{report.dead_letter_topic}:{partition}:{offset}"
        self.selected.append(plan(self.router, where, value, headers))


def _kafka_config(config: BridgeConfig) -> KafkaSinkConfig:
    from bridge.sinks.kafka_config import KafkaSinkConfig

    kafka = config.sink.selected
    if config.sink.type != "kafka" or not isinstance(kafka, KafkaSinkConfig):
        raise ConfigError(
            f"dead-letters replay reads a Kafka dead-letter topic; sink.type is {config.sink.type}"
        )
    return kafka


def write(
    config: BridgeConfig,
    report: Report,
    *,
    batch_records: int = BATCH_RECORDS,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Write every planned record with a marker per transaction (see the module doc)."""
    from bridge.observability.metrics import Metrics
    from bridge.sinks.kafka import KafkaSink

    kafka = _kafka_config(config)
    replay_config = kafka.model_copy(
        update={
            "transactional_id": f"{kafka.transactional_id}-replay",
            "dedup": kafka.dedup.model_copy(update={"store": "memory"}),
        }
    )
    router = Router(config.routing, envelope=config.value_format == "envelope")
    todo = [p for p in report.planned if p.record is not None]
    sink = KafkaSink(replay_config, metrics=Metrics(), probe_topic=report.dead_letter_topic)
    try:
        sink.start()
        for first in range(0, len(todo), batch_records):
            chunk = todo[first : first + batch_records]
            records = [p.record for p in chunk if p.record is not None]
            marker = marker_record(
                report.dead_letter_topic, ((p.partition, p.offset) for p in chunk)
            )
            _commit(sink, router, Batch([*records, marker]))
            report.written += len(records)
            report.transactions += 1
            if progress is not None:
                progress(f"written {report.written} of {len(todo)} records")
    except SinkError as exc:
        raise BridgeError(
            f"replay stopped after {report.written} records in {report.transactions} "
            f"transactions: {exc} (run it again: what was written is not written twice)"
        ) from None
    finally:
        sink.close()


def _commit(sink: Any, router: Router, batch: Batch, attempts: int = 5) -> None:
    """Write ``batch`` in one transaction; a record the broker refuses for good is
    replaced by its dead letter, as the pipeline does; a failed attempt is tried again."""
    last: SinkError | None = None
    for _ in range(attempts):
        try:
            refused = sink.write_batch(batch)
        except SinkError as exc:
            last = exc
            if exc.fatal:
                sink.rebuild()
            time.sleep(0.5)
            continue
        if not refused:
            return
        for item in refused:
            record = batch.records[item.index]
            if record.key == MARKER_KEY and item.index == len(batch.records) - 1:
                raise SinkError(f"the replay marker was refused: {item.reason}")
            batch.records[item.index] = router.dead_letter(record, item.reason)
    raise last or SinkError("records refused again and again")


def summary(report: Report, *, applied: bool, listing: bool = False) -> list[str]:
    """What the run found and did, for the terminal: counts per outcome."""
    lines = []
    if listing:
        lines += [f"{p.where} id={p.message_id}: {p.outcome}" for p in report.planned]
    spans = ", ".join(f"{p}:{a}-{b}" for p, (a, b) in sorted(report.ranges.items()))
    lines.append(
        f"{report.dead_letter_topic}: read {report.read} records (partition:offsets "
        f"{spans or 'none'}); {report.markers} replay markers, {report.already_replayed} "
        f"dead letters replayed before, {report.not_selected} not selected"
    )
    counts = report.outcomes()
    for outcome, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {count:>7}  {outcome}")
    writable = sum(1 for p in report.planned if p.record is not None)
    if report.limit_reached:
        lines.append("limit reached: a run after this one takes the rest (--limit)")
    if applied:
        lines.append(f"written: {report.written} records in {report.transactions} transactions")
    else:
        lines.append(f"dry run: {writable} records would be written; --apply writes them")
    return lines
