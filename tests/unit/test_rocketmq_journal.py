"""The transactional RocketMQ sink's journal: retention by time, reopening, torn and
old-format lines, check-back by transaction, and the journal as the pipeline's
committed-ids store (one instance shared with the sink)."""

from __future__ import annotations

import asyncio
import errno
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.config import PipelineConfig, RocketMQSinkConfig, RoutingConfig
from bridge.errors import ConfigError
from bridge.headers import H_MESSAGE_ID
from bridge.kinds import SinkContext
from bridge.model import OutRecord
from bridge.observability.metrics import Metrics
from bridge.pipeline.engine import Pipeline
from bridge.pipeline.ports import Batch
from bridge.pipeline.routing import Router
from bridge.sinks import rocketmq_journal as rj
from bridge.sinks.rocketmq import RocketMQSink
from bridge.sinks.rocketmq_journal import Journal, JournalCommittedIds, journal_for, parse
from bridge.sinks.rocketmq_kind import KIND
from tests.unit.test_pipeline import ScriptedSink, delivery

TXN = "0100007F0000F1D50000FEBD0072{:04X}"
HOUR = 3600.0
T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def journal(path: Path, clock: Clock, *, entries: int = 3, window_h: float = 1.0) -> Journal:
    j = Journal(path, segment_entries=entries, fsync=False, window_s=window_h * HOUR, clock=clock)
    j.open()
    return j


def files(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("journal-*.log"))


def test_ids_are_kept_for_the_window_not_for_a_count(tmp_path: Path) -> None:
    clock = Clock()
    j = journal(tmp_path, clock)
    for i in range(1, 13):  # 4 segments of 3 entries, one id every 4 minutes
        j.record(str(i), TXN.format(i))
        clock.now += 240
    assert all(j.has_message(str(i)) for i in range(1, 13))
    assert len(files(tmp_path)) == 4  # nothing deleted: all within the hour
    j.close()
    # Reopened 5 minutes later (53 after the first entry): every id is still known.
    clock.now += 300
    j = journal(tmp_path, clock)
    assert all(j.has_id(i) for i in range(1, 13))
    j.close()
    # 1,000 s later the first three left the window (the window may forget lazily, but
    # never early).
    clock.now += 1000
    j = journal(tmp_path, clock)
    assert all(j.has_id(i) for i in range(4, 13)) and not j.has_id(1)
    # The check-back needs only the newest two segments' transactions.
    assert j.has_transaction(TXN.format(12)) and j.has_transaction(TXN.format(7))
    assert not j.has_transaction(TXN.format(6))
    j.close()


def test_a_segment_goes_only_once_its_newest_entry_left_the_window(tmp_path: Path) -> None:
    clock = Clock()
    j = journal(tmp_path, clock)
    for i in range(1, 7):  # segments 1 (ids 1-3) and 2 (ids 4-6)
        j.record(str(i), TXN.format(i))
        clock.now += 60
    newest_of_first = T0 + 2 * 60
    clock.now = newest_of_first + HOUR - 1  # the first segment's newest is just inside
    for i in range(7, 13):  # two more rollovers
        j.record(str(i), TXN.format(i))
    assert len(files(tmp_path)) == 4
    clock.now = newest_of_first + HOUR + 2  # now it left the window
    j.record("13", TXN.format(13))  # rolls over: the first segment goes
    assert files(tmp_path)[0] == "journal-0000000002.log"
    j.close()
    j = journal(tmp_path, clock)
    assert not j.has_message("1") and not j.has_message("3")
    assert all(j.has_message(str(i)) for i in range(4, 14))
    j.close()
    # Reopened much later: only the newest two segments stay (check-back needs them),
    # and their ids are no longer remembered (they left the window).
    clock.now += 5 * HOUR
    j = journal(tmp_path, clock)
    assert files(tmp_path) == ["journal-0000000004.log", "journal-0000000005.log"]
    assert not j.has_message("13") and len(j) == 0
    assert j.has_transaction(TXN.format(13))
    j.close()


def test_torn_last_line_never_counts_and_is_not_glued_to_the_next(tmp_path: Path) -> None:
    clock = Clock()
    j = journal(tmp_path, clock, entries=100)
    for i in (11, 12):
        j.record(str(i), TXN.format(i))
    j.sync()
    j.close()
    seg = tmp_path / files(tmp_path)[-1]
    with seg.open("a") as fh:
        fh.write("13 0100007F")  # a crash mid-write
    j = journal(tmp_path, clock, entries=100)
    assert j.has_message("11") and j.has_transaction(TXN.format(12).lower())
    assert not j.has_message("13") and not j.has_transaction("0100007F")
    j.record("45", TXN.format(45))
    j.close()
    j = journal(tmp_path, clock, entries=100)
    assert j.has_message("45") and j.has_transaction(TXN.format(45))
    assert not j.has_message("13") and not j.has_message("1345")
    assert not seg.read_text().count("0100007F\n")  # the fragment was cut, not completed
    with pytest.raises(ValueError):
        j.record("12\n13", TXN.format(1))
    with pytest.raises(ValueError):
        j.record("12", "not hex")
    with pytest.raises(ValueError):
        j.record("²", TXN.format(1))
    j.close()


