"""An exact, windowed, compact set of int64 message ids: :class:`IdWindow`.

The committed-ids store remembers every id committed during a window (24 h by default:
86.4 million ids at 1,000 msg/s) so that a redelivery is recognised. Membership is exact:
an id is found only if it was added (no Bloom filter, no hashing to fewer bits), and an id
added less than ``window_s`` before the newest :meth:`IdWindow.expire` time is always
found. Ids are forgotten lazily: somewhat after they left the window, never before.

Layout (LSM style), 12 bytes per id plus a bounded Python set:

* ``recent``: a Python ``set`` of the ids of the last few :meth:`~IdWindow.add` calls (at
  most about ``recent_limit`` ids), with the same ids as small unsorted numpy chunks and
  their commit times. A batch of ``recent_limit`` ids or more skips it and becomes a level
  at once.
* levels, newest first: each a pair of numpy arrays (large ones in anonymous mmaps of
  their own, see ``_alloc``): the ids (``int64``, sorted, unique) and the commit time of
  each (``uint32`` seconds since the epoch, rounded *up* and clamped to 1970..2106, so
  rounding can only keep an id longer). When the recent set holds ``recent_limit`` ids it
  is frozen (sorted, de-duplicated) into a new level. Two adjacent levels merge when the
  newer one is at least 1/8 of the older one and both together hold at most
  ``max_level`` ids: O(log) levels below ``max_level``, and runs of ``max_level/2 ..
  max_level`` ids above it. The cap bounds the longest merge (the pause of one
  :meth:`~IdWindow.add` call, and the memory a merge needs beside the levels): a bottom
  level of 86 million ids would take over a second to rewrite, each time.
* A merge de-duplicates (an id keeps its latest time) and drops the ids that left the
  window. :meth:`~IdWindow.expire` drops whole levels whose newest id left the window and
  rewrites a level once at least half of it did; so with commit times that grow (as they
  do) the ids held are the window plus at most ~1/8 of it (the lazily merged part) plus
  half a run.

Lookups: the recent set, then in each level a range check and ``searchsorted``.
:meth:`~IdWindow.contains_many` sorts the batch once and searches each level with it.

Threads: one writer (:meth:`~IdWindow.add`, :meth:`~IdWindow.add_packed`,
:meth:`~IdWindow.expire`) and readers on other threads (``in``,
:meth:`~IdWindow.contains_many`, ``len``, :attr:`~IdWindow.nbytes`), without a lock:

* The levels are published as one immutable tuple in ``self._levels`` and the arrays in
  it are never written once published. A writer change builds the new arrays aside, then
  assigns the new tuple; under the GIL that assignment is atomic, so a reader sees the
  tuple before or after it, both complete, and a merge never blocks a reader. The numpy
  steps of a merge (searchsorted, argsort, take, indexed copies, comparisons) release the
  GIL, so a long merge does not stall the event loop either (measured alone on 15M ids,
  each let another thread run at least every 5 ms).
* The recent set is only grown by the writer (``set.update`` with ints runs in C under the
  GIL: a reader sees it before or after) and is replaced by a new empty set only *after*
  the tuple holding its frozen level has been published. A reader reads ``self._recent``
  *first* and ``self._levels`` *second*: if it got the old set, that set still holds the
  id; if it got the new one, the replacement happened after the publication, so the
  levels it reads next hold the id. Either way an id whose ``add`` returned is found
  (unless it left the window). Reading in the other order could miss it.

Measured (``python -m devtools.id_window_bench [--ids N]``): random int64 ids, 1,000 per
second of commit time, a 24 h window, loaded through :meth:`~IdWindow.add_packed` in chunks
of 500 ids (as the start-up catch-up reads them) with :meth:`~IdWindow.expire` every
simulated minute; numpy 2.4.6, 2 vCPUs (AMD EPYC VM) shared with other work (load ~3), so
wall times varied up to 2x between runs: ranges of 2-3 runs, CPU times of the writer
thread in brackets.

===========================  ============  ==================  ======================
ids                          1,000,000     10,000,000          86,400,000
===========================  ============  ==================  ======================
levels                       2             3                   7 (5 runs of 15.1M)
bytes/id by ``nbytes``       13.0          12.0                12.0
bytes/id by RSS growth       13.8-13.9     12.2                12.0
``in``, µs (hit, miss)       2.2-4.5       3.8-5.6             8-13, 12-24
``contains_many(500)`` µs/id 0.5-1.6       1.1-2.1             8-17
load, s                      0.3 (0.3)     4.2-8.4 (4.1-4.8)   50-53 (41-46)
longest ``add`` call, ms     17-26         155-376 (154-261)   446-565 (383-560)
===========================  ============  ==================  ======================

Steady state: 30 million ids through a 2 h window (7.2 million ids in it): 7.56 million
held (+5%), 12.0 bytes/id by ``nbytes`` and 12.3 by RSS, longest ``expire`` call 107 ms.
A reader thread doing one lookup per millisecond during the loads took at most 0.1-22 ms
for one lookup at 1M-10M ids and 31-37 ms at 86.4M ids (not pinned down: the VM was busy,
and no single step of a merge held the GIL that long when measured alone).
"""

