"""The simulator's CPU per message: what ``make bench`` pays for its message source.

    python -m devtools.sim_cost [--messages 100000] [--runs 3] [--consumers 1]
                                [--confirm-writes joined|single] [--label TEXT]

Starts :mod:`devtools.bench_sim` as a child process (from the tree this module is in: run
it from a copy of the repository to measure another version), publishes ``--messages``
through ``/_sim/publish``, then logs in with a consumer that is cheap itself (the push's
id read at its fixed offset, the confirm frame from the client session) and confirms
every push (``--consumers``: that many logins on the group share them). Reports the
child's CPU seconds (``/proc/<pid>/stat`` utime + stime) per 100,000 messages for
publishing, for delivery (login to the last confirm counted) and both together.

``--confirm-writes``: ``joined`` writes every confirm produced in one event-loop turn in
one socket write (many confirms per TCP segment, as under load); ``single`` writes each
confirm on its own (one segment each while the socket keeps up, like ``ws.send`` per
confirm).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from bridge.sources.tmc import codec
from bridge.sources.tmc.codec import Fmt
from bridge.sources.tmc.session import ClientSession, Kind, LoggedIn, Push
from devtools.harness import DEMO_APP_KEY, DEMO_SECRET, free_port

_ROOT = Path(__file__).resolve().parents[1]
_ID = struct.Struct("<q")


@dataclass
class Cost:
    publish_s: float
    deliver_s: float
    wall_s: float
    messages: int

    def per_100k(self, seconds: float) -> float:
        return seconds / self.messages * 100_000


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sim_get(port: int, path: str) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sim/{path}", timeout=30) as resp:
        out: dict[str, object] = json.loads(resp.read())
        return out


def start(port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(_ROOT), "TMC_APP_SECRET": DEMO_SECRET}
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.bench_sim", "--port", str(port)],
        env=env,
        cwd=_ROOT,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            sim_get(port, "stats")
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("simulator exited") from None
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("simulator did not come up in 30 s")


class _Count:
    """Confirms written by all consumers together; ``all`` is set at ``target``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.done = 0
        self.all = asyncio.Event()

    def add(self) -> None:
        self.done += 1
        if self.done >= self.target:
            self.all.set()


async def consume_all(url: str, count: int, consumers: int, *, joined: bool) -> None:
    """``consumers`` logins on one group, confirming ``count`` pushes between them."""
    total = _Count(count)
    tasks = [asyncio.create_task(consume(url, total, joined=joined)) for _ in range(consumers)]
    waiter = asyncio.create_task(total.all.wait())
    await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    failed = [t for t in tasks if t.done() and t.exception() is not None]
    for task in (waiter, *tasks):
        task.cancel()
    await asyncio.gather(waiter, *tasks, return_exceptions=True)
    if failed:
        raise RuntimeError(f"consumer failed: {failed[0].exception()!r}")


async def consume(url: str, total: _Count, *, joined: bool) -> None:
    """Log in and confirm every push, counting each in ``total``; runs until cancelled
    (after a short wait for the last confirms to be written)."""
    async with connect(url, compression=None, ping_interval=None, max_size=None) as ws:
        session = ClientSession(DEMO_APP_KEY, DEMO_SECRET, "default")
        await ws.send(session.connect(int(time.time() * 1000)))
        event = session.receive(await ws.recv())  # type: ignore[arg-type]
        if not isinstance(event, LoggedIn):
            raise RuntimeError(f"login failed: {event}")
        await ws.send(session.pull())
        # A canonical push has the id right after the token and __kind: read it there
        # rather than decoding the frame (the consumer's CPU shares the two cores).
        prefix = (
            codec.send_head(event.token)
            + codec.encode_custom("__kind", codec.byte(Kind.DATA))
            + codec.custom_head("id", Fmt.INT64)
        )
        at = len(prefix)
        flush = _Flusher(ws) if joined else None
        async for data in ws:
            assert isinstance(data, bytes)
            if data.startswith(prefix):
                msg_id = _ID.unpack_from(data, at)[0]
            else:
                push = session.receive(data)
                if not isinstance(push, Push):
                    continue
                msg_id = push.message.message_id
            if flush is None:
                await ws.send(session.confirm(msg_id))
            else:
                flush.add(session.confirm(msg_id))
            total.add()
            if total.all.is_set():
                if flush is not None:
                    flush.now()
                await ws.drain()
                await asyncio.sleep(3600)  # until cancelled: logging out would requeue


class _Flusher:
    """Confirms of one event-loop turn, framed by the protocol and written at once."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.due = False

    def add(self, frame: bytes) -> None:
        self.ws.protocol.send_binary(frame)
        if not self.due:
            self.due = True
            asyncio.get_running_loop().call_soon(self.now)

    def now(self) -> None:
        self.due = False
        data = b"".join(self.ws.protocol.data_to_send())
        if data:
            self.ws.transport.write(data)


def one_run(messages: int, consumers: int, *, joined: bool) -> Cost:
    port = free_port()
    proc = start(port)
    try:
        before = cpu_seconds(proc.pid)
        sim_get(port, f"publish?count={messages}")
        published = cpu_seconds(proc.pid)
        started = time.monotonic()
        url = f"ws://127.0.0.1:{port}/"
        asyncio.run(consume_all(url, messages, consumers, joined=joined))
        while True:
            stats = sim_get(port, "stats")
            if stats["confirmed"] == messages:
                break
            time.sleep(0.02)
        wall = time.monotonic() - started
        delivered = cpu_seconds(proc.pid)
        if stats["redelivered"] or stats["unknown_confirms"] or stats["pushes"] != messages:
            raise RuntimeError(f"unexpected simulator stats: {stats}")
        return Cost(published - before, delivered - published, wall, messages)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.sim_cost")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--confirm-writes", choices=("joined", "single"), default="joined")
    parser.add_argument("--consumers", type=int, default=1, help="logins on the group")
    parser.add_argument("--label", default=str(_ROOT))
    args = parser.parse_args(argv)
    for i in range(args.runs):
        cost = one_run(args.messages, args.consumers, joined=args.confirm_writes == "joined")
        print(
            f"{args.label} run {i + 1}: simulator CPU s per 100k: "
            f"publish {cost.per_100k(cost.publish_s):.2f}, "
            f"deliver {cost.per_100k(cost.deliver_s):.2f}, "
            f"total {cost.per_100k(cost.publish_s + cost.deliver_s):.2f} "
            f"({args.messages:,} messages, delivery {cost.wall_s:.1f} s wall, "
            f"{args.consumers} consumer(s), confirms {args.confirm_writes})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