def test_old_two_field_lines_load_timed_by_the_file_mtime(tmp_path: Path) -> None:
    """A journal written before time lines existed: its entries count, timed by the
    segment's mtime (its last write, so never too early); new entries go on with time
    lines after them, which older versions would skip."""
    lines = "".join(f"{i} {TXN.format(i)}\n" for i in (21, 22, 23))
    old, newer = tmp_path / "journal-0000000007.log", tmp_path / "journal-0000000008.log"
    old.write_text(lines)
    newer.write_text(f"24 {TXN.format(24)}\n")
    os.utime(old, (T0 - 10, T0 - 10))
    os.utime(newer, (T0 - 5, T0 - 5))
    clock = Clock()
    j = journal(tmp_path, clock, entries=2)
    assert all(j.has_message(str(i)) for i in (21, 22, 23, 24))
    assert j.has_transaction(TXN.format(21))
    j.record("25", TXN.format(25))  # appended to the old-format segment 8 (1 entry + 1)
    j.record("26", TXN.format(26))  # segment 8 is full: segment 9
    j.close()
    assert files(tmp_path)[-1] == "journal-0000000009.log"
    text = newer.read_text()
    assert text.startswith(f"24 {TXN.format(24)}\n@{int(T0)}\n25 ")
    # What a version without time lines reads (its own line rule): every entry.
    old_rule = re.compile(r"^(\d+) ([0-9A-Fa-f]+)\n$")
    seen = [
        m.group(1)
        for p in sorted(tmp_path.glob("*.log"))
        for m in map(old_rule.match, p.read_text().splitlines(keepends=True))
        if m
    ]
    assert seen == ["21", "22", "23", "24", "25", "26"]
    # An hour and a minute later segment 7 (mtime) left the window: deleted at open.
    clock.now = T0 + HOUR + 60
    j = journal(tmp_path, clock, entries=2)
    assert not old.exists()
    assert not j.has_message("21") and j.has_transaction(TXN.format(24))
    j.close()


def test_check_back_decides_by_transaction_not_by_message(tmp_path: Path) -> None:
    """A source message written twice (its first half message orphaned by a crash before
    the journal entry, then redelivered and committed) must not commit the orphan."""
    j = journal(tmp_path, Clock(), entries=100)
    j.record("42", TXN.format(2))  # the second, committed attempt
    assert j.has_message("42")
    assert j.has_transaction(TXN.format(2))
    assert not j.has_transaction(TXN.format(1))  # the orphan: rolled back
    j.close()


def test_ids_beyond_int64_and_id_zero(tmp_path: Path) -> None:
    """ONS message ids are 128-bit: remembered for the newest two segments only (as
    before the window). 0 stands for "no id" and is never remembered."""
    wide = 2**100 + 5
    clock = Clock()
    j = journal(tmp_path, clock, entries=2)
    j.record(str(wide), TXN.format(1))
    j.record("0", TXN.format(2))
    assert j.has_message(str(wide)) and j.has_id(wide)
    assert not j.has_message("0") and not j.has_id(0) and not j.has_id(-5)
    assert j.has_transaction(TXN.format(2))
    j.close()
    j = journal(tmp_path, clock, entries=2)
    assert j.has_id(wide) and not j.has_id(0)
    for i in range(3, 8):  # two rollovers later segment 1 is no longer among the newest
        j.record(str(i), TXN.format(i))
    assert not j.has_id(wide) and j.has_id(3)
    assert not j.has_message("9" * 5000)  # never reaches int()
    j.close()


class FullVolume:
    """Stands in for the segment file: the first ``failures`` writes fail like a full
    volume (the first one after writing a fragment: a short write)."""

    def __init__(self, real: object, failures: int, *, cut_fails: bool = False) -> None:
        self.real = real
        self.failures = failures
        self.cut_fails = cut_fails
        self.calls = 0

    def write(self, data: bytes) -> int:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            if self.calls == 1:
                return int(self.real.write(data[:5]))  # type: ignore[attr-defined]
            raise OSError(errno.ENOSPC, "No space left on device")
        return int(self.real.write(data))  # type: ignore[attr-defined]

    def fileno(self) -> int:
        return -1 if self.cut_fails else int(self.real.fileno())  # type: ignore[attr-defined]

    def close(self) -> None:
        self.real.close()  # type: ignore[attr-defined]


