"""The Kafka transaction error contract: the pure classification with librdkafka's own
codes, and the sink's write_batch against a scripted producer (no broker)."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from bridge.config import KafkaSinkConfig
from bridge.errors import SinkError
from bridge.model import OutRecord
from bridge.observability.metrics import Metrics
from bridge.pipeline.ports import Batch, Refused
from bridge.sinks import kafka_errors
from bridge.sinks.kafka import KafkaSink
from bridge.sinks.kafka_errors import Action


def err(code: int, *, fatal: bool = False, retriable: bool = False, abort: bool = False) -> Any:
    return KafkaError(code, "test", fatal=fatal, retriable=retriable, txn_requires_abort=abort)


@pytest.mark.parametrize(
    ("error", "action"),
    [
        (err(KafkaError._FENCED, fatal=True), Action.FATAL),
        (err(KafkaError.PRODUCER_FENCED, fatal=True), Action.FATAL),
        (err(KafkaError.INVALID_PRODUCER_EPOCH, abort=True), Action.ABORT_AND_RESEND),
        (err(KafkaError._TIMED_OUT, retriable=True), Action.RETRY),
        (err(KafkaError.COORDINATOR_LOAD_IN_PROGRESS, retriable=True), Action.RETRY),
        (err(KafkaError._STATE), Action.FAIL),
    ],
)
def test_commit_errors(error: Any, action: Action) -> None:
    assert kafka_errors.on_commit(error) is action


@pytest.mark.parametrize(
    ("error", "action"),
    [
        (err(KafkaError.MSG_SIZE_TOO_LARGE), Action.REFUSE_RECORD),
        (err(KafkaError._INVALID_ARG), Action.REFUSE_RECORD),
        (err(KafkaError.TOPIC_EXCEPTION), Action.REFUSE_RECORD),
        (err(KafkaError._FATAL, fatal=True), Action.FATAL),
        (err(KafkaError._UNKNOWN_TOPIC), Action.FAIL),
    ],
)
def test_produce_errors(error: Any, action: Action) -> None:
    assert kafka_errors.on_produce(error) is action


def test_control_and_begin_errors() -> None:
    assert kafka_errors.on_control(err(KafkaError._TIMED_OUT, retriable=True)) is Action.RETRY
    assert kafka_errors.on_control(err(KafkaError._STATE)) is Action.FATAL
    assert kafka_errors.on_control(err(KafkaError._FENCED, fatal=True, retriable=True)) is (
        Action.FATAL
    )
    assert kafka_errors.on_begin(err(KafkaError._TRANSPORT, retriable=True)) is Action.FAIL
    assert kafka_errors.on_begin(err(KafkaError._STATE)) is Action.FATAL


def test_delivery_report_errors() -> None:
    assert kafka_errors.is_permanent_record_error(err(KafkaError.MSG_SIZE_TOO_LARGE))
    assert not kafka_errors.is_permanent_record_error(err(KafkaError._MSG_TIMED_OUT))


class ScriptedProducer:
    """A confluent-kafka Producer stand-in: each method pops its next scripted outcome."""

    def __init__(self, script: dict[str, list[Any]]) -> None:
        self.script = script
        self.calls: list[str] = []
        self.produced: list[tuple[str, bytes]] = []
        self.reports: list[Any] = []
        self.previous: Any = None

    def _next(self, name: str) -> None:
        self.calls.append(name)
        outcomes = self.script.get(name, [])
        outcome = outcomes.pop(0) if outcomes else None
        if outcome is not None:
            raise KafkaException(outcome)

    def init_transactions(self, _timeout: float) -> None:
        self._next("init")

    def begin_transaction(self) -> None:
        self._next("begin")

    def produce(self, topic: str, *, value: bytes, on_delivery: Any, **_kw: Any) -> None:
        now = self.script.get("report_now", [])
        if now:  # the previous record's delivery report, arriving before this produce()
            error = now.pop(0)
            if error is not None:
                self.previous(error, None)
        self.previous = on_delivery
        self._next("produce")
        self.produced.append((topic, value))
        report = self.script.get("report", [])
        if report and report[0] is not None and len(self.produced) == 1:
            self.reports.append((on_delivery, report.pop(0)))

    def commit_transaction(self, _timeout: float) -> None:
        for callback, error in self.reports:
            callback(error, None)
        self.reports.clear()
        self._next("commit")

    def abort_transaction(self, _timeout: float) -> None:
        self._next("abort")

    def poll(self, _timeout: float) -> int:
        # Not in `calls` (it happens around every call); raises only when scripted.
        outcomes = self.script.get("poll", [])
        if outcomes:
            raise KafkaException(outcomes.pop(0))
        return 0

    def list_topics(self, *_a: Any, **_kw: Any) -> None:
        return None


def sink_with(script: dict[str, list[Any]]) -> tuple[KafkaSink, ScriptedProducer]:
    producer = ScriptedProducer(script)
    config = KafkaSinkConfig(bootstrap_servers="b:9092", transactional_id="t")
    sink = KafkaSink(config, producer_factory=lambda _conf: producer, metrics=Metrics())
    sink.start()
    return sink, producer


def batch(n: int = 3) -> Batch:
    return Batch([OutRecord("t", b"k", f"v{i}".encode(), ()) for i in range(n)])


def test_a_clean_batch_commits_once() -> None:
    sink, producer = sink_with({})
    assert sink.write_batch(batch()) == []
    assert producer.calls == ["init", "begin", "produce", "produce", "produce", "commit"]


def test_a_commit_timeout_is_retried_never_aborted() -> None:
    timeout = err(KafkaError._TIMED_OUT, retriable=True)
    sink, producer = sink_with({"commit": [timeout, timeout]})
    assert sink.write_batch(batch(1)) == []
    assert producer.calls.count("commit") == 3 and "abort" not in producer.calls


def test_abortable_commit_reports_permanently_refused_records() -> None:
    abortable = err(KafkaError.INVALID_PRODUCER_EPOCH, abort=True)
    too_large = err(KafkaError.MSG_SIZE_TOO_LARGE)
    sink, producer = sink_with({"commit": [abortable], "report": [too_large]})
    refused = sink.write_batch(batch())
    assert refused == [Refused(0, refused[0].reason)] and "MSG_SIZE_TOO_LARGE" in refused[0].reason
    assert producer.calls[-2:] == ["commit", "abort"]


def test_abortable_commit_without_refusals_raises_to_resend() -> None:
    sink, producer = sink_with({"commit": [err(KafkaError._STATE, abort=True)]})
    with pytest.raises(SinkError) as info:
        sink.write_batch(batch())
    assert not info.value.fatal and producer.calls[-1] == "abort"


def test_a_fatal_commit_asks_for_a_rebuild() -> None:
    sink, _ = sink_with({"commit": [err(KafkaError._FENCED, fatal=True)]})
    with pytest.raises(SinkError) as info:
        sink.write_batch(batch())
    assert info.value.fatal


def test_a_record_refused_at_produce_aborts_and_is_reported() -> None:
    sink, producer = sink_with({"produce": [None, err(KafkaError.MSG_SIZE_TOO_LARGE)]})
    refused = sink.write_batch(batch())
    assert [r.index for r in refused] == [1]
    assert "commit" not in producer.calls and producer.calls[-1] == "abort"


def test_a_record_refused_while_producing_is_reported_not_resent_forever() -> None:
    # Record 0's delivery report says INVALID_RECORD; librdkafka then refuses record 1
    # with _STATE (the transaction failed). The sink must report record 0.
    invalid = err(KafkaError.INVALID_RECORD)
    sink, producer = sink_with(
        {"report_now": [None, invalid], "produce": [None, err(KafkaError._STATE)]}
    )
    refused = sink.write_batch(batch())
    assert [r.index for r in refused] == [0] and "INVALID_RECORD" in refused[0].reason
    assert "commit" not in producer.calls and producer.calls[-1] == "abort"


def test_a_producer_that_failed_while_polled_asks_for_a_rebuild() -> None:
    """The broker aborted a transaction that outlived transaction.timeout.ms while it was
    away: librdkafka reports it from poll(), which must become a fatal SinkError (the
    pipeline rebuilds the producer), never a raw KafkaException ending the bridge."""
    sink, producer = sink_with({})
    producer.script["poll"] = [err(KafkaError.INVALID_TXN_STATE, fatal=True)]
    with pytest.raises(SinkError) as info:
        sink.write_batch(batch())
    assert info.value.fatal and "INVALID_TXN_STATE" in str(info.value)


def test_a_batch_taken_back_before_commit_is_aborted() -> None:
    sink, producer = sink_with({})
    taken_back = batch()
    taken_back.still_wanted = lambda: "1 of its messages will be redelivered by their source"
    with pytest.raises(SinkError, match="taken back before commit"):
        sink.write_batch(taken_back)
    assert "commit" not in producer.calls and producer.calls[-1] == "abort"


def test_markers_go_in_the_transaction_to_partition_zero() -> None:
    producer = ScriptedProducer({})
    config = KafkaSinkConfig(bootstrap_servers="b:9092", transactional_id="t")
    sink = KafkaSink(
        config, producer_factory=lambda _c: producer, metrics=Metrics(), dedup_namespace="ns"
    )
    sink.start()
    keyed = batch(3)
    keyed.keys = [("tmc", 1), ("tmc", 2), ("ons", 3)]
    assert sink.write_batch(keyed) == []
    assert producer.calls[-1] == "commit"
    markers = [(t, v) for t, v in producer.produced if t == config.dedup.topic]
    assert [v for _, v in markers] == [
        b"\x01" + (1).to_bytes(8, "big") + (2).to_bytes(8, "big"),
        b"\x01" + (3).to_bytes(8, "big"),
    ]
