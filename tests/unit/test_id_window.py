"""bridge.dedup.window: the exact, windowed set of committed ids.

* unit tests of each behaviour: lookups (ints, numpy ints, extremes, anything else),
  packed input, expiry boundaries and laziness, de-duplication, odd times, sizes;
* a hypothesis state machine against a model (id -> latest add time): every id added
  within the window is found, nothing never added is found, whatever the sequence of
  adds, expiries and lookups (tiny ``recent_limit`` and ``max_level``, so that freezing,
  merging, capped runs and rewrites all happen);
* a writer thread adding 1M ids while this thread checks that every id whose ``add``
  returned is found.
"""

from __future__ import annotations

import math
import struct
import threading
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from bridge.dedup.window import TIME_MAX, IdWindow, pack_ids

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
T0 = 1_750_000_000.0


class _Unhashable:
    def __hash__(self) -> int:
        raise RuntimeError("no hash")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no eq")


def _filled(ids: list[int], *, at_s: float = T0, window_s: float = 3600.0, **kw: Any) -> IdWindow:
    w = IdWindow(window_s, **kw)
    w.add(ids, at_s)
    return w


# -- lookups -------------------------------------------------------------------------------


@pytest.mark.parametrize("recent_limit", [1, 4, 16_384])
def test_added_ids_are_found_and_others_are_not(recent_limit: int) -> None:
    w = IdWindow(3600, recent_limit=recent_limit)
    for start in range(0, 100, 3):
        w.add(range(start, min(start + 3, 100)), T0)
    assert all(i in w for i in range(100))
    assert not any(i in w for i in range(100, 200))
    assert not any(i in w for i in range(-100, 0))
    assert len(w) == 100


def test_int64_extremes() -> None:
    extremes = [INT64_MIN, INT64_MIN + 1, -1, 0, INT64_MAX - 1, INT64_MAX]
    for limit in (1, 16_384):
        w = IdWindow(60, recent_limit=limit)
        w.add(extremes[:3], T0)
        w.add_packed(pack_ids(extremes[3:]), T0)
        assert all(i in w for i in extremes)
        assert w.contains_many(extremes) == [True] * 6
        assert 1 not in w and INT64_MIN + 2 not in w and INT64_MAX - 2 not in w


@pytest.mark.parametrize(
    "item",
    [
        2**63,
        -(2**63) - 1,
        10**100,
        -(10**100),
        np.uint64(2**64 - 1),
        1.0,
        5.0,
        float("nan"),
        "5",
        b"5",
        None,
        (5,),
        [5],
        object(),
        _Unhashable(),
        np.float64(5),
        np.array([5]),
    ],
)
def test_anything_but_an_int64_is_not_found_and_never_raises(item: object) -> None:
    w = _filled([5, 1, 2**63 - 1, -(2**63)], recent_limit=2)
    assert (item in w) is False
    assert w.contains_many([item, 5]) == [False, True]  # type: ignore[list-item]


def test_numpy_and_bool_ints_are_ints() -> None:
    w = _filled([0, 1, 7, INT64_MAX], recent_limit=2)
    assert np.int64(7) in w and np.int8(7) in w and np.uint64(INT64_MAX) in w
    assert True in w and False in w  # bool is an int, as for a set
    assert np.int64(8) not in w
    assert w.contains_many([np.int32(7), np.uint64(2**64 - 1), True]) == [True, False, True]  # type: ignore[list-item]


def test_contains_many_agrees_with_in() -> None:
    rng = np.random.default_rng(11)
    added = rng.integers(INT64_MIN, INT64_MAX, 5000, dtype=np.int64, endpoint=True)
    w = IdWindow(3600, recent_limit=64, max_level=1024)
    for chunk in np.array_split(added, 97):
        w.add(chunk, T0)
    probes: list[Any] = [*added[::7].tolist(), *rng.integers(-(2**63), 2**63 - 1, 500).tolist()]
    probes += ["x", None, 2**64, 3.0]
    assert w.contains_many(probes) == [p in w for p in probes]
    assert all(w.contains_many(added.tolist()))
    assert w.contains_many([]) == []
    assert IdWindow(1).contains_many([1, 2]) == [False, False]