def test_a_full_volume_costs_old_segments_first_and_never_leaves_a_fragment(
    tmp_path: Path,
) -> None:
    clock = Clock()
    j = journal(tmp_path, clock, entries=2)
    for i in range(1, 8):  # segments 1-3 full, 4 holds id 7
        j.record(str(i), TXN.format(i))
    assert len(files(tmp_path)) == 4
    j._file = FullVolume(j._file, failures=2)  # type: ignore[assignment]
    j.record("8", TXN.format(8))  # short write, cut; two segments dropped; written
    assert files(tmp_path) == ["journal-0000000003.log", "journal-0000000004.log"]
    assert j.has_message("8") and j.has_message("1")  # still in memory until a restart
    j.record("9", TXN.format(9))  # segment 5
    j._file = FullVolume(j._file, failures=100)  # type: ignore[assignment]
    with pytest.raises(OSError):  # segment 3 dropped, then nothing left: the entry fails
        j.record("10", TXN.format(10))
    assert files(tmp_path) == ["journal-0000000004.log", "journal-0000000005.log"]
    assert not j.has_message("10") and not j.has_transaction(TXN.format(10))
    # A write whose fragment cannot be cut off: the next entry starts a new segment.
    assert isinstance(j._file, FullVolume)
    j._file = FullVolume(j._file.real, failures=1, cut_fails=True)  # type: ignore[assignment]
    with pytest.raises(OSError):
        j.record("11", TXN.format(11))
    j.record("12", TXN.format(12))
    j.close()
    assert files(tmp_path)[-1] == "journal-0000000006.log"
    assert (tmp_path / "journal-0000000005.log").read_bytes().endswith(b"\n11 01")
    j = journal(tmp_path, clock, entries=2)
    assert [i for i in range(1, 13) if j.has_id(i)] == [7, 8, 9, 12]
    j.close()
    entries = [line for f in files(tmp_path) for line in (tmp_path / f).read_text().splitlines()]
    assert all(rj._ENTRY.fullmatch(line + "\n") or line.startswith("@") for line in entries)


# -- the line parser ---------------------------------------------------------------------

_ENTRY_LINE = re.compile(rb"(\d{1,40}) ([0-9A-Fa-f]+)")
_TIME_LINE = re.compile(rb"@(\d{1,12})")


def reference(data: bytes) -> tuple[list[tuple[bytes, bytes, int | None]], int | None]:
    """The format read the obvious way, line by line: (id, transaction, time) of every
    complete entry line, and the latest time line."""
    entries: list[tuple[bytes, bytes, int | None]] = []
    at: int | None = None
    newest: int | None = None
    for line in data.split(b"\n")[:-1]:  # the last piece has no newline: torn or empty
        found = _TIME_LINE.fullmatch(line)
        if found is not None:
            at = int(found.group(1))
            newest = at if newest is None else max(newest, at)
            continue
        entry = _ENTRY_LINE.fullmatch(line)
        if entry is not None:
            entries.append((entry.group(1), entry.group(2), at))
    return entries, newest


def flattened(data: bytes, transactions: bool) -> tuple[list[tuple[bytes, int | None]], int | None]:
    parsed = parse(data, transactions=transactions)
    ids = [(i, at) for at, group in parsed.groups for i in group]
    assert parsed.entries == len(ids)
    return ids, parsed.newest


_pieces = st.one_of(
    st.builds(
        lambda i, t: b"%d %s\n" % (i, t),
        st.integers(0, 2**130),
        st.sampled_from([b"AB", b"0100007f", b"F" * 40]),
    ),
    st.builds(lambda t: b"@%d\n" % t, st.integers(0, 2**40)),
    st.sampled_from(
        [
            b"\n",
            b"@\n",
            b"@x1\n",
            b" 12 AB\n",
            b"12  AB\n",
            b"12 AB \n",
            b"12 G\n",
            b"12\n",
            b"@1@2\n",
            b"12 AB\r\n",
            b"\xff\n",
            b"12 AB",
            b"@17",
        ]
    ),
    st.binary(max_size=12),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_pieces, max_size=30), st.binary(max_size=20))
def test_parser_reads_exactly_the_complete_well_formed_lines(
    pieces: list[bytes], tail: bytes
) -> None:
    data = b"".join(pieces)
    expected, newest = reference(data)
    ids, found_newest = flattened(data, transactions=False)
    assert ids == [(i, at) for i, _, at in expected]
    assert found_newest == newest
    parsed = parse(data, transactions=True)
    assert parsed.transactions == [t for _, t, _ in expected]
    # Whatever a crash leaves after the last newline changes nothing.
    torn = tail.replace(b"\n", b"")
    assert flattened(data + torn, transactions=False) == (ids, newest)
    # A torn tail is a prefix of a line: a valid entry cut short never counts either.
    if data.endswith(b"\n") or not data:
        cut = flattened(data + b"1234 ABC", transactions=True)
        assert cut == (ids, newest)


