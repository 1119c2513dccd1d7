"""Sink conformance: what the pipeline relies on of every sink, against the real brokers.

The port (``bridge/pipeline/ports.py``): ``write_batch`` commits every record of the batch
and returns ``[]``; or returns the records refused for good (``Refused(index, reason)``);
or raises ``SinkError``. The engine then swaps each refused record for its dead letter and
calls ``write_batch`` again with the same ``Batch`` object (same ``seq``), or, after a
SinkError, simply calls it again. ``stop()`` from another thread makes a pending write give
up (``SinkStopped``) at its next retry point. Each test here plays the engine's part
against one sink (``target``: Kafka, RocketMQ ordered, RocketMQ transactional) and checks
the outcome through the broker, with a fresh consumer:

* every record of a committed batch is visible exactly once, and (Kafka, RocketMQ ordered)
  each key's records share one partition/queue, in batch order. RocketMQ transactional
  gives up queue placement (README), so for it only "once each" is checked;
* a record too large for the client or for the broker comes back as ``Refused`` with its
  index; after the swap the same batch commits, each record once;
* the same batch written again after a SinkError commits each record once;
* ``stop()`` ends a blocked start/write with SinkStopped within seconds, and close() returns.

What a failed attempt leaves behind differs by sink. Kafka aborts the transaction, so
nothing of it is visible (checked with a read_committed consumer): the port's "all records
or none". RocketMQ sends record by record, so what was acknowledged before the failure is
stored and visible (ordered: every other send lane, and the failed record's lane up to it;
transactional, one lane: the records before it); the retry of the same batch sends only
the rest (resume by ``seq``, which the port allows for), so "once each" after the retry is
what holds, and what is checked. Each failing first attempt here gets that far by
construction (the failing record is not the first of the batch).
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import pytest

from bridge.config import RoutingConfig
from bridge.errors import SinkError, SinkStopped
from bridge.headers import H_MESSAGE_ID, H_TOPIC
from bridge.model import OutRecord
from bridge.pipeline.ports import Batch, BatchSink, Refused
from bridge.pipeline.routing import Router
from devtools.harness import Arrived
from tests.contract.conftest import BLOCKING_CALL_S, Call, Limit, Target, blocking

pytestmark = pytest.mark.integration

#: stop() is honoured at the sink's next retry point: within its longest blocking call.
STOP_WITHIN_S = BLOCKING_CALL_S + 3.0
#: How long a write must have been running to count as blocked.
BLOCKED_FOR_S = 1.5
#: TMC message ids are above 2^53; consumers key on them (header / user property).
_ids = itertools.count(5_100_407_800_000_000_000 + random.randrange(10**12) * 10**4)


def make_batch(topics: Sequence[str], count: int, keys: int, *, seed: int) -> Batch:
    """``count`` records over ``keys`` order ids, spread over ``topics``, as the router
    makes them: key = order id, value = the content, headers with topic and message id."""
    rng = random.Random(seed)
    order_ids = [rng.randrange(10**15, 10**16) for _ in range(keys)]
    records = []
    for seq in range(count):
        tid = rng.choice(order_ids)
        records.append(
            record(rng.choice(topics), tid, json.dumps({"tid": tid, "seq": seq}).encode())
        )
    return Batch(records)


def record(topic: str, tid: int, value: bytes) -> OutRecord:
    headers = ((H_TOPIC, b"taobao_trade_TradeCreate"), (H_MESSAGE_ID, str(next(_ids)).encode()))
    return OutRecord(topic=topic, key=str(tid).encode(), value=value, headers=headers)


def message_id(rec: OutRecord) -> int:
    return int(dict(rec.headers)[H_MESSAGE_ID])


def positions(batch: Batch) -> dict[int, int]:
    """Message id -> index in the batch (dead letters keep the message id)."""
    return {message_id(r): i for i, r in enumerate(batch.records)}


def assert_once_each(arrived: list[Arrived], expected: Iterable[int]) -> None:
    counts = Counter(a.message_id for a in arrived)
    want = set(expected)
    missing = sorted(want - counts.keys())
    duplicated = {i: n for i, n in counts.items() if n > 1}
    foreign = sorted(counts.keys() - want)
    assert (missing, duplicated, foreign) == ([], {}, []), (
        f"{len(missing)} missing (first: {missing[:5]}), duplicated: "
        f"{dict(itertools.islice(duplicated.items(), 5))}, not of this batch: {foreign[:5]}"
    )


def assert_key_order(arrived: list[Arrived], index_of: dict[int, int]) -> None:
    """Per topic and key: one partition/queue, offsets in batch order."""
    by_key: defaultdict[tuple[str, bytes | None], list[Arrived]] = defaultdict(list)
    for a in arrived:
        by_key[(a.topic, a.key)].append(a)
    problems = []
    for (topic, key), recs in by_key.items():
        if len({r.partition for r in recs}) > 1:
            # Which records went where (batch index, partition/queue, offset): enough to
            # tell a moved key from a re-read or a retry in a failure report.
            placed = sorted((index_of.get(r.message_id, -1), r.partition, r.offset) for r in recs)
            problems.append(
                f"{topic} key {key!r} in partitions {sorted({r.partition for r in recs})}: "
                f"(index, partition, offset) {placed}"
            )
            continue
        order = [index_of[r.message_id] for r in sorted(recs, key=lambda r: r.offset)]
        if order != sorted(order):
            problems.append(f"{topic} key {key!r}: batch indices in offset order {order}")
    assert not problems, problems[:5]
    assert len(by_key) > 1


def write(sink: BatchSink, batch: Batch) -> list[Refused]:
    refused: list[Refused] = blocking(sink.write_batch, batch)
    return refused


def started(target: Target, **overrides: object) -> BatchSink:
    sink = target.sink(**overrides)
    blocking(sink.start)
    return sink


# -- 1. commit, once each, order per key ---------------------------------------------------


def test_batch_commits_every_record_once_in_key_order(target: Target) -> None:
    topics = [target.topic(), target.topic()]
    batch = make_batch(topics, 200, keys=20, seed=1)
    sink = started(target)

    assert write(sink, batch) == []

    arrived = target.read(topics, expected=200)
    assert_once_each(arrived, positions(batch))
    if target.keeps_key_order:
        assert_key_order(arrived, positions(batch))


# -- 2. refusal reporting ----------------------------------------------------------------


@pytest.mark.parametrize("limit", ["client", "broker"])
def test_too_large_record_is_refused_then_the_same_batch_commits_once(
    target: Target, limit: Limit
) -> None:
    """``client``: the client library refuses the record before sending (librdkafka's
    message.max.bytes, the RocketMQ sink's max_message_bytes). ``broker``: a record the
    raw-size check lets through and the broker would refuse (Kafka: in the produce
    response, which fails the transaction; RocketMQ: over maxMessageSize once compressed,
    which the sink checks itself, since librocketmq would report it as a missing route)."""
    topic = target.topic()
    overrides, size = target.too_large(limit)
    batch = make_batch([topic], 40, keys=8, seed=2)
    big = 17
    batch.records[big] = record(topic, int(batch.records[big].key or 0), random.randbytes(size))
    index_of = positions(batch)
    sink = started(target, **overrides)

    outcome = Call(sink.write_batch, batch).outcome(60)

    assert not isinstance(outcome, BaseException), (
        f"a {size:,}-byte record ({limit} limit) must come back as Refused({big}); "
        f"write_batch raised {outcome!r}"
    )
    assert [r.index for r in outcome] == [big], outcome
    reason = outcome[0].reason
    assert reason.strip() and "\n" not in reason, reason
    if target.all_or_nothing:
        # The transaction was aborted: a read_committed consumer sees nothing of it.
        assert target.read([topic], expected=0) == []

    # What the engine does: swap the record for its dead letter, write the same Batch.
    dead_letters = target.topic(dead_letters=True)
    router = Router(
        RoutingConfig(
            topics={"*": topic}, dead_letter_topic=dead_letters, dead_letter_max_value_bytes=1024
        )
    )
    batch.records[big] = router.dead_letter(batch.records[big], reason)
    assert write(sink, batch) == []

    arrived = target.read([topic, dead_letters], expected=len(batch.records))
    assert_once_each(arrived, index_of)
    [dead] = [a for a in arrived if a.message_id == message_id(batch.records[big])]
    assert dead.topic == dead_letters
    if target.keeps_key_order:
        assert_key_order([a for a in arrived if a.topic == topic], index_of)


# -- 3. retry after a failure ------------------------------------------------------------


def test_same_batch_after_a_sink_error_commits_each_record_once(target: Target) -> None:
    """Some records go to a topic the sink cannot write to yet (see ``blocked_topic``):
    the attempt fails with SinkError; once the topic is writable, the engine's retries of
    the same Batch commit it."""
    topic = target.topic()
    blocked = target.blocked_topic(keep_retrying=False)
    batch = make_batch([topic], 60, keys=10, seed=3)
    # Every fifth record from index 10 on goes to the blocked topic: the first attempt
    # gets somewhere before it fails.
    for i in range(10, 60, 5):
        batch.records[i].topic = blocked.topic
    index_of = positions(batch)
    sink = started(target, **blocked.sink_overrides)

    outcome = Call(sink.write_batch, batch).outcome(60)

    assert isinstance(outcome, SinkError), f"expected a SinkError, got {outcome!r}"
    assert not isinstance(outcome, SinkStopped), outcome
    if target.all_or_nothing:
        assert target.read([topic], expected=0) == []
    blocked.unblock()
    # The engine's loop: the same Batch again until it is committed (rebuild if fatal).
    attempts = [outcome]
    deadline = time.monotonic() + 30
    while True:
        if attempts[-1].fatal:
            blocking(sink.rebuild)
        outcome = Call(sink.write_batch, batch).outcome(60)
        if not isinstance(outcome, SinkError) or time.monotonic() > deadline:
            break
        attempts.append(outcome)
        time.sleep(0.5)
    assert outcome == [], f"after {len(attempts)} failed attempts: {outcome!r}"

    arrived = target.read([topic, blocked.topic], expected=len(batch.records))
    assert_once_each(arrived, index_of)
    if target.keeps_key_order:
        assert_key_order(arrived, index_of)


# -- 4. stop -----------------------------------------------------------------------------


def assert_stops(target: Target, sink: BatchSink, call: Call) -> None:
    """stop() from this thread ends the blocked ``call`` with SinkStopped, in time, and
    close() returns."""
    assert not call.wait(BLOCKED_FOR_S), (
        f"expected the call to block, it ended with {call.outcome(0)!r}"
    )
    stopped_at = time.monotonic()
    sink.stop()
    outcome = call.outcome(60)
    took = call.finished_at - stopped_at
    assert isinstance(outcome, SinkStopped), f"expected SinkStopped, got {outcome!r}"
    assert took <= STOP_WITHIN_S, f"stop() took effect after {took:.1f} s"
    closing = target.close(sink)
    assert closing <= STOP_WITHIN_S, f"close() took {closing:.1f} s"


def test_stop_ends_a_write_blocked_on_the_broker(target: Target) -> None:
    blocked = target.blocked_topic(keep_retrying=True)
    batch = make_batch([blocked.topic], 20, keys=4, seed=4)
    sink = started(target, **blocked.sink_overrides)

    assert_stops(target, sink, Call(sink.write_batch, batch))


def test_stop_ends_start_or_write_when_the_broker_is_unreachable(target: Target) -> None:
    """Kafka's start() already blocks (init_transactions); RocketMQ's start() returns and
    its sends fail and are retried."""
    sink = target.unreachable()
    batch = make_batch(["contract-unreachable"], 10, keys=2, seed=5)

    def start_and_write() -> list[Refused]:
        sink.start()
        return sink.write_batch(batch)

    assert_stops(target, sink, Call(start_and_write))
