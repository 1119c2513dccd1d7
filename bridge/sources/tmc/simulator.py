"""A TMC server simulator (shared/tmc-protocol.md §9, §11) for tests, the demo and users.

What it does, as the real server is documented to:

* checks the CONNECT ``sign`` against the configured app key/secret and answers a
  CONNECTACK that echoes the Flag and carries a UUID token, or a failed CONNECTACK with
  a StatusCode/StatusPhrase and no token (then keeps or closes the socket, configurable);
* puts the session token on every push and requires it on every client SEND;
* keeps one queue per (app_key, group); each message goes to exactly one online
  connection of the group (round-robin or random), with a per-connection window of
  unconfirmed pushes; pull requests trigger delivery rounds;
* tracks confirms (from any connection of the group; unknown or repeated ids are counted
  and ignored), redelivers after ``confirm_timeout_s`` without confirm and after
  ``failed_delay_s`` following a Failed (kind 20); Confirm after Failed wins (§6.3);
* drops messages older than ``ttl_s``;
* fault injection: drop a connection abruptly, duplicate the next push, send a malformed
  frame;
* reports what it published, pushed, what was confirmed, redelivered and is still
  outstanding, over HTTP on the same port (``GET /_sim/stats``) and in-process.

HTTP control (same port as the WebSocket, any other path is the TMC endpoint):
``GET /_sim/stats``, ``GET /_sim/ledger``, ``GET /_sim/publish?count=N``,
``GET /_sim/fault?name=drop_connection|duplicate_push|malformed_frame``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from bridge.errors import FrameError, ProtocolError
from bridge.sources.tmc.generator import TAOBAO_PUBLISHER, Event, OrderGenerator
from bridge.sources.tmc.server import (
    Confirm,
    ConnectRequest,
    Failed,
    Publish,
    PullRequest,
    ServerSession,
    push_extras,
    push_static,
)

log = structlog.get_logger("bridge.simulator")

Fault = Literal["drop_connection", "duplicate_push", "malformed_frame"]
#: A frame whose Custom value claims 1 GiB: every conforming decoder must refuse it.
MALFORMED_FRAME = bytes.fromhex("0202" + "0100" + "02000000" + "6964" + "01" + "00000040")


@dataclass
class SimulatorConfig:
    host: str = "127.0.0.1"
    port: int = 0
    #: app_key -> app_secret accepted at login.
    apps: dict[str, str] = field(default_factory=lambda: {"12345678": "simulator-secret"})
    confirm_timeout_s: float = 60.0
    failed_delay_s: float = 360.0
    ttl_s: float = 24 * 3600.0
    #: Unconfirmed pushes per connection before the server waits (top-push: 1000).
    window: int = 1000
    distribution: Literal["round_robin", "random"] = "round_robin"
    #: Requeue a dropped connection's unconfirmed messages at once instead of at timeout.
    redeliver_on_disconnect: bool = False
    login_error_code: int = 1
    login_error_phrase: str = "invalid sign"
    close_on_login_error: bool = False
    strict: bool = True
    seed: int = 1


@dataclass(slots=True)
class _Msg:
    id: int
    event: Event
    published_ms: int
    group: tuple[str, str]
    state: str = "queued"  # queued | in_flight | delayed | confirmed | expired
    pushes: int = 0
    owner: _Conn | None = None
    deadline: float = 0.0
    pushed_at: float = 0.0
    #: The attempt-independent part of the push, encoded on first push.
    body: bytes = b""
    #: The serial of the connection it was last pushed to (0: never pushed).
    conn: int = 0


@dataclass(eq=False)
class _Conn:
    ws: ServerConnection
    session: ServerSession
    group: tuple[str, str]
    outbox: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    in_flight: int = 0
    duplicate_next: int = 0
    #: Login order within this simulator (1, 2, ...): the ledger's ``conn``.
    serial: int = 0


@dataclass
class _Group:
    queue: deque[int] = field(default_factory=deque)
    conns: list[_Conn] = field(default_factory=list)
    rr: int = 0


@dataclass
class SimStats:
    published: int = 0
    pushes: int = 0
    confirmed: int = 0
    redelivered: int = 0
    failed_received: int = 0
    duplicate_confirms: int = 0
    unknown_confirms: int = 0
    expired: int = 0
    logins_ok: int = 0
    logins_failed: int = 0
    protocol_errors: int = 0
    faults_injected: int = 0
    connections_online: int = 0
    outstanding: int = 0
    #: Wall-clock seconds of the first push and the latest confirm (throughput window).
    first_push_at: float = 0.0
    last_confirm_at: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self, *, latency: bool = False) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "latencies_ms"}
        # Sorting every sample is costly mid-run; percentiles only when asked for.
        lat = sorted(self.latencies_ms) if latency else []
        if lat:
            out["latency_p50_ms"] = round(lat[len(lat) // 2], 2)
            out["latency_p99_ms"] = round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2)
        return out


class Simulator:
    """One simulated TMC server. Use ``async with Simulator(cfg) as sim`` or start/stop."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.stats = SimStats()
        self._messages: dict[int, _Msg] = {}
        self._groups: dict[tuple[str, str], _Group] = {}
        self._delayed: list[tuple[float, int]] = []
        # Pushed and unconfirmed, in push order: deadlines grow with it, so the timeout
        # scan stops at the first message that is not due.
        self._in_flight: dict[int, _Msg] = {}
        self._rng = random.Random(self.config.seed)
        self._generator = OrderGenerator(self.config.seed)
        # Ids from the clock (µs × 1000), not the seed: every run, seeded alike or not,
        # publishes ids no earlier run used, so a bridge whose durable committed-ids store
        # remembers an earlier run never takes a new message for a redelivery. 19 digits
        # like TMC's own, within Int64 until the 2200s.
        self._next_id = 2_200_000_000_000_000_000 + time.time_ns() // 1000 * 1000
        self.id_base = self._next_id
        self._server: Server | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._settled = asyncio.Event()
        self._logins = 0
        self.port = 0
        #: Confirmed ids the ledger never held (pushed with push_raw, or a client bug).
        self.unknown_confirmed_ids: deque[int] = deque(maxlen=10_000)

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> int:
        cfg = self.config
        self._server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            process_request=self._http,
            compression=None,
            ping_interval=None,
            max_size=4 * 1024 * 1024,
        )
        sock = next(iter(self._server.sockets))
        self.port = int(sock.getsockname()[1])
        self._tasks = [asyncio.create_task(self._pump()), asyncio.create_task(self._timers())]
        log.info("tmc simulator listening", url=self.url)
        return self.port

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}/"

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- publishing and reporting -----------------------------------------------------

    def publish_events(
        self, events: list[Event], *, group: str = "default", app_key: str | None = None
    ) -> list[int]:
        """Queue events for a group; returns their message ids (increasing in order)."""
        key = (app_key or next(iter(self.config.apps)), group)
        grp = self._groups.setdefault(key, _Group())
        now_ms = int(time.time() * 1000)
        ids = []
        for event in events:
            msg_id = self._next_id
            self._next_id += 1
            self._messages[msg_id] = _Msg(msg_id, event, now_ms, key)
            grp.queue.append(msg_id)
            ids.append(msg_id)
        self.stats.published += len(events)
        self.stats.outstanding += len(events)
        self._settled.clear()
        self._wake.set()
        return ids

    def publish(self, count: int, *, group: str = "default") -> list[int]:
        """Queue ``count`` generated order events (see generator.py)."""
        return self.publish_events(self._generator.events(count), group=group)

    def ledger(self) -> list[dict[str, Any]]:
        """Every message: id, topic, key, state, how often it was pushed and the serial
        of the connection it was last pushed to (connections are numbered 1, 2, ... in
        login order; 0: never pushed)."""
        return [
            {
                "id": m.id,
                "topic": m.event.topic,
                "key": m.event.key,
                "state": m.state,
                "pushes": m.pushes,
                "conn": m.conn,
            }
            for m in self._messages.values()
        ]

    def summary(self, *, latency: bool = True) -> dict[str, Any]:
        self.stats.connections_online = sum(len(g.conns) for g in self._groups.values())
        return {**self.stats.summary(latency=latency), "id_base": self.id_base}

    async def wait_settled(self, timeout_s: float) -> bool:
        """True once every published message is confirmed (or expired)."""
        try:
            await asyncio.wait_for(self._settled.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    def push_raw(self, entries: bytes, *, group: str = "default") -> bool:
        """Push hand-made Custom entries (after the session's token and ``__kind`` 3) to
        one online connection of the group, outside the ledger: for hostile-input tests.
        Confirms of ids the ledger does not know are kept in ``unknown_confirmed_ids``."""
        conns = [c for (_, g), grp in self._groups.items() if g == group for c in grp.conns]
        if not conns:
            return False
        conn = self._rng.choice(conns)
        conn.outbox.put_nowait(conn.session.push(entries))
        return True

    def inject(self, fault: Fault, *, group: str = "default") -> bool:
        """Apply a fault to one online connection of the group; False if none is online."""
        conns = [c for (_, g), grp in self._groups.items() if g == group for c in grp.conns]
        if not conns:
            return False
        conn = self._rng.choice(conns)
        self.stats.faults_injected += 1
        log.warning("simulator fault injected", fault=fault)
        if fault == "drop_connection":
            conn.ws.transport.abort()
        elif fault == "duplicate_push":
            conn.duplicate_next += 1
        elif fault == "malformed_frame":
            conn.outbox.put_nowait(MALFORMED_FRAME)
        return True

    # -- HTTP control -----------------------------------------------------------------

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if not url.path.startswith("/_sim/"):
            return None  # a WebSocket upgrade for the TMC endpoint
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body: Any
        if url.path == "/_sim/stats":
            body = self.summary(latency=query.get("latency") == "1")
        elif url.path == "/_sim/ledger":
            body = self.ledger()
        elif url.path == "/_sim/publish":
            ids = self.publish(int(query.get("count", "1")), group=query.get("group", "default"))
            body = {"published": len(ids), "first_id": ids[0] if ids else None}
        elif url.path == "/_sim/fault":
            name = query.get("name", "")
            if name not in ("drop_connection", "duplicate_push", "malformed_frame"):
                return connection.respond(HTTPStatus.BAD_REQUEST, f"unknown fault {name!r}\n")
            body = {"applied": self.inject(name, group=query.get("group", "default"))}  # type: ignore[arg-type]
        else:
            return connection.respond(HTTPStatus.NOT_FOUND, "unknown simulator path\n")
        data = json.dumps(body).encode()
        headers = Headers(
            [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        )
        return Response(HTTPStatus.OK.value, "OK", headers, data)

    # -- one socket -------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        session = ServerSession(self.config.apps, strict=self.config.strict)
        conn: _Conn | None = None
        writer: asyncio.Task[None] | None = None
        try:
            async for data in ws:
                if not isinstance(data, bytes):
                    continue
                try:
                    event = session.receive(data)
                except (FrameError, ProtocolError) as exc:
                    self.stats.protocol_errors += 1
                    log.warning("simulator: bad client frame", error=str(exc))
                    continue
                if isinstance(event, ConnectRequest):
                    if not event.sign_ok:
                        self.stats.logins_failed += 1
                        await ws.send(
                            session.reject(
                                event.flag,
                                self.config.login_error_code,
                                self.config.login_error_phrase,
                            )
                        )
                        if self.config.close_on_login_error:
                            return
                        continue
                    await ws.send(session.accept(event, str(uuid.uuid4())))
                    self.stats.logins_ok += 1
                    self._logins += 1
                    conn = _Conn(
                        ws, session, (event.app_key, event.group_name), serial=self._logins
                    )
                    self._groups.setdefault(conn.group, _Group()).conns.append(conn)
                    writer = asyncio.create_task(self._writer(conn))
                    self._wake.set()
                elif conn is None:
                    continue
                elif isinstance(event, PullRequest):
                    self._wake.set()
                elif isinstance(event, Confirm):
                    self._on_confirm(conn, event.message_id)
                elif isinstance(event, Failed):
                    self._on_failed(event.message_id)
                elif isinstance(event, Publish):
                    self.publish_events(
                        [Event(event.topic, event.content, 0, "", 0, 0)],
                        group=conn.group[1],
                        app_key=conn.group[0],
                    )
        except ConnectionClosed:
            pass
        finally:
            if writer is not None:
                writer.cancel()
            if conn is not None:
                self._drop(conn)

    async def _writer(self, conn: _Conn) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = await conn.outbox.get()
                await conn.ws.send(frame)

    def _drop(self, conn: _Conn) -> None:
        grp = self._groups.get(conn.group)
        if grp is not None and conn in grp.conns:
            grp.conns.remove(conn)
        if self.config.redeliver_on_disconnect:
            mine = [m for m in self._in_flight.values() if m.owner is conn]
            for msg in sorted(mine, key=lambda m: m.id, reverse=True):
                self._requeue(msg)
        self._wake.set()

    # -- delivery state ---------------------------------------------------------------

    def _on_confirm(self, conn: _Conn, msg_id: int) -> None:
        msg = self._messages.get(msg_id)
        if msg is None:
            self.stats.unknown_confirms += 1
            self.unknown_confirmed_ids.append(msg_id)
            return
        if msg.state in ("confirmed", "expired"):
            self.stats.duplicate_confirms += 1
            return
        if msg.owner is not None and msg.state == "in_flight":
            msg.owner.in_flight -= 1
        self._in_flight.pop(msg_id, None)
        msg.state = "confirmed"
        msg.owner = None
        self.stats.confirmed += 1
        self.stats.outstanding -= 1
        self.stats.latencies_ms.append((time.monotonic() - msg.pushed_at) * 1000)
        self.stats.last_confirm_at = time.time()
        if self.stats.outstanding == 0:
            self._settled.set()
        self._wake.set()

    def _on_failed(self, msg_id: int) -> None:
        self.stats.failed_received += 1
        msg = self._messages.get(msg_id)
        if msg is None or msg.state != "in_flight":
            return
        if msg.owner is not None:
            msg.owner.in_flight -= 1
        self._in_flight.pop(msg_id, None)
        msg.owner = None
        msg.state = "delayed"
        self._delayed.append((time.monotonic() + self.config.failed_delay_s, msg_id))
        self._wake.set()

    def _requeue(self, msg: _Msg) -> None:
        """Back to the front of its group's queue (call in descending id order)."""
        if msg.owner is not None:
            msg.owner.in_flight -= 1
        self._in_flight.pop(msg.id, None)
        msg.owner = None
        msg.state = "queued"
        self.stats.redelivered += 1
        self._groups[msg.group].queue.appendleft(msg.id)
        self._wake.set()

    async def _timers(self) -> None:
        """Confirm timeouts, failed delays and TTL, checked several times a second."""
        cfg = self.config
        tick = max(0.01, min(cfg.confirm_timeout_s, cfg.failed_delay_s, 1.0) / 4)
        next_ttl_check = 0.0
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            expired = []
            for msg in self._in_flight.values():
                if msg.deadline > now:
                    break
                expired.append(msg)
            for msg in sorted(expired, key=lambda m: m.id, reverse=True):
                self._requeue(msg)
            due = sorted((i for t, i in self._delayed if t <= now), reverse=True)
            if due:
                self._delayed = [(t, i) for t, i in self._delayed if t > now]
                for msg_id in due:
                    msg = self._messages[msg_id]
                    if msg.state == "delayed":
                        msg.state = "in_flight"  # so _requeue accounts it once
                        self._requeue(msg)
            if now >= next_ttl_check:
                self._expire()
                next_ttl_check = now + 10.0

    def _expire(self) -> None:
        cutoff_ms = int((time.time() - self.config.ttl_s) * 1000)
        for msg in self._messages.values():
            if msg.state in ("queued", "delayed") and msg.published_ms < cutoff_ms:
                msg.state = "expired"
                self.stats.expired += 1
                self.stats.outstanding -= 1

    async def _pump(self) -> None:
        """Hand queued messages to online connections with room in their window."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            for grp in self._groups.values():
                self._deliver(grp)
            await asyncio.sleep(0)

    def _deliver(self, grp: _Group) -> None:
        cfg = self.config
        while grp.queue and grp.conns:
            room = [c for c in grp.conns if c.in_flight < cfg.window]
            if not room:
                return
            if cfg.distribution == "random":
                conn = self._rng.choice(room)
            else:
                grp.rr = (grp.rr + 1) % len(room)
                conn = room[grp.rr]
            msg = self._messages[grp.queue.popleft()]
            if msg.state != "queued":
                continue
            self._push(conn, msg)

    def _push(self, conn: _Conn, msg: _Msg) -> None:
        now = time.monotonic()
        if not msg.body:
            ev = msg.event
            msg.body = push_static(
                msg.id,
                ev.topic,
                ev.content,
                publish_time_ms=msg.published_ms,
                publisher=TAOBAO_PUBLISHER,
                user_id=ev.user_id,
                nick=ev.nick,
                data_id=ev.data_id,
            )
        body = msg.body + push_extras(int(time.time() * 1000), msg.pushes or None)
        frame = conn.session.push(body)
        conn.outbox.put_nowait(frame)
        if conn.duplicate_next:
            conn.duplicate_next -= 1
            conn.outbox.put_nowait(frame)
            self.stats.pushes += 1
        msg.pushes += 1
        self._in_flight[msg.id] = msg
        msg.state = "in_flight"
        msg.owner = conn
        msg.conn = conn.serial
        msg.pushed_at = now
        msg.deadline = now + self.config.confirm_timeout_s
        conn.in_flight += 1
        self.stats.pushes += 1
        if not self.stats.first_push_at:
            self.stats.first_push_at = time.time()