# -- the committed-ids store ---------------------------------------------------------------


def sink_config(tmp_path: Path, **extra: object) -> RocketMQSinkConfig:
    return RocketMQSinkConfig(
        name_server="h:1",
        producer_group="g",
        mode="transactional",
        journal_dir=tmp_path / "journal",
        journal_fsync=False,
        **extra,  # type: ignore[arg-type]
    )


def context() -> SinkContext:
    return SinkContext(metrics=Metrics(), dead_letter_topic="dlq", namespace="tmc/1/default")


def opened(sink: RocketMQSink) -> Journal:
    """What ``sink.start()`` does to the journal (start also needs librocketmq)."""
    journal = sink._journal
    assert journal is not None
    journal.open()
    sink._journal_open = True
    return journal


async def test_sink_and_store_share_one_journal(tmp_path: Path) -> None:
    cfg = sink_config(tmp_path)
    sink = RocketMQSink(cfg, metrics=Metrics())  # as devtools.crash_bridge builds it
    store = KIND.committed_ids(cfg, context())
    assert isinstance(store, JournalCommittedIds)
    assert journal_for(cfg) is sink._journal
    assert store.problem() is not None and store.ticket() == 0
    await store.wait_ready()
    assert store.problem() is None
    assert ("tmc", 42) not in store
    opened(sink)
    sink._local_transaction("42")(TXN.format(42))  # what a send does inside its transaction
    assert ("tmc", 42) in store and ("ons", 42) in store  # one source per journal
    assert ("tmc", 43) not in store and "42" not in store and ("tmc",) not in store
    # Either one closing leaves the journal open for the other.
    await asyncio.to_thread(store.close)
    sink._local_transaction("43")(TXN.format(43))
    sink.close()
    reopened = journal_for(cfg)
    reopened.open()
    assert reopened.has_message("42") and reopened.has_message("43")
    reopened.close()
    ordered = RocketMQSinkConfig(name_server="h:1", producer_group="g")
    assert KIND.committed_ids(ordered, context()) is None  # the pipeline's LRU


async def test_a_journalled_redelivery_is_confirmed_without_entering_the_sink(
    tmp_path: Path,
) -> None:
    cfg = sink_config(tmp_path)
    earlier = journal_for(cfg)  # a previous run of this replica journalled message 2
    earlier.open()
    earlier.record("2", TXN.format(2))
    earlier.close()
    del earlier
    store = KIND.committed_ids(cfg, context())
    assert store is not None
    await store.wait_ready()
    sink = ScriptedSink()
    p = Pipeline(
        PipelineConfig(batch_linger_ms=0),
        Router(RoutingConfig()),
        sink,
        metrics=Metrics(),
        committed=store,
    )
    await p.start_sink()
    writer = asyncio.create_task(p.run())
    log: list[tuple[str, int]] = []
    for i in (1, 2, 3):
        await p.submit(delivery(log, i))
    await asyncio.sleep(0.1)
    written = [dict(r.headers)[H_MESSAGE_ID] for r in sink.committed]
    assert written == [b"1", b"3"]
    assert sorted(log) == [("confirm", 1), ("confirm", 2), ("confirm", 3)]
    assert p.stats.duplicates_committed == 1
    p.close()
    await asyncio.wait_for(writer, 5)
    store.close()


def test_the_sink_skips_a_journalled_record_as_a_second_line_of_defence(
    tmp_path: Path,
) -> None:
    cfg = sink_config(tmp_path)
    sink = RocketMQSink(cfg, metrics=Metrics())
    journal = opened(sink)
    journal.record("5", TXN.format(5))

    class Producer:
        def send(self, *_args: object) -> None:
            raise AssertionError("a journalled record was sent again")

        def shutdown(self) -> None:
            pass

    sink._producer = Producer()  # type: ignore[assignment]
    record = OutRecord("t", b"k", b"v", ((H_MESSAGE_ID, b"5"),))
    assert sink.write_batch(Batch([record])) == []
    sink.close()


def test_journal_for_keys_on_the_directory_and_settings(tmp_path: Path) -> None:
    cfg = sink_config(tmp_path)
    first = journal_for(cfg)
    assert journal_for(sink_config(tmp_path)) is first
    assert journal_for(sink_config(tmp_path, dedup_window_h=2)) is not first
    assert rj.journal_for(sink_config(tmp_path / "other")) is not first


async def test_an_unusable_journal_dir_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "journal").write_text("a file, not a directory")
    store = KIND.committed_ids(sink_config(tmp_path), context())
    assert store is not None
    with pytest.raises(ConfigError, match=r"sink\.rocketmq\.journal_dir: cannot use"):
        await store.wait_ready()
    store.close()  # nothing was opened: nothing to close
