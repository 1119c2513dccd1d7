"""The transactional RocketMQ sink's journal: which source messages were committed.

RocketMQ transactions are per message: a half message is stored, the producer runs its
local transaction, then sends commit or rollback **one-way**. When that last request is
lost (the bridge was killed, the network dropped it), the broker asks the producer group
later ("check-back") and the answer must match what the local transaction decided. The
bridge's local transaction is "append (source message id, transaction id) to the
journal", where the transaction id is the half message's unique id, so:

* check-back: transaction recorded -> commit; not recorded -> roll back (the source was
  not confirmed either, so it redelivers and the message is written again). Decided by
  transaction, not by source message: after such a redelivery the same source message
  has a second, committed half message, and the orphaned first one must still be rolled
  back, or the topic would hold it twice.
* a redelivery whose source message id is recorded is confirmed without sending it again
  (its half message is committed, now or at the next check-back): the pipeline asks
  :class:`JournalCommittedIds` before the message enters the sink, and the sink checks
  again before it sends (second line of defence).

**Format.** Append-only files ``journal-<seq>.log`` of ASCII lines:

* ``<message id> <transaction id>``: one entry (decimal id, hex transaction id);
* ``@<seconds since the epoch>``: the entries below it, up to the next such line, were
  written at that time at the latest (rounded up). Written before the first entry of each
  new second. Lines written by older versions have no time lines before them: their time
  is taken as the file's mtime (the time of its last write, so never too early). Older
  versions reading a newer journal (a rollback) skip the time lines as malformed and
  still find every entry: the entry lines themselves did not change.

A line counts only when complete and well-formed (ends with a newline, ``\\d{1,40}``, a
space, hex), so a torn last line after a crash can never make another message look
committed; :meth:`Journal.open` also cuts such a tail off the segment it appends to, so
the next entry cannot be glued onto it.

**Retention by time.** A segment rolls over after ``segment_entries`` entries and is
deleted once its newest entry is older than the window (``dedup_window_h``), except the
newest two, which are always kept: their transaction ids answer the broker's
check-backs, which concern minutes. Open loads every kept segment. So the journal
remembers a committed message id for the whole window (TMC redelivers for about a day),
not for a number of entries. Memory:

* message ids: an :class:`~bridge.dedup.window.IdWindow` (about 12 bytes per id, exact).
  Only ids within int64 (every TMC id) go there. Larger ones (ONS message ids are 128-bit
  numbers) are remembered as before this window existed: those of the newest two
  segments, in a set. Id 0 is never remembered: the sink journals a record without a
  message id under 0, and nothing may be confirmed because of that. A line whose id is not
  decimal is not an entry at all (see above), so it is not remembered either;
* transaction ids: a set per segment, for the newest two (~100 bytes each).

Disk: about 53 bytes per entry with a 19-digit TMC id and a 32-digit transaction id
(4.6 GB per day at 1,000 msg/s). Each entry is one unbuffered write; a failed or short
write is cut off again, so no fragment is ever completed or glued onto. When the volume
is full, the oldest segments beyond the newest two are deleted early (a warning each)
before an entry fails; a failed entry fails its local transaction (rolled back at the
check-back, redelivered by the source), so nothing is lost, only remembered for less
than the window.
"""

from __future__ import annotations

import asyncio
import errno
import io
import math
import os
import re
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from bridge.dedup.window import IdWindow
from bridge.errors import ConfigError
from bridge.numbers import INT64_MAX

if TYPE_CHECKING:
    from bridge.observability.metrics import Metrics
    from bridge.sinks.rocketmq_config import RocketMQSinkConfig

log = structlog.get_logger("bridge.sink.rocketmq")

_PREFIX, _SUFFIX = "journal-", ".log"
#: A message id as the journal takes it: decimal, ASCII digits only (``re.ASCII``; "²" is
#: a digit to str.isdigit), at most 40 of them (ONS ids have up to 39; int() of thousands
#: of digits would be slow or refused).
MESSAGE_ID = re.compile(r"\d{1,40}", re.ASCII)
#: One entry, as :meth:`Journal.record` checks it.
_ENTRY = re.compile(r"(\d{1,40}) ([0-9A-Fa-f]+)\n", re.ASCII)
#: Every line of a file region: an entry (id captured) or anything else (captured empty).
#: Each match consumes one whole line, so matching goes from line start to line start and
#: a valid entry can never be found in the middle of a damaged line; a last line without
#: its newline matches neither.
_IDS = re.compile(rb"(?:(\d{1,40}) [0-9A-Fa-f]+|[^\n]*)\n")
#: The same, with the transaction id (for the newest two segments).
_ENTRIES = re.compile(rb"(?:(\d{1,40}) ([0-9A-Fa-f]+)|[^\n]*)\n")
_TIME = re.compile(rb"@(\d{1,12})")
#: Default window, as ``sink.rocketmq.dedup_window_h`` has it.
DEFAULT_WINDOW_S = 24 * 3600.0
#: Ids that left the window are dropped from memory at least this often (and at every
#: rollover).
EXPIRE_EVERY_S = 60.0
#: Loading hands ids to the IdWindow in batches of this many, each timed by its newest
#: entry: a batch this large becomes a level of the window at once (instead of passing
#: its recent set), and fewer, larger levels need fewer merges. An id may so be kept up
#: to one batch's time span longer, which is capped at 1/LOAD_SPAN of the window.
LOAD_BATCH = 262_144
LOAD_SPAN = 16


