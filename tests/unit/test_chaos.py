"""The pure parts of the chaos suite (devtools/chaos.py): counting lost, duplicated and
reordered messages, the reader-stall meter, the table and its final line, and the crash
points of devtools/crash_bridge.py. The suite itself runs against real brokers
(``make chaos``)."""

from __future__ import annotations

import argparse
import random
import re
from typing import Any

import pytest

from devtools import chaos
from devtools.crash_bridge import CRASH_EXIT_CODE, CrashAt, crash_point
from devtools.harness import Arrived

BASE = 2_200_000_000_123_400_000


def entry(n: int, *, pushes: int = 1, conn: int = 1, key: int = 7) -> dict[str, Any]:
    """A simulator ledger entry (``GET /_sim/ledger``) of message ``BASE + n``."""
    return {
        "id": BASE + n,
        "topic": "taobao_trade_TradeCreate",
        "key": key,
        "state": "confirmed",
        "pushes": pushes,
        "conn": conn,
    }


def rec(n: int, offset: int, *, key: bytes | None = b"7", partition: int = 0) -> Arrived:
    return Arrived("tmc.trade", partition, offset, key, BASE + n)


# -- tally ------------------------------------------------------------------------------------


def test_everything_once_in_order_is_clean() -> None:
    ledger = [entry(i) for i in range(4)]
    t = chaos.tally(ledger, [rec(i, i) for i in range(4)])
    assert (t.sent, t.delivered, t.lost, t.duplicates, t.order_violations) == (4, 4, 0, 0, 0)
    assert t.details == []


def test_lost_and_duplicated_ids_are_counted_per_message() -> None:
    ledger = [entry(i) for i in range(5)]
    # 1 is missing, 2 is there three times, 3 twice, one record is not in the ledger.
    arrived = [rec(0, 0), rec(2, 1), rec(2, 2), rec(2, 3), rec(3, 4), rec(3, 5), rec(4, 6)]
    arrived.append(rec(99, 7, key=b"other"))
    t = chaos.tally(ledger, arrived)
    assert (t.sent, t.delivered, t.lost, t.duplicates, t.strays) == (5, 4, 1, 3, 1)
    assert any(str(BASE + 1) in p for p in t.details)


def test_reorder_of_a_redelivered_message_is_explained() -> None:
    # 1 was pushed twice (its first push died with a bridge): it arrives after 2.
    ledger = [entry(0), entry(1, pushes=2, conn=2), entry(2, conn=2)]
    t = chaos.tally(ledger, [rec(0, 0), rec(2, 1), rec(1, 2)])
    assert (t.order_violations, t.reordered_by_redelivery) == (0, 1)


def test_a_rewritten_duplicate_after_newer_records_is_a_duplicate_not_a_violation() -> None:
    ledger = [entry(0), entry(1, pushes=2), entry(2)]
    t = chaos.tally(ledger, [rec(0, 0), rec(1, 1), rec(2, 2), rec(1, 3)])
    assert (t.duplicates, t.order_violations, t.reordered_by_redelivery) == (1, 0, 1)


def test_reorder_across_two_connections_is_explained() -> None:
    ledger = [entry(0, conn=1), entry(1, conn=2)]
    t = chaos.tally(ledger, [rec(1, 0), rec(0, 1)])
    assert (t.order_violations, t.reordered_across_connections) == (0, 1)


def test_reorder_of_single_pushes_on_one_connection_is_a_violation() -> None:
    ledger = [entry(0), entry(1), entry(2)]
    t = chaos.tally(ledger, [rec(0, 0), rec(2, 1), rec(1, 2)])
    assert t.order_violations == 1
    assert any("order violations" in p for p in t.details)


def test_a_key_in_two_partitions_is_a_violation_and_order_is_per_key() -> None:
    ledger = [entry(0), entry(1), entry(2, key=8), entry(3, key=8)]
    arrived = [rec(0, 0), rec(1, 0, partition=1), rec(3, 5, key=b"8"), rec(2, 9, key=b"8")]
    t = chaos.tally(ledger, arrived)
    assert t.order_violations == 2  # key 7 split; key 8 reversed on one connection


def test_order_is_checked_by_offset_not_by_reading_order() -> None:
    ledger = [entry(i) for i in range(3)]
    t = chaos.tally(ledger, [rec(2, 2), rec(0, 0), rec(1, 1)])
    assert t.order_violations == 0


