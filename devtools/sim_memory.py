"""Memory of the TMC simulator over a long run: publish N messages (default one million)
into an in-process simulator, let a minimal client confirm every push, print the RSS.

    python -m devtools.sim_memory [--messages 1000000] [--batch 100000]

``--batch``: publish in slices of this many, each once the previous one is settled
(0: all at once, the backlog's own memory then counts in the peak). The figure that
matters is ``after``: what the simulator still holds once everything is confirmed (a
compact outcome per message for ``/_sim/ledger``, nothing else). ``after (trimmed)``
asks the C allocator to hand freed pages back first (glibc ``malloc_trim``), so it shows
what is really held rather than what the allocator kept for reuse.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import time
from typing import Any

from websockets.asyncio.client import connect

from bridge.sources.tmc.session import ClientSession, LoggedIn, Push

KEY, SECRET = "12345678", "memory-secret"


def rss_mb() -> float:
    """Resident set size of this process, in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import resource

    return pages * resource.getpagesize() / 2**20


def malloc_trim() -> None:
    name = ctypes.util.find_library("c")
    if name:
        with_trim = ctypes.CDLL(name)
        if hasattr(with_trim, "malloc_trim"):
            with_trim.malloc_trim(0)


async def confirm_all(url: str, stop: asyncio.Event) -> int:
    """Log in, confirm every push as it comes; returns how many were confirmed."""
    done = 0
    # No keepalive: the simulator, like TMC, answers no pings (a ping timeout would end it).
    async with connect(url, compression=None, max_queue=None, ping_interval=None) as ws:
        session = ClientSession(KEY, SECRET, "default")
        await ws.send(session.connect(int(time.time() * 1000)))
        assert isinstance(session.receive(await ws.recv()), LoggedIn)  # type: ignore[arg-type]
        await ws.send(session.pull())
        while not stop.is_set():
            try:
                data = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                continue
            event = session.receive(data)  # type: ignore[arg-type]
            if isinstance(event, Push):
                await ws.send(session.confirm(event.message.message_id))
                done += 1
    return done


async def run(count: int, batch: int, simulator: Any = None) -> dict[str, float]:
    """``simulator``: the module to take Simulator/SimulatorConfig from (for comparing
    against another version); the installed one by default."""
    if simulator is None:
        from bridge.sources.tmc import simulator
    sim = simulator.Simulator(simulator.SimulatorConfig(apps={KEY: SECRET}, confirm_timeout_s=600))
    await sim.start()
    gc.collect()
    before = rss_mb()
    stop = asyncio.Event()
    client = asyncio.create_task(confirm_all(sim.url, stop))
    t0 = time.monotonic()
    peak = before
    step = batch or count
    published = 0
    while published < count:
        n = min(step, count - published)
        sim.publish(n)
        published += n
        peak = max(peak, rss_mb())
        while not await sim.wait_settled(5):
            if client.done():
                await client  # the client failed: raise its error
                raise RuntimeError("the client stopped before all was confirmed")
            peak = max(peak, rss_mb())
            print(f"  {sim.stats.confirmed:,} confirmed, rss {rss_mb():.0f} MiB", flush=True)
    elapsed = time.monotonic() - t0
    stop.set()
    confirmed = await client
    gc.collect()
    after = rss_mb()
    malloc_trim()
    trimmed = rss_mb()
    ledger_len = len(sim.ledger())
    await sim.stop()
    return {
        "messages": count,
        "confirmed": confirmed,
        "ledger": ledger_len,
        "seconds": round(elapsed, 1),
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_after_mb": round(after, 1),
        "rss_after_trimmed_mb": round(trimmed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=100_000, help="0: publish all at once")
    args = parser.parse_args()
    from bridge.observability import logging as obs_logging

    obs_logging.configure("warning", "auto")
    result = asyncio.run(run(args.messages, args.batch))
    for key, value in result.items():
        print(f"{key}: {value:,}")


if __name__ == "__main__":
    main()