# -- input -------------------------------------------------------------------------------


def test_pack_ids_is_big_endian_int64() -> None:
    ids = [1, -1, INT64_MIN, INT64_MAX, 0]
    assert pack_ids(ids) == struct.pack(">5q", *ids)
    assert pack_ids([]) == b""
    assert pack_ids(np.array([3, 4])) == struct.pack(">2q", 3, 4)
    for bad in (2**63, -(2**63) - 1, 10**30):
        with pytest.raises(ValueError, match="int64"):
            pack_ids([1, bad])
    with pytest.raises(TypeError):
        pack_ids([1.5])  # type: ignore[list-item]


def test_add_packed_reads_memoryviews_at_any_offset() -> None:
    ids = [INT64_MIN, -5, 0, 5, INT64_MAX]
    value = b"\x01" + pack_ids(ids)  # the marker: a format byte, then the ids
    w = IdWindow(60)
    w.add_packed(memoryview(value)[1:], T0)
    w.add_packed(b"", T0)
    assert all(i in w for i in ids) and len(w) == 5
    w2 = IdWindow(60, recent_limit=2)  # large batches go straight into a level
    w2.add_packed(pack_ids(ids), T0)
    assert w2.contains_many(ids) == [True] * 5 and len(w2) == 5
    with pytest.raises(ValueError, match="multiple of 8"):
        w.add_packed(b"\x00" * 9, T0)


def test_add_rejects_what_is_not_an_int64_and_adds_nothing_then() -> None:
    w = IdWindow(60)
    with pytest.raises(ValueError, match="int64"):
        w.add([1, 2, 2**63], T0)
    with pytest.raises(ValueError, match="int64"):
        w.add(np.array([1, 2**64 - 1], dtype=np.uint64), T0)
    with pytest.raises(TypeError):
        w.add([1, 2.5], T0)  # type: ignore[list-item]
    with pytest.raises(TypeError):
        w.add(np.array([1.0, 2.0]), T0)
    assert len(w) == 0 and 1 not in w


def test_add_takes_arrays_of_any_int_dtype_and_copies_them() -> None:
    w = IdWindow(60, recent_limit=4)
    small = np.array([3, 1, 2], dtype=np.int16)
    big = np.array([2**63 - 1, 10, 11, 12, 13], dtype=np.uint64)
    w.add(small, T0)
    w.add(big, T0)
    small[:] = 99
    big[:] = 98
    assert w.contains_many([1, 2, 3, 2**63 - 1, 10, 13]) == [True] * 6
    assert 99 not in w and 98 not in w


def test_window_must_be_positive() -> None:
    for bad in (0, -1, float("nan"), float("-inf")):
        with pytest.raises(ValueError):
            IdWindow(bad)
    with pytest.raises(ValueError):
        IdWindow(1, recent_limit=0)
    assert IdWindow(float("inf")).window_s == math.inf


# -- expiry ------------------------------------------------------------------------------


@pytest.mark.parametrize("recent_limit", [1, 16_384])
def test_an_id_is_kept_while_it_is_not_older_than_the_window(recent_limit: int) -> None:
    w = IdWindow(100, recent_limit=recent_limit)
    w.add([1], T0 + 0.5)
    w.add([2], T0 + 0.25)
    for now in (T0, T0 + 50, T0 + 100.25, T0 + 100.5):  # age <= window: not older
        w.expire(now)
        assert 1 in w
    # (2, stored as T0 + 1 too, is older than the window at T0 + 100.5: it may be gone.)
    w.expire(T0 + 10_000)
    assert 1 not in w and 2 not in w and len(w) == 0


def test_expire_returns_what_it_dropped() -> None:
    w = IdWindow(100, recent_limit=4)
    w.add([1, 2, 3, 4], T0)  # a level
    w.add([5, 6], T0 + 50)  # recent set
    assert w.expire(T0 + 100) == 0
    assert w.expire(T0 + 120) == 4  # the whole older level
    assert w.contains_many([1, 5, 6]) == [False, True, True]
    assert w.expire(T0 + 200) == 2
    assert len(w) == 0 and w.level_sizes == ()
    assert w.expire(T0 + 300) == 0


