"""Pipeline decisions (ordering, retries, dead letters, dedupe, back-pressure) with a
scripted in-memory sink. Broker behaviour itself is covered by tests/integration."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from bridge.config import PipelineConfig, RoutingConfig
from bridge.errors import SinkError, SinkStopped
from bridge.model import Delivery, OutRecord, SourceMessage
from bridge.observability.metrics import Metrics
from bridge.pipeline.engine import Pipeline
from bridge.pipeline.ports import Batch, Refused
from bridge.pipeline.routing import Router


class Ack:
    def __init__(self, log: list[tuple[str, int]], msg_id: int) -> None:
        self.log, self.id = log, msg_id

    def alive(self) -> bool:
        return True

    def confirm(self) -> None:
        self.log.append(("confirm", self.id))

    def fail(self, reason: str) -> None:
        self.log.append(("fail", self.id))


class ScriptedSink:
    """Each write pops the next scripted outcome: None = commit, an exception = raise,
    a list = refusals."""

    name = "scripted"

    def __init__(self, script: list[object] | None = None) -> None:
        self.script = list(script or [])
        self.batches: list[list[OutRecord]] = []
        self.committed: list[OutRecord] = []
        self.rebuilds = 0
        self.gate = threading.Event()
        self.gate.set()
        self.stopped = False
        self.ready = True
        self.last_error: str | None = None
        self.probes: list[object] = []

    def start(self) -> None:
        pass

    def probe(self) -> bool:
        outcome = self.probes.pop(0) if self.probes else None
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome is None

    def write_batch(self, batch: Batch) -> list[Refused]:
        self.gate.wait(10)
        if self.stopped:
            raise SinkStopped("stopped")
        records = batch.records
        self.batches.append(list(records))
        outcome = self.script.pop(0) if self.script else None
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, list):
            return [Refused(index, reason) for index, reason in outcome]
        self.committed.extend(records)
        return []

    def rebuild(self) -> None:
        self.rebuilds += 1

    def stop(self) -> None:
        self.stopped = True
        self.gate.set()

    def close(self) -> None:
        pass


def delivery(log: list[tuple[str, int]], i: int, content: str | None = None) -> Delivery:
    body = content if content is not None else f'{{"tid": {1000 + i % 3}}}'
    msg = SourceMessage("tmc", i, "taobao_trade_TradeCreate", body.encode())
    return Delivery(msg, [Ack(log, i)])


def make(sink: ScriptedSink, **cfg: object) -> Pipeline:
    base = {
        "batch_max_messages": 4,
        "batch_linger_ms": 0,
        "retry_backoff_min_s": 0.01,
        "retry_backoff_max_s": 0.02,
    }
    return Pipeline(
        PipelineConfig(**{**base, **cfg}), Router(RoutingConfig()), sink, metrics=Metrics()
    )  # type: ignore[arg-type]


async def drain(pipeline: Pipeline) -> None:
    pipeline.close()
    await asyncio.wait_for(pipeline.run(), 10)


async def test_confirms_follow_commits_in_arrival_order() -> None:
    log: list[tuple[str, int]] = []
    sink = ScriptedSink()
    p = make(sink)
    for i in range(10):
        await p.submit(delivery(log, i))
    assert log == []  # nothing confirmed before a commit
    await drain(p)
    assert [len(b) for b in sink.batches] == [4, 4, 2]
    assert log == [("confirm", i) for i in range(10)]
    ids = [int(dict(r.headers)["tmc.message_id"]) for r in sink.committed]
    assert ids == list(range(10))


async def test_failed_batch_is_resent_whole_before_later_ones_and_not_confirmed_early() -> None:
    log: list[tuple[str, int]] = []
    sink = ScriptedSink([None, SinkError("abortable"), SinkError("again")])
    p = make(sink)
    for i in range(8):
        await p.submit(delivery(log, i))
    await drain(p)
    sent = [[int(dict(r.headers)["tmc.message_id"]) for r in b] for b in sink.batches]
    assert sent == [[0, 1, 2, 3], [4, 5, 6, 7], [4, 5, 6, 7], [4, 5, 6, 7]]
    assert log == [("confirm", i) for i in range(8)]
    assert p.stats.batch_retries == 2


async def test_fatal_error_rebuilds_the_sink_then_resends() -> None:
    log: list[tuple[str, int]] = []
    sink = ScriptedSink([SinkError("fenced", fatal=True)])
    p = make(sink)
    await p.submit(delivery(log, 1))
    await drain(p)
    assert sink.rebuilds == 1 and len(sink.batches) == 2 and log == [("confirm", 1)]


async def test_refused_record_is_dead_lettered_and_the_rest_kept_in_order() -> None:
    log: list[tuple[str, int]] = []
    sink = ScriptedSink([[(1, "MSG_SIZE_TOO_LARGE: too big")]])
    p = make(sink)
    for i in range(3):
        await p.submit(delivery(log, i))
    await drain(p)
    topics = [r.topic for r in sink.committed]
    assert topics == ["tmc.messages", "tmc.dlq", "tmc.messages"]
    assert dict(sink.committed[1].headers)["tmc.dlq.reason"] == b"MSG_SIZE_TOO_LARGE: too big"
    assert log == [("confirm", 0), ("confirm", 1), ("confirm", 2)]
    assert p.stats.dead_lettered == 1


async def test_unparseable_content_is_dead_lettered_then_confirmed() -> None:
    log: list[tuple[str, int]] = []
    sink = ScriptedSink()
    p = make(sink)
    await p.submit(delivery(log, 1, "{oops"))
    await drain(p)
    assert sink.committed[0].topic == "tmc.dlq" and log == [("confirm", 1)]


async def test_redeliveries_are_folded_or_confirmed_from_the_committed_cache() -> None:
    log: list[tuple[str, int]] = []
    sink = ScriptedSink()
    p = make(sink)
    await p.submit(delivery(log, 1))
    await p.submit(delivery(log, 1))  # redelivered while in flight
    runner = asyncio.create_task(p.run())
    await asyncio.sleep(0.1)
    assert log == [("confirm", 1), ("confirm", 1)]  # both acks settle on the one commit
    await p.submit(delivery(log, 1))  # redelivered after commit: confirmed at once
    assert log[-1] == ("confirm", 1) and len(sink.committed) == 1
    assert (p.stats.duplicates_in_flight, p.stats.duplicates_committed) == (1, 1)
    p.close()
    await runner


async def test_submit_waits_when_max_in_flight_is_reached() -> None:
    log: list[tuple[str, int]] = []
    sink = ScriptedSink()
    sink.gate.clear()  # the sink hangs: nothing commits
    p = make(sink, max_in_flight=3)
    runner = asyncio.create_task(p.run())
    for i in range(3):
        await p.submit(delivery(log, i))
    blocked = asyncio.create_task(p.submit(delivery(log, 3)))
    await asyncio.sleep(0.1)
    assert not blocked.done() and p.in_flight == 3
    sink.gate.set()
    await asyncio.wait_for(blocked, 5)
    p.close()
    await asyncio.wait_for(runner, 5)
    assert [x for _, x in log] == [0, 1, 2, 3]


async def test_give_up_hands_the_batch_and_the_queue_behind_back_as_failed() -> None:
    log: list[tuple[str, int]] = []
    sink = ScriptedSink([SinkError("down")] * 100)
    p = make(sink, give_up_after_s=0.05, batch_max_messages=2)
    for i in range(5):
        await p.submit(delivery(log, i))
    await drain(p)
    assert sorted(log) == [("fail", i) for i in range(5)]
    assert p.in_flight == 0 and p.stats.failed_back == 5


async def test_abort_confirms_nothing_uncommitted() -> None:
    log: list[tuple[str, int]] = []
    sink = ScriptedSink()
    sink.gate.clear()
    p = make(sink)
    runner = asyncio.create_task(p.run())
    await p.submit(delivery(log, 1))
    await asyncio.sleep(0.05)
    p.abort()
    await asyncio.wait_for(runner, 5)
    assert log == [] and p.in_flight == 1


@pytest.mark.parametrize("n", [1, 7])
async def test_linger_holds_a_small_batch_until_it_expires(n: int) -> None:
    log: list[tuple[str, int]] = []
    sink = ScriptedSink()
    p = make(sink, batch_linger_ms=100, batch_max_messages=100)
    runner = asyncio.create_task(p.run())
    for i in range(n):
        await p.submit(delivery(log, i))
    await asyncio.sleep(0.03)
    assert sink.batches == []
    await asyncio.sleep(0.15)
    assert len(sink.batches) == 1 and len(sink.batches[0]) == n
    p.close()
    await runner


async def test_refused_dead_letter_is_emptied_then_written() -> None:
    """A dead letter the broker refuses too (small dead-letter topic) loses its value but
    keeps its headers, so it is still written and the message is still confirmed."""
    log: list[tuple[str, int]] = []
    sink = ScriptedSink([[(0, "MSG_SIZE_TOO_LARGE")], [(0, "MSG_SIZE_TOO_LARGE")]])
    p = make(sink)
    await p.submit(delivery(log, 1))
    await drain(p)
    [record] = sink.committed
    headers = dict(record.headers)
    assert record.topic == "tmc.dlq" and record.value == b""
    assert headers["tmc.dlq.truncated"] == b"true" and headers["tmc.message_id"] == b"1"
    assert log == [("confirm", 1)] and len(sink.batches) == 3


def sample(p: Pipeline, name: str, **labels: str) -> float:
    value = p.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_metrics_count_what_the_pipeline_did() -> None:
    log: list[tuple[str, int]] = []
    # Batch 1 commits; batch 2 fails once, then has record 1 refused, then commits.
    sink = ScriptedSink([None, SinkError("down", error_class="_TRANSPORT"), [(1, "too big")]])
    p = make(sink)
    for i in range(8):
        await p.submit(delivery(log, i))
    await p.submit(delivery(log, 3))  # a redelivery while held
    bad = Delivery(SourceMessage("tmc", 99, "taobao_item_ItemAdd", b"not json"), [Ack(log, 99)])
    await p.submit(bad)
    assert sample(p, "tmc_bridge_pipeline_in_flight_messages") == 9
    await drain(p)

    trade = {"source": "tmc", "topic": "taobao_trade_TradeCreate"}
    assert sample(p, "tmc_bridge_source_received_messages_total", **trade) == 8
    assert sample(p, "tmc_bridge_source_confirmed_messages_total", **trade) == 8
    dups = "tmc_bridge_source_duplicate_messages_total"
    assert sample(p, dups, source="tmc", kind="in_flight") == 1
    sink_topic = {"sink": "scripted", "topic": "tmc.messages"}
    # 8 trades and the unparseable item: one record each, two of them dead letters.
    assert sample(p, "tmc_bridge_sink_produced_messages_total", **sink_topic) == 7
    produced = "tmc_bridge_sink_produced_messages_total"
    assert sample(p, produced, sink="scripted", topic="tmc.dlq") == 2
    dead = "tmc_bridge_sink_dead_lettered_messages_total"
    assert sample(p, dead, sink="scripted", source_topic="taobao_trade_TradeCreate") == 1
    assert sample(p, dead, sink="scripted", source_topic="taobao_item_ItemAdd") == 1
    tx = "tmc_bridge_sink_transactions_total"
    assert sample(p, tx, sink="scripted", outcome="committed") == 3
    assert sample(p, tx, sink="scripted", outcome="aborted") == 2
    assert sample(p, tx, sink="scripted", outcome="retried") == 2
    assert sample(p, "tmc_bridge_sink_errors_total", sink="scripted", error_class="_TRANSPORT") == 1
    assert sample(p, "tmc_bridge_pipeline_batch_size_messages_count") == 3
    assert sample(p, "tmc_bridge_pipeline_batch_size_messages_sum") == 9
    assert sample(p, "tmc_bridge_pipeline_confirm_latency_seconds_count", source="tmc") == 9
    assert sample(p, "tmc_bridge_pipeline_in_flight_messages") == 0


async def test_failed_back_messages_are_counted_per_topic() -> None:
    log: list[tuple[str, int]] = []
    sink = ScriptedSink([SinkError("down")] * 50)
    p = make(sink, give_up_after_s=0.05)
    for i in range(3):
        await p.submit(delivery(log, i))
    await drain(p)
    assert ("fail", 0) in log
    trade = {"source": "tmc", "topic": "taobao_trade_TradeCreate"}
    assert sample(p, "tmc_bridge_source_failed_messages_total", **trade) == 3
    assert sample(p, "tmc_bridge_source_confirmed_messages_total", **trade) == 0


async def until(predicate: Callable[[], bool]) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 5 s")


async def test_sink_problem_follows_probes_failures_and_stalls() -> None:
    sink = ScriptedSink([SinkError("broker gone", error_class="_TRANSPORT")])
    p = make(sink, sink_probe_interval_s=0.01, sink_stall_s=0.2)
    assert p.sink_problem() == "sink starting"
    await p.start_sink()
    assert p.sink_problem() is None
    assert sample(p, "tmc_bridge_sink_up", sink="scripted") == 1
    # An idle probe that fails makes the sink not ready until one succeeds.
    sink.probes = [SinkError("metadata timed out")] * 10_000
    writer = asyncio.create_task(p.run())
    await until(lambda: p.sink_problem() is not None)
    assert p.sink_problem() == "scripted sink failing: metadata timed out"
    sink.probes = []
    await until(lambda: p.sink_problem() is None)  # the next probe went through
    # A failed batch: not ready while it waits for its retry.
    sink.gate.clear()
    log: list[tuple[str, int]] = []
    await p.submit(delivery(log, 1))
    await asyncio.sleep(0.3)
    problem = p.sink_problem()
    assert problem is not None and "stalled" in problem
    assert sample(p, "tmc_bridge_sink_up", sink="scripted") == 0
    sink.gate.set()
    await asyncio.sleep(0.005)
    sink.ready = False
    assert p.sink_problem() == "scripted sink not connected"
    sink.ready = True
    p.close()
    await asyncio.wait_for(writer, 10)
    assert p.sink_problem() is None
    assert log == [("confirm", 1)]


async def test_a_sink_without_a_real_probe_stays_failing_until_a_commit() -> None:
    sink = ScriptedSink([SinkError("down")] * 3)
    sink.probes = [False] * 10_000  # e.g. RocketMQ: nothing to ask the broker
    p = make(sink, give_up_after_s=0.01, sink_probe_interval_s=0.01)
    await p.start_sink()
    writer = asyncio.create_task(p.run())
    log: list[tuple[str, int]] = []
    await p.submit(delivery(log, 1))
    await until(lambda: ("fail", 1) in log)
    await asyncio.sleep(0.1)  # several idle "probes" later
    assert p.sink_problem() == "scripted sink failing: down"
    await p.submit(delivery(log, 2))
    await until(lambda: ("confirm", 2) in log)
    assert p.sink_problem() is None
    p.close()
    await asyncio.wait_for(writer, 10)


class BrokenRouter(Router):
    """A router with a bug that only some input triggers."""

    def route(self, msg: SourceMessage) -> OutRecord:
        if msg.message_id == 13:
            raise RecursionError("maximum recursion depth exceeded")
        return super().route(msg)


async def test_a_routing_bug_dead_letters_that_message_and_the_pipeline_goes_on() -> None:
    log: list[tuple[str, int]] = []
    sink = ScriptedSink()
    p = Pipeline(
        PipelineConfig(batch_linger_ms=0), BrokenRouter(RoutingConfig()), sink, metrics=Metrics()
    )
    for i in (12, 13, 14):
        await p.submit(delivery(log, i))
    await drain(p)
    assert log == [("confirm", 12), ("confirm", 13), ("confirm", 14)]
    dead = [r for r in sink.committed if r.dead_letter_reason is not None]
    assert len(dead) == 1 and dead[0].topic == "tmc.dlq"
    assert "RecursionError" in dead[0].dead_letter_reason
    assert dict(dead[0].headers)["tmc.message_id"] == b"13"
    assert dead[0].value == b'{"tid": 1001}'


async def test_metric_topic_labels_are_bounded() -> None:
    log: list[tuple[str, int]] = []
    p = make(ScriptedSink())
    for i in range(520):
        msg = SourceMessage("tmc", i, f"invented_{i}", b"{}")
        await p.submit(Delivery(msg, [Ack(log, i)]))
    await drain(p)
    names = {
        s.labels["topic"]
        for fam in p.metrics.registry.collect()
        if fam.name == "tmc_bridge_source_received_messages"
        for s in fam.samples
        if s.name.endswith("_total")
    }
    assert len(names) == 501 and "(other)" in names
    received = "tmc_bridge_source_received_messages_total"
    assert sample(p, received, source="tmc", topic="(other)") == 20