@dataclass(slots=True)
class Parsed:
    """What one segment holds (see :func:`parse`)."""

    #: (time, ids as decimal bytes) in file order; time None: before any time line.
    groups: list[tuple[int | None, list[bytes]]] = field(default_factory=list)
    #: Transaction ids (as written), when asked for.
    transactions: list[bytes] = field(default_factory=list)
    #: Entries (complete, well-formed lines).
    entries: int = 0
    #: The latest time line's value, None without any.
    newest: int | None = None


def parse(data: bytes, *, transactions: bool = False) -> Parsed:
    """The entries of a segment's bytes, grouped by the time line before them.

    Lines that are not complete entries or time lines are skipped, and so is a last line
    without its newline (torn). A line starting with ``@`` is never an entry: time lines
    are found with a plain search, and each region between them is matched line by line.
    """
    parsed = Parsed()
    at: int | None = None
    start = 0
    size = len(data)
    while start < size:
        # The next line starting with "@" (a time line, or a damaged one); ``start`` is
        # always the start of a line.
        if data.startswith(b"@", start):
            mark = start
        else:
            newline = data.find(b"\n@", start)
            mark = newline + 1 if newline >= 0 else -1
        end = mark if mark >= 0 else size
        if end > start:
            _region(parsed, data, start, end, at=at, transactions=transactions)
        if mark < 0:
            break
        line_end = data.find(b"\n", mark)
        if line_end < 0:
            break  # a torn time line: the last line of the file
        time_line = _TIME.fullmatch(data, mark, line_end)
        if time_line is not None:
            at = int(time_line.group(1))
            parsed.newest = at if parsed.newest is None else max(parsed.newest, at)
        start = line_end + 1
    return parsed


def _region(
    parsed: Parsed, data: bytes, start: int, end: int, *, at: int | None, transactions: bool
) -> None:
    if transactions:
        pairs = [pair for pair in _ENTRIES.findall(data, start, end) if pair[0]]
        ids = [pair[0] for pair in pairs]
        parsed.transactions.extend(pair[1] for pair in pairs)
    else:
        ids = list(filter(None, _IDS.findall(data, start, end)))
    if ids:
        parsed.entries += len(ids)
        if parsed.groups and parsed.groups[-1][0] == at:
            parsed.groups[-1][1].extend(ids)
        else:
            parsed.groups.append((at, ids))