from __future__ import annotations

import math
import mmap
import operator
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt

from bridge.numbers import INT64_MAX, INT64_MIN

IdArray = npt.NDArray[np.int64]
TimeArray = npt.NDArray[np.uint32]

#: Commit times are stored as uint32 seconds since the epoch: 1970-01-01 .. 2106-02-07.
TIME_MAX: Final = 2**32 - 1
#: A newer level merges into the older one below it once it holds 1/FANOUT of its ids.
FANOUT: Final = 8
#: Levels are not merged beyond this many ids: the longest merge (the longest ``add``
#: call) rewrites at most this many (~0.4 s here, and 200 MB beside the levels meanwhile).
DEFAULT_MAX_LEVEL: Final = 1 << 24
#: Estimated bytes of one Python int of up to 90 bits held by the recent set (36 bytes,
#: allocated in 16-byte steps).
_INT_BYTES: Final = 48
#: Arrays of this many bytes or more get an anonymous mmap of their own (see _alloc), and
#: from _HUGE_FROM on are offered transparent huge pages, as numpy does for its own.
_MMAP_FROM: Final = 1 << 18
_HUGE_FROM: Final = 1 << 22
_HUGEPAGE: Final = getattr(mmap, "MADV_HUGEPAGE", None)
#: Items per step where a step's temporary arrays would otherwise be level-sized.
_STEP: Final = 1 << 16


_DT = TypeVar("_DT", bound=np.generic)


def _alloc(n: int, dtype: type[_DT]) -> npt.NDArray[_DT]:
    """An uninitialised array of ``n`` items, in an anonymous mmap of its own when large.

    Not from malloc: once a large block is freed, glibc raises its mmap threshold (up to
    32 MiB), so level-sized arrays then come from the heap, and the heap keeps what the
    merges freed. RSS grew by 28 bytes per id for 1M ids (arrays: 13); with a mmap per
    array, freeing it unmaps it (without holding the GIL) and RSS follows ``nbytes``."""
    size = n * np.dtype(dtype).itemsize
    if size < _MMAP_FROM:
        return np.empty(n, dtype=dtype)
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if size >= _HUGE_FROM and _HUGEPAGE is not None:
        buffer.madvise(_HUGEPAGE)
    return np.frombuffer(buffer, dtype=dtype, count=n)


def _compress(keep: npt.NDArray[np.bool_], array: npt.NDArray[_DT]) -> npt.NDArray[_DT]:
    """``array[keep]`` in steps (``np.compress`` makes an index array of the kept items)."""
    out = _alloc(int(np.count_nonzero(keep)), array.dtype.type)
    at = 0
    for start in range(0, array.size, _STEP):
        part = array[start : start + _STEP][keep[start : start + _STEP]]
        out[at : at + part.size] = part
        at += part.size
    return out


def _stamp(at_s: float) -> int:
    """``at_s`` as stored: whole seconds rounded up, clamped into uint32. NaN counts as
    the latest time (the id is kept longest, never dropped early)."""
    if at_s <= 0:
        return 0
    if at_s < TIME_MAX:
        return math.ceil(at_s)
    return TIME_MAX  # also NaN and +inf


def _cutoff(now_s: float, window_s: float) -> int:
    """The stored time below which an id left the window at ``now_s``: an id added at
    ``at_s < now_s - window_s`` is stored as ``ceil(at_s) < ceil(now_s - window_s)``."""
    edge = now_s - window_s
    if not edge > 0:  # also NaN
        return 0
    return math.ceil(edge) if edge < TIME_MAX else TIME_MAX


def _int64(item: object) -> int | None:
    """``item`` as an int when it is an int (or numpy integer) within int64, else None."""
    if type(item) is not int:
        if not isinstance(item, int | np.integer):
            return None
        try:
            item = operator.index(item)
        except Exception:
            return None
    if INT64_MIN <= item <= INT64_MAX:
        return item
    return None