def test_expire_rewrites_a_level_once_half_of_it_left_the_window() -> None:
    w = IdWindow(100, recent_limit=40)
    w.add(range(0, 10), T0)
    w.add(range(10, 20), T0 + 10)
    w.add(range(20, 40), T0 + 20)  # the recent set is full: frozen into one level
    assert w.level_sizes == (40,)
    assert w.expire(T0 + 105) == 0  # 10 of 40 left: kept for now (lazily)
    assert len(w) == 40 and all(i in w for i in range(10, 40))
    assert w.expire(T0 + 115) == 20  # 20 of 40 left: rewritten
    assert w.level_sizes == (20,)
    assert all(i in w for i in range(20, 40)) and not any(i in w for i in range(20))


def test_a_level_keeps_the_ids_exactly_at_the_edge() -> None:
    for edge_at in (T0, T0 - 0.5):  # both stored as T0
        w = IdWindow(100, recent_limit=4)
        w.add([1, 2, 3], T0 - 10)
        w.add([4], edge_at)  # the recent set is full: one level, times T0 - 10 and T0
        assert w.level_sizes == (4,)
        assert w.expire(edge_at + 100) == 3  # 4 is exactly window_s old: not older
        assert w.contains_many([1, 2, 3, 4]) == [False, False, False, True]
        w.add([5, 6, 7, 8], T0 + 1)  # a merge with the edge at T0
        assert 4 in w
        assert w.expire(T0 + 200) == 5 and len(w) == 0


def test_an_earlier_now_changes_nothing() -> None:
    w = _filled([1, 2, 3], window_s=100, recent_limit=2)
    assert w.expire(T0 + 1_000) == 3
    w.add([4], T0 + 1_000)
    assert w.expire(T0) == 0
    assert w.expire(float("-inf")) == 0
    assert 4 in w


def test_an_id_keeps_its_latest_time_whichever_order_it_came_in() -> None:
    for limit in (1, 2, 16_384):
        w = IdWindow(100, recent_limit=limit)
        w.add([1, 2], T0 + 50)
        w.add([1], T0)  # an older commit time, later
        w.add([2, 3], T0 + 60)
        w.expire(T0 + 149)
        assert w.contains_many([1, 2, 3]) == [True, True, True]
        w.expire(T0 + 159)
        assert 2 in w and 3 in w
        w.expire(T0 + 1_000)
        assert len(w) == 0


def test_merges_drop_ids_that_left_the_window() -> None:
    w = IdWindow(100, recent_limit=8)
    w.add(range(100), T0)
    w.expire(T0 + 101)  # the level is dropped whole
    assert len(w) == 0
    w.add(range(100, 200), T0 + 101)
    w.add(range(200, 204), T0 + 150)
    w.expire(T0 + 210)  # 100..199 left, but in a level not yet rewritten...
    w.add(range(300, 340), T0 + 210)  # ...until a merge takes it
    assert all(i in w for i in [*range(200, 204), *range(300, 340)])
    assert not any(i in w for i in range(100))


@pytest.mark.parametrize(
    "at_s", [-1e18, -1.0, 0.0, 1e18, float(TIME_MAX) + 5, math.inf, -math.inf, math.nan]
)
def test_times_outside_1970_to_2106_do_not_crash(at_s: float) -> None:
    w = IdWindow(100, recent_limit=2)
    w.add([1, 2, 3], at_s)
    w.add_packed(pack_ids([4]), at_s)
    w.add([5], T0)
    assert w.contains_many([1, 2, 3, 4, 5]) == [True] * 5
    for now in (math.nan, -math.inf, -1e18, T0, 1e18, math.inf):
        assert w.expire(now) >= 0
    assert 7 not in w