def _segments(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.glob(f"{_PREFIX}*{_SUFFIX}"):
        seq = path.name[len(_PREFIX) : -len(_SUFFIX)]
        if seq.isdigit():
            found.append((int(seq), path))
    return sorted(found)


def _cut_torn_tail(path: Path, data: bytes) -> bytes:
    """Drop a last line without its newline (a crash mid-write), so that the next entry
    appended is not glued onto it (``12`` + ``34 AB…`` would read as entry 1234)."""
    if not data or data.endswith(b"\n"):
        return data
    keep = data.rfind(b"\n") + 1
    with path.open("r+b") as fh:
        fh.truncate(keep)
        os.fsync(fh.fileno())
    log.warning("journal: cut a torn last line", path=str(path), bytes=len(data) - keep)
    return data[:keep]


class _Recent:
    """What only the newest two segments need: transaction ids, and message ids too
    large for the IdWindow."""

    __slots__ = ("entries", "transactions", "wide")

    def __init__(self) -> None:
        self.transactions: set[str] = set()
        self.wide: set[int] = set()
        self.entries = 0


@dataclass(slots=True)
class _Kept:
    seq: int
    path: Path
    #: Time of its newest entry (seconds since the epoch, never too early).
    newest: float


class _Loader:
    """Feeds ids into an IdWindow in large batches (see :data:`LOAD_BATCH`)."""

    def __init__(self, window: IdWindow) -> None:
        self.window = window
        self._span = window.window_s / LOAD_SPAN
        self._ids: list[int] = []
        self._oldest = self._newest = 0.0

    def add(self, ids: list[int], at_s: float) -> None:
        if self._ids and max(self._newest, at_s) - min(self._oldest, at_s) > self._span:
            self.flush()
        if not self._ids:
            self._oldest = self._newest = at_s
        self._ids.extend(ids)
        self._oldest = min(self._oldest, at_s)
        self._newest = max(self._newest, at_s)
        if len(self._ids) >= LOAD_BATCH:
            self.flush()

    def flush(self) -> None:
        if self._ids:
            self.window.add(self._ids, self._newest)
        self._ids = []


def _split(numbers: list[int]) -> tuple[list[int], list[int]]:
    """(ids within int64 and above 0, ids beyond int64); 0 is dropped (see the module
    docstring)."""
    if not numbers or (min(numbers) > 0 and max(numbers) <= INT64_MAX):
        return numbers, []
    small = [n for n in numbers if 0 < n <= INT64_MAX]
    return small, [n for n in numbers if n > INT64_MAX]


class Journal:
    """Thread-safe: ``record`` and ``sync`` run on the sink thread, ``has_transaction``
    on librocketmq's check-back thread, ``has_id`` on the event loop (the committed-ids
    store).

    Shared: the sink and the committed-ids store use one instance (:func:`journal_for`),
    each calling :meth:`open` and :meth:`close` once; the first open loads it, the last
    close closes it.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_entries: int,
        fsync: bool,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dir = directory
        self._limit = segment_entries
        self._fsync = fsync
        self._window_s = window_s
        self._clock = clock
        #: Open/close counting (and loading).
        self._users_lock = threading.Lock()
        self._users = 0
        #: The file and everything the writer changes.
        self._lock = threading.Lock()
        #: Message ids within int64. One writer at a time (under ``_lock``); readers need
        #: no lock (see bridge.dedup.window).
        self._ids = IdWindow(window_s)
        self._older = _Recent()
        self._current = _Recent()
        #: Segments on disk, oldest first; the last is the one written to.
        self._kept: deque[_Kept] = deque()
        self._seq = 0
        #: Unbuffered: each entry is one write(2), and nothing is left in a buffer that a
        #: later flush could complete after the entry was given up (see _append).
        self._file: io.FileIO | None = None
        #: Bytes of complete lines in the current segment (what a failed write is cut to).
        self._size = 0
        #: A failed write could not be cut off: the next entry starts a new segment.
        self._damaged = False
        self._dirty = False
        #: The time line last written to the current segment.
        self._marked: int | None = None
        self._expired_at = 0.0

    @property
    def settings(self) -> tuple[int, bool, float]:
        return (self._limit, self._fsync, self._window_s)

    # -- opening and closing -----------------------------------------------------------

    def open(self) -> None:
        """Load the journal (first call) and open its newest segment for appending."""
        with self._users_lock:
            if self._users == 0:
                try:
                    self._load()
                except OSError as exc:
                    raise ConfigError(
                        f"sink.rocketmq.journal_dir: cannot use {self._dir}: {exc.strerror}"
                    ) from None
            self._users += 1

    def _load(self) -> None:
        started = time.monotonic()
        self._dir.mkdir(parents=True, exist_ok=True)
        found = _segments(self._dir)
        now = self._clock()
        horizon = now - self._window_s
        window = IdWindow(self._window_s)
        loader = _Loader(window)
        kept: deque[_Kept] = deque()
        recent: list[_Recent] = []
        deleted = 0
        size = 0
        for position, (seq, path) in enumerate(found):
            newest_two = position >= len(found) - 2
            mtime = path.stat().st_mtime
            data = path.read_bytes()
            if position == len(found) - 1:
                data = _cut_torn_tail(path, data)
                size = len(data)
            parsed = parse(data, transactions=newest_two)
            del data
            newest = float(parsed.newest) if parsed.newest is not None else mtime
            if not newest_two and newest < horizon:
                path.unlink()
                deleted += 1
                continue
            segment = _Recent() if newest_two else None
            for at, raw in parsed.groups:
                small, wide = _split(list(map(int, raw)))
                loader.add(small, mtime if at is None else float(at))
                if segment is not None:
                    segment.wide.update(wide)
            if segment is not None:
                segment.transactions.update(t.decode().upper() for t in parsed.transactions)
                segment.entries = parsed.entries
                recent.append(segment)
            kept.append(_Kept(seq, path, newest))
        loader.flush()
        window.expire(now)
        if not kept:
            kept.append(_Kept(1, self._segment_path(1), now))
        with self._lock:
            self._ids = window
            self._older = recent[-2] if len(recent) == 2 else _Recent()
            self._current = recent[-1] if recent else _Recent()
            self._kept = kept
            self._seq = kept[-1].seq
            self._file = kept[-1].path.open("ab", buffering=0)
            self._size = size
            self._damaged = False
            self._marked = None
            self._dirty = False
            self._expired_at = now
        log.info(
            "journal loaded",
            path=str(self._dir),
            segments=len(kept),
            deleted_segments=deleted,
            ids=len(self),
            memory_bytes=self.nbytes,
            window_h=round(self._window_s / 3600, 3),
            seconds=round(time.monotonic() - started, 2),
        )

    def close(self) -> None:
        """One user is done; the last one syncs and closes the file."""
        with self._users_lock:
            if self._users == 0:
                return
            self._users -= 1
            if self._users > 0:
                return
            with self._lock:
                if self._file is not None:
                    self._sync_locked()
                    self._file.close()
                    self._file = None

    def _segment_path(self, seq: int) -> Path:
        return self._dir / f"{_PREFIX}{seq:010d}{_SUFFIX}"

    # -- questions -----------------------------------------------------------------------

    def __len__(self) -> int:
        """Message ids remembered (the window's count, see IdWindow.__len__)."""
        return len(self._ids) + len(self._older.wide) + len(self._current.wide)

    @property
    def nbytes(self) -> int:
        """Memory held by the remembered message ids (transaction ids not counted)."""
        wide = sys.getsizeof(self._older.wide) + sys.getsizeof(self._current.wide)
        return self._ids.nbytes + wide

    def has_id(self, message_id: int) -> bool:
        """Was a transaction of this source message committed (within the window)?"""
        if message_id <= 0:
            return False
        if message_id <= INT64_MAX:
            return message_id in self._ids
        with self._lock:
            return message_id in self._current.wide or message_id in self._older.wide

    def has_message(self, message_id: str) -> bool:
        """:meth:`has_id` for the id as the record's header has it (decimal text)."""
        return MESSAGE_ID.fullmatch(message_id) is not None and self.has_id(int(message_id))

    def has_transaction(self, transaction_id: str) -> bool:
        """Did the local transaction of this half message decide to commit?"""
        txn = transaction_id.upper()
        with self._lock:
            return txn in self._current.transactions or txn in self._older.transactions

    # -- writing -------------------------------------------------------------------------

    def record(self, message_id: str, transaction_id: str) -> None:
        """Append one entry; flushed to the OS at once (survives a killed process)."""
        txn = transaction_id.upper()
        line = f"{message_id} {txn}\n"
        if not _ENTRY.fullmatch(line):
            raise ValueError(f"not a journal entry: {message_id!r} {transaction_id!r}")
        number = int(message_id)
        with self._lock:
            now = self._clock()
            if self._current.entries >= self._limit or self._damaged:
                self._rotate(now)
            second = math.ceil(now)  # rounded up: never too early
            mark = b"@%d\n" % second if second != self._marked else b""
            self._append(mark + line.encode("ascii"))
            self._marked = second
            self._dirty = True
            current = self._current
            current.entries += 1
            current.transactions.add(txn)
            if 0 < number <= INT64_MAX:
                self._ids.add((number,), second)
            elif number > INT64_MAX:
                current.wide.add(number)
            last = self._kept[-1]
            last.newest = max(last.newest, float(second))
            if now - self._expired_at >= EXPIRE_EVERY_S:
                self._expire(now)

    def _append(self, payload: bytes) -> None:
        """Write ``payload`` whole or not at all. A failed or short write is cut off again
        (else the next entry would be glued onto its fragment, or a fragment completed
        later). A full volume first costs the oldest segments beyond the newest two, early
        (their ids stay remembered until a restart); only then does the entry fail, and
        with it the local transaction (the check-back rolls it back, the source redelivers
        the message)."""
        while True:
            file = self._file
            assert file is not None, "journal not open"
            try:
                written = file.write(payload)
                if written != len(payload):
                    raise OSError(errno.ENOSPC, "short write")
            except OSError as exc:
                self._cut_failed_write(file)
                if exc.errno == errno.ENOSPC and self._drop_oldest():
                    continue
                raise
            self._size += len(payload)
            return

    def _cut_failed_write(self, file: io.FileIO) -> None:
        try:
            os.ftruncate(file.fileno(), self._size)
        except OSError:
            self._damaged = True  # not appended to again: the next entry rolls over

    def _drop_oldest(self) -> bool:
        if len(self._kept) <= 2:
            return False
        gone = self._kept.popleft()
        gone.path.unlink(missing_ok=True)
        log.warning(
            "journal volume full: deleted a segment before it left the window "
            "(give the journal more space; see sink.rocketmq.dedup_window_h)",
            path=str(gone.path),
        )
        return True

    def _rotate(self, now: float) -> None:
        """A new segment; the oldest ones go once their newest entry left the window."""
        assert self._file is not None
        self._sync_locked()
        path = self._segment_path(self._seq + 1)
        new = path.open("ab", buffering=0)  # when this fails, nothing changed
        self._file.close()
        self._file = new
        self._seq += 1
        self._size = 0
        self._damaged = False
        self._marked = None
        self._older, self._current = self._current, _Recent()
        self._kept.append(_Kept(self._seq, path, now))
        horizon = now - self._window_s
        while len(self._kept) > 2 and self._kept[0].newest < horizon:
            gone = self._kept.popleft()
            gone.path.unlink(missing_ok=True)
        self._sync_dir()
        self._expire(now)

    def _expire(self, now: float) -> None:
        self._expired_at = now
        self._ids.expire(now)

    def sync(self) -> None:
        """Make what was recorded durable (fsync); called before the source is confirmed."""
        with self._lock:
            self._sync_locked()

    def _sync_locked(self) -> None:
        if self._file is not None and self._dirty and self._fsync:
            os.fsync(self._file.fileno())
        self._dirty = False

    def _sync_dir(self) -> None:
        if not self._fsync:
            return
        fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- one journal per directory ----------------------------------------------------------

_journals: weakref.WeakValueDictionary[str, Journal] = weakref.WeakValueDictionary()
_journals_lock = threading.Lock()


def journal_for(config: RocketMQSinkConfig) -> Journal:
    """The journal of ``config.journal_dir`` in this process.

    The sink (``SinkKind.build``) and the committed-ids store (``SinkKind.committed_ids``)
    are built separately from the same config, and a test harness may build the sink by
    itself (``devtools.crash_bridge``); both must use one instance, or the store would
    not see what the sink records. So both ask here, keyed on the absolute directory. The
    entry lives as long as one of them holds the journal; different settings for the same
    directory make a new one (only tests do that, one after the other)."""
    key = os.path.abspath(config.journal_dir)
    settings = (
        config.journal_segment_entries,
        config.journal_fsync,
        config.dedup_window_h * 3600.0,
    )
    with _journals_lock:
        journal = _journals.get(key)
        if journal is None or journal.settings != settings:
            journal = Journal(
                Path(key),
                segment_entries=settings[0],
                fsync=settings[1],
                window_s=settings[2],
            )
            _journals[key] = journal
        return journal


class JournalCommittedIds:
    """:class:`~bridge.pipeline.ports.CommittedIds` answered from the transactional
    sink's journal (the same instance the sink records into).

    Always current: the sink journals a message inside its local transaction, before the
    batch holding it returns, so by the time the pipeline could ask about a redelivery the
    id is there; its tickets are 0. :meth:`add_all` has nothing to do for the same reason.

    The key's source part is ignored: a journal belongs to one bridge (one producer group
    per replica, see ``sink.rocketmq.producer_group``) and so to its one source, whose
    message ids are unique within it (``tmc`` ids across TMC; ``ons`` ids are RocketMQ
    message ids). A journal directory must not be reused for another source stream.
    """

    def __init__(self, journal: Journal, *, metrics: Metrics) -> None:
        self._journal = journal
        self._opened = False
        self._problem: str | None = "committed-ids store: loading the RocketMQ journal"
        metrics.dedup_ids.set_function(lambda: len(journal))
        metrics.dedup_bytes.set_function(lambda: journal.nbytes)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) != 2:
            return False
        message_id = key[1]
        return isinstance(message_id, int) and self._journal.has_id(message_id)

    def add_all(self, keys: Iterable[tuple[str, int]]) -> None:
        """Nothing to do: the sink journalled each id before its batch returned."""

    def ticket(self) -> int:
        return 0  # always current: decide now

    def listen(self, callback: Callable[[int], None]) -> None:
        pass  # no ticket ever waits

    def start(self) -> None:
        pass  # loading happens in wait_ready, off the event loop

    async def wait_ready(self) -> None:
        """Until the journal is loaded (every kept segment: up to a minute for a day at
        1,000 msg/s); raises ConfigError when its directory is unusable."""
        await asyncio.to_thread(self._open)
        self._problem = None

    def _open(self) -> None:
        self._journal.open()
        self._opened = True

    def problem(self) -> str | None:
        return self._problem

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self._journal.close()