def _id_array(ids: Iterable[int] | npt.NDArray[np.generic]) -> tuple[IdArray, list[int] | None]:
    """``ids`` as a new int64 array, and as a list of Python ints when it was built from one.

    Raises TypeError for something that is not an int, ValueError for an int outside
    int64."""
    if isinstance(ids, np.ndarray) and ids.dtype.kind != "O":
        if ids.dtype.kind not in "iub":
            raise TypeError(f"ids must be integers, not {ids.dtype}")
        flat = ids.reshape(-1)
        if flat.dtype.kind == "u" and flat.size and int(flat.max()) > INT64_MAX:
            raise ValueError("an id is outside int64")
        return flat.astype(np.int64), None
    values = list(map(operator.index, ids))
    try:
        return np.array(values, dtype=np.int64), values
    except OverflowError:
        raise ValueError("an id is outside int64") from None


def pack_ids(ids: Iterable[int]) -> bytes:
    """``ids`` as big-endian int64 (``>i8``), 8 bytes each: what :meth:`IdWindow.add_packed`
    reads. Raises ValueError for an id outside int64, TypeError for a non-int."""
    values = list(map(operator.index, ids))
    try:
        return np.array(values, dtype=">i8").tobytes()
    except OverflowError:
        raise ValueError("an id is outside int64") from None


@dataclass(frozen=True, slots=True, eq=False)
class _Level:
    """Published, never written: ids sorted and unique, each with its latest time."""

    ids: IdArray
    times: TimeArray
    #: ids[0] and ids[-1] as Python ints: a scalar lookup outside them skips the search
    #: (ids that grow with time fall into few levels).
    lo: int
    hi: int
    tmin: int
    tmax: int

    @property
    def size(self) -> int:
        return int(self.ids.size)


def _level(ids: IdArray, times: TimeArray) -> _Level | None:
    """A level of sorted, unique ``ids`` (made read-only: it is published); None when
    empty."""
    if not ids.size:
        return None
    ids.flags.writeable = False
    times.flags.writeable = False
    return _Level(ids, times, int(ids[0]), int(ids[-1]), int(times.min()), int(times.max()))


def _unique(ids: IdArray, times: TimeArray) -> tuple[IdArray, TimeArray]:
    """Sorted ``ids`` without repeats, each with the latest of its times."""
    if ids.size < 2:
        return ids, times
    starts = _alloc(ids.size, np.bool_)
    starts[0] = True
    np.not_equal(ids[1:], ids[:-1], out=starts[1:])
    if starts.all():
        return ids, times
    first = np.flatnonzero(starts)
    del starts
    out_ids = np.take(ids, first, out=_alloc(first.size, np.int64))
    out_times = np.maximum.reduceat(times, first, out=_alloc(first.size, np.uint32))
    return out_ids, out_times


def _sorted_level(ids: IdArray, times: TimeArray | int) -> _Level | None:
    """A level of any ``ids`` (each with its time in ``times``, or all at ``times``)."""
    order = np.argsort(ids)
    ids = np.take(ids, order, out=_alloc(ids.size, np.int64))
    if isinstance(times, int):
        stamps = _alloc(ids.size, np.uint32)
        stamps.fill(times)
    else:
        stamps = np.take(times, order, out=_alloc(ids.size, np.uint32))
    del order
    return _level(*_unique(ids, stamps))


def _kept_mask(level: _Level, cutoff: int) -> npt.NDArray[np.bool_]:
    """Which ids of ``level`` are still in the window."""
    return np.greater_equal(level.times, cutoff, out=_alloc(level.size, np.bool_))


def _kept(level: _Level, cutoff: int) -> tuple[IdArray, TimeArray]:
    """The ids of ``level`` (and their times) still in the window."""
    if level.tmin >= cutoff:
        return level.ids, level.times
    keep = _kept_mask(level, cutoff)
    return _compress(keep, level.ids), _compress(keep, level.times)