def test_times_after_2106_count_as_2106_and_are_kept_longest() -> None:
    w = IdWindow(100, recent_limit=1)
    w.add([1], 1e18)
    w.add([2], TIME_MAX - 200)
    w.expire(float(TIME_MAX))
    assert 1 in w and 2 not in w
    w.expire(math.inf)  # drops every time but the clamped one
    assert 1 in w and len(w) == 1


# -- de-duplication and sizes ------------------------------------------------------------


def test_merging_levels_de_duplicates() -> None:
    w = IdWindow(3600, recent_limit=4)
    for k in range(50):
        w.add([1, 2, 3, 4, 5, 6, 7, 8], T0 + k)
        w.add([1, 2], T0 + k)
    w.add([1, 2, 3, 4], T0 + 50)
    assert sorted(w.level_sizes)[-1] == 8
    assert len(w) <= 16  # at most one older copy beside the merged level
    w.expire(T0 + 3600 + 49)  # only the last adds are in the window
    assert all(i in w for i in range(1, 9))


def test_repeats_within_one_batch_count_once() -> None:
    w = IdWindow(60, recent_limit=4)
    w.add([7, 7, 7, 7, 7, 8], T0)
    assert w.level_sizes == (2,) and len(w) == 2
    w2 = IdWindow(60)
    w2.add([7, 7, 8], T0)
    assert len(w2) == 2


def test_levels_stay_few_and_within_max_level() -> None:
    rng = np.random.default_rng(5)
    w = IdWindow(3600, recent_limit=16, max_level=4096)
    ids = rng.integers(INT64_MIN, INT64_MAX, 100_000, dtype=np.int64)
    for start in range(0, ids.size, 10):
        w.add(ids[start : start + 10], T0)
    sizes = w.level_sizes
    assert all(size <= 4096 for size in sizes)
    assert len(sizes) <= 100_000 // 2048 + 6  # runs of max_level/2.. plus O(log) levels
    assert all(w.contains_many(ids[::13].tolist()))
    w2 = IdWindow(3600, recent_limit=16)
    for start in range(0, ids.size, 10):
        w2.add(ids[start : start + 10], T0)
    assert len(w2.level_sizes) <= math.ceil(math.log(100_000 / 16, 8)) + 2


def test_a_million_ids_take_at_most_16_bytes_each() -> None:
    rng = np.random.default_rng(1)
    packed = rng.integers(INT64_MIN, INT64_MAX, 1_000_000, dtype=np.int64).astype(">i8")
    view = memoryview(packed.tobytes())
    w = IdWindow(86_400)
    for start in range(0, 1_000_000, 500):
        w.add_packed(view[start * 8 : (start + 500) * 8], T0 + start / 1000)
    assert len(w) == 1_000_000
    assert w.nbytes / len(w) <= 16
    assert w.nbytes >= 12 * 1_000_000


def test_memory_stays_near_one_window_in_steady_state() -> None:
    # 100 ids/s for 40 windows of 100 s, expire every 10 s: 10,000 ids in the window.
    w = IdWindow(100, recent_limit=64, max_level=2048)
    held = []
    next_id = 0
    for second in range(4_000):
        w.add(range(next_id, next_id + 100), T0 + second)
        next_id += 100
        if second % 10 == 9:
            w.expire(T0 + second)
            held.append(len(w))
    assert max(held[20:]) <= 10_000 * 1.25 + 2048
    assert min(held[20:]) >= 10_000
    assert all(i in w for i in range(next_id - 10_000, next_id))


# -- the reference model -----------------------------------------------------------------

PROBES = [*range(-12, 13), INT64_MIN, INT64_MIN + 1, INT64_MAX - 1, INT64_MAX]


#: Times in half seconds: ids land exactly on the edge of the window, and between seconds.
def halves(lo: int, hi: int) -> st.SearchStrategy[float]:
    return st.integers(lo, hi).map(lambda k: k / 2)


ID = st.one_of(st.integers(-10, 10), st.sampled_from([INT64_MIN, INT64_MAX, INT64_MAX - 1]))