def test_order_unchecked_when_the_sink_does_not_promise_it() -> None:
    ledger = [entry(0), entry(1)]
    t = chaos.tally(ledger, [rec(1, 0, partition=1), rec(0, 0)], check_order=False)
    assert (t.order_violations, t.lost, t.duplicates) == (0, 0, 0)


def test_unkeyed_records_count_but_have_no_order() -> None:
    ledger = [entry(0), entry(1)]
    t = chaos.tally(ledger, [rec(1, 0, key=None), rec(0, 1, key=None)])
    assert (t.delivered, t.order_violations) == (2, 0)


# -- stall meter ------------------------------------------------------------------------------


P0, P1 = ("t", 0), ("t", 1)


def test_stall_is_time_until_the_lso_passed_what_was_written() -> None:
    m = chaos.StallMeter()
    m.written(10.0, {P0: 100, P1: 50})
    m.stable(10.1, {P0: 100, P1: 50})  # nothing open
    assert m.max_s == pytest.approx(0.1)
    m.written(11.0, {P0: 120, P1: 50})
    m.stable(11.2, {P0: 101, P1: 50})  # an open transaction holds P0 at 101
    m.written(11.5, {P0: 130, P1: 60})
    m.stable(15.0, {P0: 125, P1: 60})  # the first sample is passed, the second is not
    assert m.max_s == pytest.approx(4.0)
    assert m.pending == 1
    assert m.worst(16.0) == pytest.approx(4.5)  # still waiting counts until now
    m.stable(21.5, {P0: 131, P1: 60})
    assert (m.max_s, m.pending) == (pytest.approx(10.0), 0)


def test_broker_downtime_is_not_a_stall() -> None:
    m = chaos.StallMeter()
    m.written(0.0, {P0: 10})
    m.broker_down(1.0)
    m.broker_up(9.0)
    m.stable(10.0, {P0: 10})
    assert m.max_s == pytest.approx(2.0)
    m.written(20.0, {P0: 20})
    m.broker_down(21.0)  # still down
    assert m.worst(25.0) == pytest.approx(2.0)


def test_a_partition_missing_from_the_lso_answer_is_still_stalled() -> None:
    m = chaos.StallMeter()
    m.written(0.0, {P0: 1, P1: 1})
    m.stable(1.0, {P0: 1})
    assert m.pending == 1


# -- rows, table, final line ------------------------------------------------------------------


def row(name: str, sink: chaos.Sink = "kafka", **kw: Any) -> chaos.Row:
    base: dict[str, Any] = {"sent": 100, "delivered": 100, "confirmed": 100, "stall_s": 0.2}
    base.update(kw)
    return chaos.Row(name, sink, **base)


def test_row_failures() -> None:
    assert row("a").ok
    assert row("a", lost=1, delivered=99).failures()[0] == "1 lost"
    assert row("a", duplicates=1).failures() == ["1 duplicates"]
    assert row("a", order_violations=2).failures() == ["2 order violations"]
    assert row("a", confirmed=98).failures() == ["2 unconfirmed"]
    assert row("a", problems=["a-1 exited by itself"]).failures() == ["a-1 exited by itself"]
    assert not row("a", sent=0, delivered=0, confirmed=0).ok


def test_rocketmq_duplicates_are_held_against_the_allowance() -> None:
    ordered = row("o", "rocketmq", duplicates=300, allowed_duplicates=5 * 2000, stall_s=None)
    assert ordered.ok
    txn = row("t", "rocketmq", duplicates=1, allowed_duplicates=0, order_violations=None)
    assert txn.failures() == ["1 duplicates"]
    over = row("o", "rocketmq", duplicates=11, allowed_duplicates=10)
    assert over.failures() == ["11 duplicates (allowed 10)"]


def test_allowance_per_mode_is_per_kill() -> None:
    assert chaos.ROCKETMQ_DUPLICATES_PER_KILL == {
        "ordered": chaos.ROCKETMQ_MAX_IN_FLIGHT,
        "transactional": 0,
    }


