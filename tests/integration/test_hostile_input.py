"""A hostile TMC server against a running bridge and a real Kafka broker.

Each input that used to end the connection task (or crash the process) is pushed on
the bridge's live session; a valid message published behind it must be delivered and
confirmed. Inputs with a valid id are dead-lettered with the reason and confirmed;
inputs that cannot be confirmed are skipped (the server would redeliver them). The
session is never dropped: the bridge does not reconnect once in the whole test.
"""

from __future__ import annotations

import asyncio
import gzip
from dataclasses import dataclass
from typing import Any

import pytest

from bridge.sources.tmc import codec
from bridge.sources.tmc.codec import Fmt, Value
from bridge.sources.tmc.simulator import Simulator
from devtools import harness
from devtools.brokers.kafka import KafkaBroker
from tests.integration.conftest import (
    Topics,
    bridge_config,
    running_bridge,
    simulator,
    wait_for,
)

pytestmark = pytest.mark.integration

FRAME_LIMIT = 64 * 1024
CONTENT_LIMIT = 256 * 1024
TRADE = "taobao_trade_TradeCreate"


def entries(**fields: Value) -> bytes:
    return b"".join(codec.encode_custom(k, v) for k, v in fields.items())


def push(msg_id: int | Value, topic: str, content: bytes | Value, **extra: Value) -> bytes:
    fields: dict[str, Value] = {
        "id": msg_id if isinstance(msg_id, Value) else codec.int64(msg_id),
        "topic": codec.string(topic),
        "content": content if isinstance(content, Value) else Value(Fmt.STRING, content),
        "time": codec.date_ms(1_700_000_000_000),
        "userid": codec.int64(7),
        **extra,
    }
    return entries(**fields)


@dataclass(frozen=True)
class Case:
    name: str
    entries: bytes
    #: The id the bridge must dead-letter and confirm; None: it must skip the frame.
    dead_id: int | None
    reason: str


BOMB = gzip.compress(b"0" * (8 * 1024 * 1024))

CASES = [
    Case(
        "content nested 5,000 deep",
        push(9001, TRADE, b"[" * 5000 + b"]" * 5000),
        9001,
        "max_json_depth",
    ),
    Case("id as Unicode digit", push(Value(Fmt.STRING, "²"), TRADE, b'{"tid":1}'), None, ""),
    Case("id of 5,000 digits", push(Value(Fmt.STRING, "9" * 5000), TRADE, b"{}"), None, ""),
    Case(
        "id above int64",
        push(Value(Fmt.STRING, "9223372036854775808"), TRADE, b'{"tid":1}'),
        None,
        "",
    ),
    Case(
        "time of 400 digits",
        push(9004, TRADE, b'{"tid":1}', time=Value(Fmt.STRING, "1" * 400)),
        9004,
        "'time'",
    ),
    Case(
        "frame over max_frame_bytes",
        push(9005, TRADE, b'{"tid":1,"pad":"' + b"x" * (2 * FRAME_LIMIT) + b'"}'),
        9005,
        "max_frame_bytes",
    ),
    Case("gzip bomb", push(9006, TRADE, Value(Fmt.BYTE_ARRAY, BOMB)), 9006, "max_content_bytes"),
    Case(
        "invalid UTF-8 where the key is read",
        push(9007, TRADE, b'{"tid":1,"nick":"\xff\xfe"}'),
        9007,
        "not valid UTF-8",
    ),
    Case("push without a topic", entries(id=codec.int64(9008)), 9008, "without a topic"),
    Case("id as a ByteArray", push(Value(Fmt.BYTE_ARRAY, b"\x01"), TRADE, b"{}"), None, ""),
    Case(
        "time as a ByteArray",
        push(9009, TRADE, b"{}", time=Value(Fmt.BYTE_ARRAY, b"")),
        9009,
        "'time'",
    ),
]


def read_all(bootstrap: str, topics: list[str]) -> list[tuple[str, bytes, dict[str, bytes]]]:
    """(topic, value, headers) of every committed record."""

    def convert(msg: Any) -> tuple[str, bytes, dict[str, bytes]]:
        return str(msg.topic()), msg.value() or b"", dict(msg.headers() or [])

    return harness.read_messages(bootstrap, topics, convert)


async def test_hostile_pushes_never_stop_the_bridge(kafka: KafkaBroker, topics: Topics) -> None:
    async with simulator(confirm_timeout_s=600) as sim:
        cfg = bridge_config(
            sim.url,
            kafka.bootstrap,
            topics,
            tmc={"max_frame_bytes": FRAME_LIMIT, "max_content_bytes": CONTENT_LIMIT},
        )
        async with running_bridge(cfg) as bridge:
            await wait_for(lambda: bridge.source.problem() is None, 30, "bridge logged in")
            valid_ids: list[int] = []
            for case in CASES:
                assert sim.push_raw(case.entries), case.name
                # A valid message behind it is delivered and confirmed.
                valid_ids += sim.publish(1)
                want = len(valid_ids)
                await _confirmed(sim, want, case.name)
                if case.dead_id is not None:
                    await wait_for(
                        lambda c=case: c.dead_id in sim.unknown_confirmed_ids,
                        20,
                        f"{case.name}: dead letter confirmed",
                    )
            # Still the first session: no input dropped the connection, and ready.
            assert sim.stats.logins_ok == 1
            assert bridge.problems() == []
            notes = bridge.source.notes()
            assert notes and "skipped a frame" in notes[0]
            skipped = sum(
                v
                for (name, labels), v in _samples(bridge).items()
                if name == "tmc_bridge_source_skipped_frames_total"
            )
            assert skipped == sum(1 for c in CASES if c.dead_id is None)

        records = await asyncio.to_thread(read_all, kafka.bootstrap, topics.all)
        dead = {
            int(h["tmc.message_id"]): (value, h["tmc.dlq.reason"].decode())
            for topic, value, h in records
            if topic == topics.dlq
        }
        for case in CASES:
            if case.dead_id is None:
                continue
            assert case.dead_id in dead, case.name
            reason = dead[case.dead_id][1]
            assert case.reason in reason, (case.name, reason)
        # Dead letters carry the content exactly as received (cut to the DLQ limit).
        assert dead[9007][0] == b'{"tid":1,"nick":"\xff\xfe"}'
        assert dead[9006][0] == BOMB[: len(dead[9006][0])]
        delivered = [int(h["tmc.message_id"]) for t, _, h in records if t != topics.dlq]
        assert sorted(delivered) == sorted(valid_ids)
        # Exactly the dead-lettered hostile ids were confirmed besides the valid ones.
        assert set(sim.unknown_confirmed_ids) == {c.dead_id for c in CASES if c.dead_id}


async def _confirmed(sim: Simulator, count: int, what: str) -> None:
    await wait_for(lambda: sim.stats.confirmed >= count, 30, f"valid message after {what}")


def _samples(bridge: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = bridge.metrics.registry  # type: ignore[attr-defined]
    out = {}
    for family in registry.collect():
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out