class WindowMachine(RuleBasedStateMachine):
    """IdWindow against a dict id -> latest add time."""

    def __init__(self) -> None:
        super().__init__()
        self.window: IdWindow
        self.model: dict[int, float] = {}
        self.now = T0
        self.edge = -math.inf  # ids added before it may be forgotten

    @initialize(
        window_s=st.sampled_from([5.0, 30.0, 1e9]),
        recent_limit=st.sampled_from([1, 2, 4, 64]),
        max_level=st.sampled_from([3, 8, 1 << 24]),
    )
    def start(self, window_s: float, recent_limit: int, max_level: int) -> None:
        self.window = IdWindow(window_s, recent_limit=recent_limit, max_level=max_level)

    @rule(
        ids=st.lists(ID, max_size=9),
        back=halves(-4, 80),
        packed=st.booleans(),
    )
    def add(self, ids: list[int], back: float, packed: bool) -> None:
        at_s = self.now - back  # mostly in the past: commit times come late and unordered
        if packed:
            self.window.add_packed(pack_ids(ids), at_s)
        else:
            self.window.add(ids, at_s)
        for i in ids:
            self.model[i] = max(self.model.get(i, -math.inf), at_s)

    @rule(step=halves(0, 40))
    def expire(self, step: float) -> None:
        self.now += step
        before = len(self.window)
        dropped = self.window.expire(self.now)
        assert 0 <= dropped <= before
        self.edge = max(self.edge, self.now - self.window.window_s)

    @rule(back=halves(0, 200))
    def expire_at_an_earlier_time(self, back: float) -> None:
        self.window.expire(self.now - back)  # a clock that went back: changes nothing
        self.edge = max(self.edge, self.now - back - self.window.window_s)

    @rule(x=ID)
    def lookup(self, x: int) -> None:
        found = x in self.window
        if x not in self.model:
            assert not found
        elif self.model[x] >= self.edge:
            assert found

    @invariant()
    def exact(self) -> None:
        if not hasattr(self, "window"):
            return
        must = {i for i, at in self.model.items() if at >= self.edge}
        found = self.window.contains_many(PROBES)
        for probe, hit in zip(PROBES, found, strict=True):
            assert hit == (probe in self.window)
            if probe in must:
                assert hit, f"{probe} added within the window and not found"
            if probe not in self.model:
                assert not hit, f"{probe} found but never added"
        assert len(self.window) >= len(must)


WindowMachine.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_matches_the_reference_model = WindowMachine.TestCase


# -- one writer, one reader --------------------------------------------------------------


def test_a_reader_finds_every_id_whose_add_returned() -> None:
    n, batch = 1_000_000, 500
    ids = np.random.default_rng(7).integers(INT64_MIN, INT64_MAX, n, dtype=np.int64)
    packed = ids.astype(">i8").tobytes()
    w = IdWindow(86_400, max_level=1 << 17)  # capped runs: more merges, more publishing
    returned = 0  # ids whose add call returned: written by the writer only
    failure: list[BaseException] = []

    def write() -> None:
        nonlocal returned
        try:
            for k, start in enumerate(range(0, n, batch)):
                at_s = T0 + start / 1000
                if k % 2:
                    w.add(ids[start : start + batch], at_s)
                else:
                    w.add_packed(packed[start * 8 : (start + batch) * 8], at_s)
                returned = start + batch
                if k % 200 == 0:
                    w.expire(at_s)
        except BaseException as exc:  # pragma: no cover - reported below
            failure.append(exc)

    writer = threading.Thread(target=write)
    rng = np.random.default_rng(8)
    checks = 0
    writer.start()
    while writer.is_alive():
        upto = returned
        if not upto:
            continue
        newest = ids[max(upto - batch, 0) : upto : 37].tolist()
        older = ids[rng.integers(0, upto, 32)].tolist()
        for x in newest + older:
            assert x in w, f"id {x} of an add that returned is not found"
        assert all(w.contains_many(newest + older))
        checks += 1
        time.sleep(0.002)  # an event loop does other things too: let the writer run
    writer.join()
    assert not failure
    assert checks > 10
    assert all(w.contains_many(ids[::5].tolist()))
    assert len(w) == np.unique(ids).size
