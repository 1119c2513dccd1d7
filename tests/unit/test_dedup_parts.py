"""The committed-ids store's pure parts: the marker record and the fence tickets."""

from __future__ import annotations

import struct
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.dedup import marker
from bridge.dedup.fence import Fences
from bridge.dedup.kafka_store import consumer_settings
from bridge.dedup.kafka_topic import ensure_topic, retention_problem, topic_settings
from bridge.errors import SinkError
from bridge.numbers import INT64_MAX, INT64_MIN
from bridge.sinks.kafka_config import KafkaSinkConfig

int64s = st.integers(INT64_MIN, INT64_MAX)


@given(st.lists(int64s, max_size=300), st.text(max_size=40))
def test_a_marker_carries_its_ids_and_scope(ids: list[int], namespace: str) -> None:
    scope = marker.scope(namespace, "tmc")
    found = marker.decode(scope.encode(), marker.encode(ids))
    assert found.scope == scope
    assert list(struct.unpack(f">{len(ids)}q", found.packed)) == ids


def test_ids_outside_int64_are_left_out_of_a_marker() -> None:
    value = marker.encode([1, 2**63, -(2**63) - 1, 2])
    assert marker.decode(b"k", value).packed.tobytes() == struct.pack(">2q", 1, 2)


@given(st.binary(max_size=64), st.binary(max_size=200))
def test_any_record_decodes_or_raises_marker_error(key: bytes, value: bytes) -> None:
    try:
        found = marker.decode(key, value)
    except marker.MarkerError:
        return
    assert len(found.packed) % 8 == 0 and value[:1] == marker.FORMAT_V1


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (None, b"\x01", "without key"),
        (b"k", None, "without key"),
        (b"k", b"", "without key"),
        (b"k", b"\x02" + bytes(8), "unknown marker format"),
        (b"k", b"\x01" + bytes(7), "not a multiple of 8"),
        (b"\xff", b"\x01", "not UTF-8"),
    ],
)
def test_unreadable_markers_say_why(key: bytes | None, value: bytes | None, reason: str) -> None:
    with pytest.raises(marker.MarkerError, match=reason):
        marker.decode(key, value)


def test_a_ticket_taken_by_the_follower_is_not_handed_out_again() -> None:
    fences = Fences()
    assert fences.take() is None  # nobody waits
    first = fences.ticket()
    assert fences.ticket() == first  # not taken yet: the same query serves both
    assert fences.take() == first
    assert fences.take() is None
    second = fences.ticket()
    assert second > first  # the query for `first` may predate this arrival
    assert fences.take() == second


def test_tickets_grow_in_arrival_order_across_threads() -> None:
    fences = Fences()
    seen: list[int] = []
    taken: list[int] = []
    stop = threading.Event()

    def follower() -> None:
        while not stop.is_set():
            found = fences.take()
            if found is not None:
                taken.append(found)

    thread = threading.Thread(target=follower)
    thread.start()
    for _ in range(20_000):
        seen.append(fences.ticket())
    stop.set()
    thread.join()
    final = fences.take()
    if final is not None:
        taken.append(final)
    assert seen == sorted(seen)
    # Every ticket handed out is taken (served) eventually, in order.
    assert taken == sorted(taken) and taken[-1] == seen[-1]


def test_the_topic_is_created_with_retention_of_the_window() -> None:
    day = 24 * 3600 * 1000
    settings = topic_settings(day)
    assert settings["retention.ms"] == str(day) and settings["cleanup.policy"] == "delete"
    assert int(settings["segment.ms"]) == day // 24
    assert int(topic_settings(1000)["segment.ms"]) == 60_000  # not absurdly small


@pytest.mark.parametrize(
    ("configs", "problem"),
    [
        ({"cleanup.policy": "delete", "retention.ms": "86400000"}, None),
        ({"cleanup.policy": "delete", "retention.ms": "-1"}, None),
        ({"cleanup.policy": "compact,delete", "retention.ms": "172800000"}, None),
        ({"cleanup.policy": "compact"}, "cleanup.policy=compact"),
        ({"cleanup.policy": "delete", "retention.ms": "3600000"}, "less than the dedup window"),
    ],
)
def test_an_existing_topic_must_keep_the_window(
    configs: dict[str, str], problem: str | None
) -> None:
    found = retention_problem(configs, 24 * 3600 * 1000, "ids")
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_the_follower_shares_connection_settings_not_producer_ones() -> None:
    cfg = KafkaSinkConfig(
        bootstrap_servers="b:9092",
        transactional_id="t",
        extra={
            "security.protocol": "sasl_ssl",
            "sasl.mechanism": "PLAIN",
            "linger.ms": 50,
            "compression.type": "lz4",
            "acks": "all",
        },
    )
    settings = consumer_settings(cfg)
    assert settings == {
        "bootstrap.servers": "b:9092",
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "PLAIN",
    }


class _Topic:
    def __init__(self, partitions: int) -> None:
        self.partitions = {i: object() for i in range(partitions)}
        self.error = None


class _Admin:
    def __init__(self, partitions: int) -> None:
        self.partitions = partitions

    def list_topics(self, topic: str, timeout: float) -> object:
        return type("Metadata", (), {"topics": {topic: _Topic(self.partitions)}})()


def test_a_topic_with_several_partitions_is_refused() -> None:
    with pytest.raises(SinkError, match="has 3 partitions; it must have exactly one"):
        ensure_topic(_Admin(3), "ids", 86_400_000)  # type: ignore[arg-type]
