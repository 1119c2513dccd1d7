"""Memory, lookup cost and pauses of :class:`bridge.dedup.window.IdWindow`.

``python -m devtools.id_window_bench [--ids N ...]`` (default: 1,000,000 and 10,000,000;
``--ids 86400000`` is a full day at 1,000 msg/s). Each size runs in a child process of its
own, so that its RSS growth is not blurred by memory an earlier size freed.

For N random int64 ids, committed at ``--rate`` ids per second of (simulated) commit time:

* load: the ids go in through ``add_packed`` in chunks of ``--chunk`` ids (500, as the
  start-up catch-up reads markers), with ``expire`` every simulated minute (as the store
  does); the total time, the longest single ``add_packed`` call (a merge pause) and the
  longest ``expire`` call, in wall time and in CPU time of the writer thread (the CPU
  figures hold on a busy machine, where the wall times include waiting for a CPU).
  Meanwhile a reader thread looks up an id every millisecond (an event loop at 1,000
  msg/s) and times each lookup: its longest one shows whether a merge stalls readers.
* bytes per held id: by ``nbytes``, and by the growth of VmRSS (``/proc/self/status``)
  from before the window was built to after the load, both after a ``gc.collect()``.
* lookups: µs per id for hits (ids added) and misses (ids not added), with ``in`` one at a
  time and with ``contains_many`` in batches of 500.

With ``--window-h`` shorter than N / rate, the load runs past the window and shows the
steady state: ids held against ids in the window.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import threading
import time

import numpy as np

from bridge.dedup.window import IdWindow
from bridge.numbers import INT64_MAX, INT64_MIN

#: Simulated commit time of the first id (2025-06-15).
T0 = 1_750_000_000.0
SAMPLE = 100_000
BATCH = 500


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class Reader(threading.Thread):
    """Looks up one id per millisecond and keeps the longest lookup (GIL wait included)."""

    def __init__(self, window: IdWindow, probes: list[int]) -> None:
        super().__init__(daemon=True)
        self.window = window
        self.probes = probes
        self.stop = threading.Event()
        self.longest = 0.0
        self.count = 0

    def run(self) -> None:
        probes = self.probes
        while not self.stop.wait(0.001):
            x = probes[self.count % len(probes)]
            started = time.perf_counter()
            _ = x in self.window
            self.longest = max(self.longest, time.perf_counter() - started)
            self.count += 1


def per_id_us(fn: object, items: list[int]) -> float:
    started = time.perf_counter()
    fn(items)  # type: ignore[operator]
    return (time.perf_counter() - started) / len(items) * 1e6


def run_one(n: int, rate: float, window_h: float, chunk: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    packed = rng.integers(INT64_MIN, INT64_MAX, n, dtype=np.int64, endpoint=True)
    packed = packed.astype(">i8")
    view = memoryview(packed.tobytes())
    del packed
    sample_at = rng.integers(0, n, SAMPLE)
    big_endian = np.frombuffer(view, dtype=">i8")
    hits = [int(x) for x in big_endian[sample_at]]
    misses = [int(x) for x in rng.integers(INT64_MIN, INT64_MAX, SAMPLE, dtype=np.int64)]
    window_s = window_h * 3600.0

    gc.collect()
    rss_before = rss_bytes()
    window = IdWindow(window_s)
    reader = Reader(window, hits[:1000])
    reader.start()
    longest_add = longest_add_cpu = longest_expire = 0.0
    next_expire = T0 + 60.0
    started = time.perf_counter()
    started_cpu = time.thread_time()
    for first in range(0, n, chunk):
        at_s = T0 + first / rate
        piece = view[first * 8 : (first + chunk) * 8]
        t = time.perf_counter()
        c = time.thread_time()
        window.add_packed(piece, at_s)
        longest_add_cpu = max(longest_add_cpu, time.thread_time() - c)
        longest_add = max(longest_add, time.perf_counter() - t)
        if at_s >= next_expire:
            next_expire += 60.0
            t = time.perf_counter()
            window.expire(at_s)
            longest_expire = max(longest_expire, time.perf_counter() - t)
    load_s = time.perf_counter() - started
    load_cpu_s = time.thread_time() - started_cpu
    reader.stop.set()
    reader.join()
    gc.collect()
    rss_growth = rss_bytes() - rss_before
    held = len(window)

    in_window = min(n, int(rate * window_s))
    if n > in_window:  # only the ids of the window are sure to be there
        hits = [x for x, i in zip(hits, sample_at.tolist(), strict=True) if i >= n - in_window]

    def scalar(items: list[int]) -> None:
        for x in items:
            _ = x in window

    def batched(items: list[int]) -> None:
        for i in range(0, len(items), BATCH):
            window.contains_many(items[i : i + BATCH])

    assert all(window.contains_many(hits)), "an id of the window was not found"
    assert not any(window.contains_many(misses)), "an id never added was found"
    figures = {
        "in_hit": per_id_us(scalar, hits),
        "in_miss": per_id_us(scalar, misses),
        "many_hit": per_id_us(batched, hits),
        "many_miss": per_id_us(batched, misses),
    }
    print(f"ids={n:,} (window {window_h:g} h at {rate:g}/s: {in_window:,} in the window)")
    print(f"  held ids           {held:,} in {len(window.level_sizes)} levels {window.level_sizes}")
    print(
        f"  bytes/held id      {window.nbytes / held:.2f} by nbytes, "
        f"{rss_growth / held:.2f} by RSS growth ({rss_growth / 2**20:.0f} MiB)"
    )
    print(
        f"  in, µs/id          hit {figures['in_hit']:.2f}, miss {figures['in_miss']:.2f}\n"
        f"  contains_many(500) hit {figures['many_hit']:.2f}, miss {figures['many_miss']:.2f}"
    )
    print(
        f"  load               {load_s:.1f} s ({n / load_s / 1e6:.2f} M ids/s; "
        f"{load_cpu_s:.1f} s CPU of the writer thread) via add_packed({chunk} ids)"
    )
    print(
        f"  longest add call   {longest_add * 1000:.0f} ms ({longest_add_cpu * 1000:.0f} ms "
        f"CPU); longest expire call {longest_expire * 1000:.0f} ms"
    )
    print(
        f"  reader (1 lookup/ms while loading): {reader.count:,} lookups, "
        f"longest {reader.longest * 1000:.1f} ms",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.id_window_bench")
    parser.add_argument("--ids", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--rate", type=float, default=1000.0, help="ids per second")
    parser.add_argument("--window-h", type=float, default=24.0)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    common = [
        f"--rate={args.rate}",
        f"--window-h={args.window_h}",
        f"--chunk={args.chunk}",
        f"--seed={args.seed}",
    ]
    if args.one:
        for n in args.ids:
            run_one(n, args.rate, args.window_h, args.chunk, args.seed)
        return 0
    for n in args.ids:
        cmd = [sys.executable, "-m", "devtools.id_window_bench", "--one", "--ids", str(n)]
        if subprocess.run([*cmd, *common], check=False).returncode:
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