def test_final_line_counts_the_kafka_scenarios_only() -> None:
    rows = [
        row("a", sent=100_000, delivered=100_000, confirmed=100_000, stall_s=1.26),
        row("b", sent=40_000, delivered=39_999, lost=1, duplicates=3, stall_s=10.04),
        row("r", "rocketmq", sent=10_000, duplicates=500, lost=2, stall_s=None),
    ]
    line = chaos.final_line(rows)
    assert line == "chaos: scenarios=2 sent=140000 lost=1 duplicates=3 max_stall_s=10.0"
    pattern = r"chaos: scenarios=\d+ sent=\d+ lost=\d+ duplicates=\d+ max_stall_s=\d+\.\d"
    assert re.fullmatch(pattern, line)
    assert chaos.final_line([]) == "chaos: scenarios=0 sent=0 lost=0 duplicates=0 max_stall_s=0.0"


def test_table_has_one_line_per_scenario_with_every_column() -> None:
    rows = [
        row("kill-steady", absorbed=12, kills=10),
        row(
            "r", "rocketmq", stall_s=None, order_violations=None, duplicates=3, allowed_duplicates=0
        ),
    ]
    lines = chaos.table(rows)
    assert len(lines) == 3
    assert lines[0].split() == [name for name, _ in chaos.COLUMNS]
    first, second = (line.split() for line in lines[1:])
    assert first == [
        "kill-steady",
        "kafka",
        "100",
        "100",
        "0",
        "0",
        "100",
        "12",
        "0.2",
        "0",
        "10",
        "0",
        "ok",
    ]
    assert second[8:10] == ["-", "n/a"] and second[-1] == "FAIL"


def test_coverage_of_a_full_run() -> None:
    five = [row(str(i), sent=60_000, delivered=60_000, confirmed=60_000) for i in range(5)]
    assert chaos.coverage_problems(five) == []
    assert len(chaos.coverage_problems(five[:4])) == 2  # too few scenarios and messages


def test_kill_points_are_ascending_within_bounds_and_repeatable() -> None:
    points = chaos.kill_points(random.Random(5), 100_000, 10, 0.02, 0.95)
    assert points == sorted(points) and len(points) == 10
    assert all(2_000 <= p < 95_000 for p in points)
    assert points == chaos.kill_points(random.Random(5), 100_000, 10, 0.02, 0.95)


def test_scenario_selection() -> None:
    assert [s.name for s in chaos.selected([])] == [s.name for s in chaos.SCENARIOS]
    names = [s.name for s in chaos.selected(["replicas,kill-steady"])]
    assert names == ["kill-steady", "replicas"]  # in suite order
    with pytest.raises(SystemExit, match="unknown scenario"):
        chaos.selected(["nope"])
    assert sum(s.sink == "kafka" for s in chaos.SCENARIOS) >= chaos.MIN_KAFKA_SCENARIOS


def test_absorbed_redeliveries_from_metrics() -> None:
    text = """\
# HELP tmc_bridge_source_duplicate_messages_total Redeliveries absorbed
# TYPE tmc_bridge_source_duplicate_messages_total counter
tmc_bridge_source_duplicate_messages_total{kind="in_flight",source="tmc"} 40.0
tmc_bridge_source_duplicate_messages_total{kind="committed",source="tmc"} 12.0
"""
    assert chaos.absorbed_in(text) == 12
    assert chaos.absorbed_in("") == 0


# -- crash points -----------------------------------------------------------------------------


def test_crash_points() -> None:
    hook = crash_point("after_commit:3")
    assert (hook.point, hook.nth, hook.sink) == ("after_commit", 3, "kafka")
    assert crash_point("before_journal:1").sink == "rocketmq"
    for bad in ("after_commit:0", "after_commit", "after_commit:x", "nowhere:2"):
        with pytest.raises(argparse.ArgumentTypeError):
            crash_point(bad)


def test_crash_hook_exits_at_the_nth_time_only(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr("devtools.crash_bridge.os._exit", exits.append)
    kafka = CrashAt("after_commit", 2)
    kafka()
    assert exits == []
    kafka()
    assert exits == [CRASH_EXIT_CODE]
    rocketmq = CrashAt("after_journal", 1)
    rocketmq("before_journal", "txn-1")  # another point: not counted
    assert exits == [CRASH_EXIT_CODE]
    rocketmq("after_journal", "txn-1")
    assert exits == [CRASH_EXIT_CODE, CRASH_EXIT_CODE]
