"""The pipeline with a committed-ids store that is not always current (Kafka's topic):
deliveries wait, in arrival order, until the store served their ticket."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from bridge.config import PipelineConfig, RoutingConfig
from bridge.errors import SinkError
from bridge.headers import H_MESSAGE_ID
from bridge.model import Delivery, OutRecord
from bridge.observability.metrics import Metrics
from bridge.pipeline.engine import Pipeline
from bridge.pipeline.ports import MessageKey
from bridge.pipeline.routing import Router
from tests.unit.test_pipeline import ScriptedSink, delivery


class FollowerStore:
    """Tickets count up; the test serves them (as the follower thread would)."""

    def __init__(self) -> None:
        self.known: set[MessageKey] = set()
        self.asked = 0
        self.callback: Callable[[int], None] | None = None

    def __contains__(self, key: object) -> bool:
        return key in self.known

    def add_all(self, keys: Iterable[MessageKey]) -> None:
        pass  # like Kafka's store: ids come back through the topic

    def ticket(self) -> int:
        self.asked += 1
        return self.asked

    def listen(self, callback: Callable[[int], None]) -> None:
        self.callback = callback

    def serve(self, ticket: int) -> None:
        assert self.callback is not None
        self.callback(ticket)

    def start(self) -> None:
        pass

    async def wait_ready(self) -> None:
        pass

    def problem(self) -> str | None:
        return None

    def close(self) -> None:
        pass


def make(sink: ScriptedSink, store: FollowerStore, **cfg: object) -> Pipeline:
    base = {
        "batch_max_messages": 10,
        "batch_linger_ms": 0,
        "retry_backoff_min_s": 0.01,
        "retry_backoff_max_s": 0.02,
    }
    return Pipeline(
        PipelineConfig(**{**base, **cfg}),  # type: ignore[arg-type]
        Router(RoutingConfig()),
        sink,
        metrics=Metrics(),
        committed=store,
    )


async def started(sink: ScriptedSink, store: FollowerStore, **cfg: object) -> Pipeline:
    p = make(sink, store, **cfg)
    await p.start_sink()
    return p


async def test_nothing_is_decided_before_the_store_served_its_ticket() -> None:
    log: list[tuple[str, int]] = []
    sink, store = ScriptedSink(), FollowerStore()
    p = await started(sink, store)
    writer = asyncio.create_task(p.run())
    store.known.add(("tmc", 2))  # committed by another replica
    for i in range(1, 5):
        await p.submit(delivery(log, i))
    await asyncio.sleep(0.05)
    assert log == [] and sink.batches == [] and p.in_flight == 4
    store.serve(2)  # current as of the first two arrivals only
    await asyncio.sleep(0.05)
    assert ("confirm", 2) in log
    assert [_id(r) for r in sink.committed] == [1]
    store.serve(4)
    await asyncio.sleep(0.05)
    assert [_id(r) for r in sink.committed] == [1, 3, 4]
    assert sorted(log) == [("confirm", i) for i in range(1, 5)]
    assert p.stats.duplicates_committed == 1 and p.stats.committed == 3
    await asyncio.wait_for(_drain(p, writer), 5)


async def _drain(p: Pipeline, writer: asyncio.Task[None]) -> None:
    p.close()
    await writer


async def test_a_redelivery_of_an_undecided_message_folds_into_it() -> None:
    log: list[tuple[str, int]] = []
    sink, store = ScriptedSink(), FollowerStore()
    p = await started(sink, store)
    writer = asyncio.create_task(p.run())
    await p.submit(delivery(log, 7))
    await p.submit(delivery(log, 7))
    assert store.asked == 1  # the second one asked nothing: it is held
    store.known.add(("tmc", 7))
    store.serve(1)
    await asyncio.sleep(0.05)
    assert log == [("confirm", 7), ("confirm", 7)] and sink.batches == []
    await asyncio.wait_for(_drain(p, writer), 5)


async def test_drain_waits_for_undecided_deliveries() -> None:
    log: list[tuple[str, int]] = []
    sink, store = ScriptedSink(), FollowerStore()
    p = await started(sink, store)
    writer = asyncio.create_task(p.run())
    await p.submit(delivery(log, 1))
    p.close()
    await asyncio.sleep(0.05)
    assert not writer.done()  # still waiting for the store
    store.serve(1)
    await asyncio.wait_for(writer, 5)
    assert log == [("confirm", 1)]


async def test_undecided_deliveries_count_against_max_in_flight() -> None:
    log: list[tuple[str, int]] = []
    sink, store = ScriptedSink(), FollowerStore()
    p = await started(sink, store, max_in_flight=2)
    writer = asyncio.create_task(p.run())
    await p.submit(delivery(log, 1))
    await p.submit(delivery(log, 2))
    third = asyncio.create_task(p.submit(delivery(log, 3)))
    await asyncio.sleep(0.05)
    assert not third.done()
    store.serve(2)
    await asyncio.wait_for(third, 5)
    store.serve(3)
    await asyncio.wait_for(_drain(p, writer), 5)
    assert sorted(log) == [("confirm", 1), ("confirm", 2), ("confirm", 3)]


async def test_order_is_kept_when_later_arrivals_were_served_first() -> None:
    """Served tickets release deliveries strictly in arrival order."""
    log: list[tuple[str, int]] = []
    sink, store = ScriptedSink(), FollowerStore()
    p = await started(sink, store)
    writer = asyncio.create_task(p.run())
    for i in range(1, 7):
        await p.submit(delivery(log, i))
    store.serve(6)
    await asyncio.wait_for(_drain(p, writer), 5)
    assert [_id(r) for r in sink.committed] == list(range(1, 7))


def _id(record: OutRecord) -> int:
    return int(dict(record.headers)[H_MESSAGE_ID])


class MortalAck:
    """An ack whose connection the test can end."""

    def __init__(self, log: list[tuple[str, int]], msg_id: int) -> None:
        self.log, self.id, self.live = log, msg_id, True

    def alive(self) -> bool:
        return self.live

    def confirm(self) -> None:
        self.log.append(("confirm", self.id))

    def fail(self, reason: str) -> None:
        self.log.append(("fail", self.id))


def mortal(log: list[tuple[str, int]], i: int) -> tuple[Delivery, MortalAck]:
    d = delivery(log, i)
    ack = MortalAck(log, i)
    d.acks = [ack]
    return d, ack


async def test_a_delivery_whose_connection_died_while_undecided_is_given_up() -> None:
    """Its source redelivers it, maybe to another replica: writing it here could write it
    twice, and confirming is impossible anyway."""
    log: list[tuple[str, int]] = []
    sink, store = ScriptedSink(), FollowerStore()
    p = await started(sink, store)
    writer = asyncio.create_task(p.run())
    first, ack = mortal(log, 1)
    await p.submit(first)
    await p.submit(delivery(log, 2))
    ack.live = False
    store.serve(2)
    await asyncio.wait_for(_drain(p, writer), 5)
    assert [_id(r) for r in sink.committed] == [2]
    assert log == [("confirm", 2)] and p.stats.given_up == 1 and p.in_flight == 0


async def test_a_batch_is_taken_back_before_commit_when_a_connection_died() -> None:
    log: list[tuple[str, int]] = []
    sink, store = ScriptedSink(), FollowerStore()
    p = await started(sink, store)
    first, ack = mortal(log, 1)
    await p.submit(first)
    store.serve(1)
    batch = p._batch(list(p._queue))  # what the writer hands the sink
    assert batch.still_wanted is not None and batch.still_wanted() is None
    ack.live = False
    assert batch.still_wanted() == "1 of its messages will be redelivered by their source"


async def test_a_retry_confirms_what_another_replica_committed_meanwhile() -> None:
    """The batch failed; before it is sent again the store is asked once more: what
    another replica committed meanwhile is confirmed, not written a second time."""
    log: list[tuple[str, int]] = []
    sink = ScriptedSink([SinkError("broker away")])
    store = FollowerStore()
    p = await started(sink, store)
    writer = asyncio.create_task(p.run())
    for i in (1, 2, 3):
        await p.submit(delivery(log, i))
    store.serve(3)
    await asyncio.sleep(0.005)  # the first attempt fails; the retry waits for the store
    store.known.add(("tmc", 2))  # meanwhile committed by another replica
    for _ in range(50):
        await asyncio.sleep(0.01)
        store.serve(store.asked)
    await asyncio.wait_for(_drain(p, writer), 5)
    assert [[_id(r) for r in b] for b in sink.batches] == [[1, 2, 3], [1, 3]]
    assert sorted(log) == [("confirm", 1), ("confirm", 2), ("confirm", 3)]
    assert p.stats.duplicates_committed == 1