def _merge(newer: _Level, older: _Level, cutoff: int) -> _Level | None:
    """One level holding the ids of both still in the window, each at its latest time."""
    a_ids, a_times = _kept(older, cutoff)
    b_ids, b_times = _kept(newer, cutoff)
    if a_ids.size < b_ids.size:
        a_ids, a_times, b_ids, b_times = b_ids, b_times, a_ids, a_times
    if not b_ids.size:
        return _level(a_ids, a_times)
    # Where each id of the smaller array goes among the larger one's, then both copied
    # into place: linear, where sorting the concatenation would not be.
    n = a_ids.size + b_ids.size
    at = _alloc(b_ids.size, np.intp)
    for start in range(0, b_ids.size, _STEP):  # in steps: no temporary array of m items
        stop = min(start + _STEP, b_ids.size)
        at[start:stop] = np.searchsorted(a_ids, b_ids[start:stop])
        at[start:stop] += np.arange(start, stop)
    ids = _alloc(n, np.int64)
    times = _alloc(n, np.uint32)
    from_a = _alloc(n, np.bool_)
    from_a.fill(True)
    from_a[at] = False
    ids[at] = b_ids
    times[at] = b_times
    ids[from_a] = a_ids
    times[from_a] = a_times
    del from_a, at
    return _level(*_unique(ids, times))


