"""The simulator as ``make bench`` runs it: ``tmc-bridge simulate`` plus two control paths.

    python -m devtools.bench_sim --port P [--messages N] [--window 1000]

* ``GET /_sim/latency[?reset=1]``: push -> confirm percentiles (p50, p99, p999, max) of
  the confirms so far and their count; ``reset=1`` forgets them afterwards (a warm-up).
* ``GET /_sim/pace?rate=R&seconds=S``: publish ``R`` generated messages a second for
  ``S`` seconds from inside the simulator's event loop, a slice every 10 ms on an
  absolute schedule (a late slice catches up), so a fixed rate reaches the bridge
  without an HTTP call per slice. Answers at once; ``/_sim/stats`` shows the progress.

Everything else is the plain :class:`~bridge.sources.tmc.simulator.Simulator` (same
delivery, same cost per message): the bench measures the bridge, not a special server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from bridge.sources.tmc.simulator import Simulator, SimulatorConfig
from devtools.harness import DEMO_APP_KEY, DEMO_SECRET

#: Seconds between two publishing slices of a paced run.
PACE_SLICE_S = 0.01


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50, p99, p999 and max of ``samples`` (nearest rank), rounded to 0.01 ms."""
    lat = sorted(samples)
    if not lat:
        return {"count": 0}

    def rank(share: float) -> float:
        return round(lat[min(len(lat) - 1, int(len(lat) * share))], 2)

    return {
        "count": len(lat),
        "p50_ms": rank(0.5),
        "p99_ms": rank(0.99),
        "p999_ms": rank(0.999),
        "max_ms": round(lat[-1], 2),
    }


class BenchSimulator(Simulator):
    def __init__(self, config: SimulatorConfig) -> None:
        super().__init__(config)
        self._pacers: set[asyncio.Task[None]] = set()

    async def pace(self, rate: float, seconds: float) -> None:
        total = int(rate * seconds)
        started = time.monotonic()
        done = 0
        while done < total:
            due = min(total, int((time.monotonic() - started) * rate))
            if due > done:
                self.publish(due - done)
                done = due
            await asyncio.sleep(PACE_SLICE_S)

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        from urllib.parse import parse_qs, urlsplit

        url = urlsplit(request.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body: dict[str, Any]
        if url.path == "/_sim/latency":
            body = percentiles(list(self.stats.latencies_ms))
            if query.get("reset") == "1":
                del self.stats.latencies_ms[:]
        elif url.path == "/_sim/pace":
            rate, seconds = float(query.get("rate", "1000")), float(query.get("seconds", "1"))
            task = asyncio.get_running_loop().create_task(self.pace(rate, seconds))
            self._pacers.add(task)
            task.add_done_callback(self._pacers.discard)
            body = {"pacing": int(rate * seconds), "rate": rate, "seconds": seconds}
        else:
            return super()._http(connection, request)
        data = json.dumps(body).encode()
        headers = Headers(
            [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        )
        return Response(HTTPStatus.OK.value, "OK", headers, data)


async def serve(args: argparse.Namespace) -> None:
    from bridge.observability import logging as obs_logging

    obs_logging.configure("warning", "auto")
    cfg = SimulatorConfig(
        host="127.0.0.1",
        port=args.port,
        apps={DEMO_APP_KEY: os.environ.get("TMC_APP_SECRET", DEMO_SECRET)},
        confirm_timeout_s=args.confirm_timeout_s,
        window=args.window,
        seed=args.seed,
    )
    sim = BenchSimulator(cfg)
    await sim.start()
    if args.messages:
        sim.publish(args.messages)
    print(f"bench simulator ready at {sim.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sim.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench_sim")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--messages", type=int, default=0)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--confirm-timeout-s", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
