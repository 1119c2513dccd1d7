"""The naive baseline of ``make bench``: what a typical first integration writes.

One WebSocket (the ``websockets`` client) speaking TMC through the project's own sans-I/O
:class:`~bridge.sources.tmc.session.ClientSession`, and one plain confluent-kafka
``Producer``; per message: parse the JSON for the key, ``produce``, ``flush()`` (wait
for the broker's acknowledgement), then confirm to TMC. Nothing batched, nothing in
parallel, no dedup and no transactions: the rate the bridge is compared with.

    python -m devtools.bench_naive --sim-port P --bootstrap HOST:PORT --messages 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from confluent_kafka import Producer
from websockets.asyncio.client import connect

from bridge.sources.tmc.session import ClientSession, LoggedIn, Push
from devtools import bench_run, harness

TOPIC = "bench.naive"


async def consume(sim_port: int, bootstrap: str, messages: int, topic: str = TOPIC) -> int:
    """Read, produce, flush and confirm until ``messages`` were confirmed (or 10 minutes
    passed); returns how many were."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    session = ClientSession(harness.DEMO_APP_KEY, harness.DEMO_SECRET, "default")
    done = 0
    deadline = time.monotonic() + 600
    async with connect(f"ws://127.0.0.1:{sim_port}/", compression=None, max_size=None) as ws:
        await ws.send(session.connect(int(time.time() * 1000)))
        first = await ws.recv()
        if not isinstance(first, bytes) or not isinstance(session.receive(first), LoggedIn):
            raise RuntimeError("naive client: login refused")
        await ws.send(session.pull())
        while done < messages and time.monotonic() < deadline:
            data = await asyncio.wait_for(ws.recv(), 60)
            if not isinstance(data, bytes):
                continue
            event = session.receive(data)
            if not isinstance(event, Push):
                continue
            msg = event.message
            doc = json.loads(msg.content)
            key = str(doc.get("tid") or doc.get("num_iid") or msg.message_id).encode()
            producer.produce(topic, value=msg.content, key=key)
            if producer.flush(30):
                raise RuntimeError("naive client: a record was not acknowledged in 30 s")
            await ws.send(session.confirm(msg.message_id))
            done += 1
    return done


def run(workdir: Path, bootstrap: str, messages: int) -> bench_run.RunResult:
    """The naive client as a child process against the bench simulator holding
    ``messages``: the rate (first push -> last confirm, as for the bridge) and its CPU."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = harness.free_port()
    sim = bench_run.start_sim(workdir, port, messages)
    result = bench_run.RunResult("naive baseline", messages)
    try:
        args = ["--sim-port", str(port), "--bootstrap", bootstrap, "--messages", str(messages)]
        ticks = bench_run.machine_ticks()
        sim_cpu = sim.cpu_seconds()
        child = harness.spawn("naive", args, workdir, {}, module="devtools.bench_naive")
        try:
            deadline = time.monotonic() + 900
            cpu = 0.0
            while child.proc.poll() is None and time.monotonic() < deadline:
                cpu = child.cpu_seconds()
                time.sleep(0.2)
            result.bridge_cpu_s = [cpu]  # sampled every 0.2 s while it ran
        finally:
            code = child.stop()
        busy, total = (b - a for a, b in zip(ticks, bench_run.machine_ticks(), strict=True))
        result.machine_busy = busy / total if total else 0.0
        result.sim_cpu_s = sim.cpu_seconds() - sim_cpu
        result.notes.append("CPU from process start (imports included), sampled every 0.2 s")
        stats = harness.sim_get(port, "stats")
        lat = harness.sim_get(port, "latency")
    finally:
        sim.stop()
    if code != 0:
        raise RuntimeError(f"naive client exited with {code}:\n{child.tail(5)}")
    window = stats["last_confirm_at"] - stats["first_push_at"]
    result.confirmed = int(stats["confirmed"])
    result.window_s = window
    result.rate = result.confirmed / window if window > 0 else 0.0
    result.p50_ms, result.p99_ms = lat.get("p50_ms"), lat.get("p99_ms")
    result.p999_ms = lat.get("p999_ms")
    if result.confirmed:
        result.cpu_per_100k_total = cpu / result.confirmed * 100_000
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench_naive")
    parser.add_argument("--sim-port", type=int, required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args(argv)
    done = asyncio.run(consume(args.sim_port, args.bootstrap, args.messages))
    print(f"naive: {done} confirmed", flush=True)
    return 0 if done == args.messages else 1


if __name__ == "__main__":
    raise SystemExit(main())