class IdWindow:
    """Exact set of the int64 ids committed during the last ``window_s`` seconds.

    One writer thread (:meth:`add`, :meth:`add_packed`, :meth:`expire`), any number of
    reader threads (``in``, :meth:`contains_many`, ``len``, :attr:`nbytes`); see the
    module docstring for why readers need no lock and never miss an added id.
    """

    def __init__(
        self,
        window_s: float,
        *,
        recent_limit: int = 16_384,
        max_level: int = DEFAULT_MAX_LEVEL,
    ) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s!r}")
        if recent_limit < 1 or max_level < 1:
            raise ValueError("recent_limit and max_level must be at least 1")
        self._window_s = float(window_s)
        self._recent_limit = recent_limit
        self._max_level = max_level
        # Published (read by other threads).
        self._levels: tuple[_Level, ...] = ()
        self._recent: set[int] = set()
        # The writer's own.
        self._pending: list[IdArray] = []
        self._pending_times: list[int] = []
        self._pending_n = 0
        self._pending_tmin = TIME_MAX
        self._cutoff = 0

    @property
    def window_s(self) -> float:
        return self._window_s

    # -- writer ------------------------------------------------------------------------

    def add(self, ids: Iterable[int] | npt.NDArray[np.generic], at_s: float) -> None:
        """Remember ``ids``, committed at ``at_s`` (seconds since the epoch). Raises
        TypeError for a non-int and ValueError for an id outside int64 (then nothing of
        ``ids`` was added). When it returns, every id is visible to readers."""
        array, values = _id_array(ids)
        self._add(array, values, _stamp(at_s))

    def add_packed(self, packed: bytes | memoryview, at_s: float) -> None:
        """:meth:`add` for ids packed as big-endian int64 (:func:`pack_ids`, the marker
        format). Raises ValueError when the length is not a multiple of 8."""
        if len(packed) % 8:
            raise ValueError(f"packed ids of {len(packed)} bytes: not a multiple of 8")
        array = np.frombuffer(packed, dtype=">i8").astype(np.int64)
        self._add(array, None, _stamp(at_s))

    def expire(self, now_s: float) -> int:
        """Forget ids added before ``now_s - window_s``, lazily: whole levels whose newest
        id left the window, levels of which at least half did (rewritten), and the recent
        set when its oldest id did; the rest goes in later merges. A ``now_s`` earlier than
        a previous one changes nothing. Returns how many ids this call dropped."""
        cutoff = _cutoff(now_s, self._window_s)
        if cutoff <= self._cutoff:
            return 0
        self._cutoff = cutoff
        dropped = 0
        if self._pending and self._pending_tmin < cutoff:
            held = len(self._recent)
            kept = self._freeze()
            dropped += max(held - kept, 0)
        levels = self._levels
        changed = False
        fresh: list[_Level] = []
        for level in levels:
            if level.tmin >= cutoff:
                fresh.append(level)
                continue
            if level.tmax < cutoff:
                dropped += level.size
                changed = True
                continue
            gone = level.size - int(np.count_nonzero(_kept_mask(level, cutoff)))
            if gone * 2 < level.size:
                fresh.append(level)
                continue
            rest = _level(*_kept(level, cutoff))
            if rest is not None:
                fresh.append(rest)
            dropped += gone
            changed = True
        if changed:
            self._levels = tuple(fresh)
            self._compact()
        return dropped

    def _add(self, array: IdArray, values: list[int] | None, stamp: int) -> None:
        if not array.size:
            return
        if array.size >= self._recent_limit:
            # A large batch bypasses the set: it becomes a level at once.
            level = _sorted_level(array, stamp)
            if level is not None:
                self._levels = (level, *self._levels)
        else:
            self._pending.append(array)
            self._pending_times.append(stamp)
            self._pending_n += array.size
            self._pending_tmin = min(self._pending_tmin, stamp)
            self._recent.update(values if values is not None else array.tolist())
            if self._pending_n >= self._recent_limit:
                self._freeze()
        self._compact()

    def _freeze(self) -> int:
        """Turn the recent ids into a level (publish it), then start an empty recent set.
        Returns how many ids the level holds."""
        if not self._pending:
            return 0
        ids = np.concatenate(self._pending)
        times = np.repeat(
            np.array(self._pending_times, dtype=np.uint32),
            [chunk.size for chunk in self._pending],
        )
        if self._pending_tmin < self._cutoff:
            keep = times >= self._cutoff
            ids, times = ids[keep], times[keep]
        level = _sorted_level(ids, times)
        if level is not None:
            self._levels = (level, *self._levels)
        # Only now, with the level published: see the module docstring.
        self._recent = set()
        self._pending = []
        self._pending_times = []
        self._pending_n = 0
        self._pending_tmin = TIME_MAX
        return 0 if level is None else level.size

    def _compact(self) -> None:
        """Merge adjacent levels, newest pairs first, while a newer one holds at least
        1/FANOUT of the older one and both fit in ``max_level``; at most ``max_level`` ids
        of merging per call (the rest waits for the next call)."""
        work = 0
        while True:
            levels = self._levels
            for i in range(len(levels) - 1):
                newer, older = levels[i], levels[i + 1]
                size = newer.size + older.size
                if newer.size * FANOUT >= older.size and size <= self._max_level:
                    break
            else:
                return
            if work and work + size > self._max_level:
                return
            merged = _merge(newer, older, self._cutoff)
            work += size
            self._levels = (*levels[:i], *((merged,) if merged else ()), *levels[i + 2 :])

    # -- readers -----------------------------------------------------------------------

    def __contains__(self, item: object) -> bool:
        """Whether ``item`` was added (and has not been forgotten). Anything but an int
        within int64 is not found; never raises."""
        value = _int64(item)
        if value is None:
            return False
        # The set first, the levels second: see the module docstring.
        if value in self._recent:
            return True
        for level in self._levels:
            if level.lo <= value <= level.hi:
                ids = level.ids
                at = ids.searchsorted(value)
                if at < ids.size and ids.item(at) == value:
                    return True
        return False

    def contains_many(self, ids: Sequence[int]) -> list[bool]:
        """``[i in self for i in ids]``, searching each level once for the whole batch."""
        found = [False] * len(ids)
        recent = self._recent
        where: list[int] = []
        values: list[int] = []
        for i, item in enumerate(ids):
            value = _int64(item)
            if value is None:
                continue
            if value in recent:
                found[i] = True
            else:
                where.append(i)
                values.append(value)
        levels = self._levels
        if not values or not levels:
            return found
        query = np.array(values, dtype=np.int64)
        order = np.argsort(query)
        query = query[order]
        hit = np.zeros(query.size, dtype=bool)
        for level in levels:
            at = level.ids.searchsorted(query)
            np.minimum(at, level.size - 1, out=at)
            hit |= level.ids[at] == query
        for j in order[hit].tolist():
            found[where[j]] = True
        return found

    def __len__(self) -> int:
        """Ids held: the levels' plus the recent set's. An id is counted once per level
        (and the recent set) holding it: levels de-duplicate when they merge, so an id
        added again while an older copy sits in another level (or in a run of
        ``max_level`` ids, which are not merged further) counts twice until the older copy
        expires. Ids that left the window but were not dropped yet are counted."""
        recent = self._recent
        return len(recent) + sum(level.size for level in self._levels)

    @property
    def nbytes(self) -> int:
        """Bytes held: the levels' arrays, plus an estimate of the recent set (its table
        and its int objects) and the chunks beside it."""
        recent = self._recent
        pending = list(self._pending)
        held = sum(level.ids.nbytes + level.times.nbytes for level in self._levels)
        held += sum(chunk.nbytes for chunk in pending)
        return held + sys.getsizeof(recent) + _INT_BYTES * len(recent)

    @property
    def level_sizes(self) -> tuple[int, ...]:
        """Ids in each level, newest first (for metrics and tests)."""
        return tuple(level.size for level in self._levels)
