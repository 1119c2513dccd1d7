"""A TMC server simulator (docs/protocol.md §8, §9, §11) for tests, the demo and users.

What it does, as the real server is documented to:

* checks the CONNECT ``sign`` against the configured app key/secret and answers a
  CONNECTACK that echoes the Flag and carries a UUID token, or a failed CONNECTACK with
  a StatusCode/StatusPhrase and no token (then keeps or closes the socket, configurable);
  optionally refuses logins that come faster than a minimum reconnect interval or beyond
  a maximum number of connections per group; optionally requires the CONNECT ``token``
  to be one its ``taobao.tmc.auth.get`` handed out for that app and group
  (``require_auth_token``: single use, expiring), or refuses every login
  (``refuse_logins``, with the configured code and phrase);
* puts the session token on every push and requires it on every client SEND (strict), or
  accepts the variants seen in the wild (lenient);
* keeps one queue per (app_key, group); each message goes to exactly one online
  connection of the group (round-robin or random), with a per-connection window of
  unconfirmed pushes; pull requests trigger delivery rounds, optionally paced like
  top-push (a bounded number of pushes per round, rounds a fixed interval apart);
* tracks confirms (from any connection of the group; unknown or repeated ids are counted
  and ignored), redelivers after ``confirm_timeout_s`` without confirm (or at once when a
  socket closes, configurable) and after ``failed_delay_s`` following a Failed (kind 20);
  Confirm after Failed wins;
* drops messages older than ``ttl_s``, queued, delayed or in flight;
* liveness like the real server: answers **no** WebSocket pings unless told to (a pong
  kills the official Java client), optional server pings, optional idle close (1011
  ``reach max idle time``);
* fault injection (:data:`FAULTS`), on demand or on a schedule;
* keeps memory bounded: a settled (confirmed or expired) message keeps only a compact
  outcome (state, pushes, connection, topic, key) in parallel arrays;
* reports what it published, pushed, what was confirmed, redelivered and is still
  outstanding, over HTTP on the same port (``GET /_sim/stats``) and in-process.

HTTP control (same port as the WebSocket, any other path is the TMC endpoint):
``GET /_sim/stats``, ``GET /_sim/ledger``, ``GET /_sim/publish?count=N``,
``GET /_sim/fault?name=NAME[&group=G][&param=value...]`` (see :data:`FAULTS`).

TLS (``tls_cert``/``tls_key`` or ``ssl_context``): the same port serves ``wss://`` and
the gateway and control paths on ``https://``.

Cost per message (it is the message source of ``make bench``, on the same cores as the
bridge under test; ``python -m devtools.sim_cost`` measures it): a push's
attempt-independent entries are encoded once (:mod:`~bridge.sources.tmc.sim_frames`);
the pushes of a delivery round are queued as bytes and written in one transport write;
a logged-in client's frames are acted on as websockets parses them, and its canonical
confirms are read without a full decode.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import json
import random
import ssl
import time
import uuid
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from bridge.errors import ConfigError
from bridge.sources.tmc import codec, sim_frames
from bridge.sources.tmc.generator import TAOBAO_PUBLISHER, Event, OrderGenerator
from bridge.sources.tmc.server import (
    LOGIN_ERRORS,
    Confirm,
    ConnectRequest,
    Decision,
    Deviation,
    Failed,
    Outcome,
    Publish,
    PullRequest,
    ServerEvent,
    ServerSession,
    push_extras,
)
from bridge.sources.tmc.session import Kind
from bridge.sources.tmc.top_api import GATEWAY_PATH, TopApi, TopMessage

log = structlog.get_logger("bridge.simulator")

#: Fault name -> what it does (parameters in brackets, over HTTP as query parameters).
FAULTS: dict[str, str] = {
    "drop_connection": "abort one connection's TCP socket, no Close frame",
    "duplicate_push": "push the next message twice",
    "malformed_frame": "send a frame whose Custom value claims 1 GiB",
    "http_401": "answer the next WebSocket upgrade with HTTP 401 and a reason body",
    "wrong_ack_flag": "echo a wrong Flag in the next successful CONNECTACK",
    "wrong_token": "put a wrong token on the next push",
    "gzip_content": "send the next push's content as gzip-compressed ByteArray",
    "fragmented_frame": "send the next push in several WebSocket fragments [parts=3]",
    "out_of_order": "swap the next two pushes of one connection",
    "close_code": "close one connection with a Close frame [code=4000, reason=...]",
    "idle_close": "close one connection with 1011 'reach max idle time'",
    "min_reconnect_interval": "refuse logins faster than [s=10] after the last one "
    "of their (app_key, group); s=0 turns it off",
    "max_connections": "refuse logins beyond [n=1] connections per group; n=0: no limit",
}
Fault = Literal[
    "drop_connection",
    "duplicate_push",
    "malformed_frame",
    "http_401",
    "wrong_ack_flag",
    "wrong_token",
    "gzip_content",
    "fragmented_frame",
    "out_of_order",
    "close_code",
    "idle_close",
    "min_reconnect_interval",
    "max_connections",
]
#: A frame whose Custom value claims 1 GiB: every conforming decoder must refuse it.
MALFORMED_FRAME = bytes.fromhex("0202" + "0100" + "02000000" + "6964" + "01" + "00000040")
IDLE_CLOSE_CODE, IDLE_CLOSE_REASON = 1011, "reach max idle time"
_KIND_DATA = codec.encode_custom("__kind", codec.byte(Kind.DATA))
_END = codec.END_OF_HEADERS
_MAX_SIZE = 4 * 1024 * 1024
#: The simulator's own login refusals (reasons and StatusPhrases), beyond the session's.
_TOO_MANY_CONNECTIONS, _RECONNECT_TOO_FREQUENTLY = "too_many_connections", "reconnect_too_often"
_AUTH_TOKEN_MISSING, _AUTH_TOKEN_INVALID = "auth_token_missing", "auth_token_invalid"
#: refuse_logins: every login refused with login_error_code / login_error_phrase.
_LOGINS_REFUSED = "logins_refused"
#: Most unused auth tokens remembered (the oldest is dropped first).
_AUTH_TOKENS_MAX = 10_000
_REFUSAL_PHRASES = {
    _AUTH_TOKEN_MISSING: "auth token required: get one with taobao.tmc.auth.get for this "
    "app and group",
    _AUTH_TOKEN_INVALID: "invalid auth token: unknown, expired, used already, or issued "
    "for another app or group",
    _TOO_MANY_CONNECTIONS: "too many connections in this group",
    _RECONNECT_TOO_FREQUENTLY: "reconnect too frequently",
}

#: Ledger states; the compact outcome arrays store their index.
STATES = ("queued", "in_flight", "delayed", "confirmed", "expired")
_CONFIRMED, _EXPIRED = 3, 4


@dataclass(frozen=True)
class FaultSchedule:
    """Inject ``name`` every ``every_s`` seconds (CLI ``--fault NAME:every=30s,k=v``)."""

    name: Fault
    every_s: float
    params: dict[str, str] = field(default_factory=dict)
    #: The TMC group whose connections the fault hits.
    group: str = "default"

    @classmethod
    def parse(cls, text: str) -> FaultSchedule:
        name, _, rest = text.partition(":")
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r} (known: {', '.join(FAULTS)})")
        params: dict[str, str] = {}
        for item in filter(None, rest.split(",")):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"fault parameter {item!r} is not key=value")
            params[key.strip()] = value.strip()
        every = params.pop("every", "")
        if not every:
            raise ValueError(f"fault {text!r} needs every=<seconds>, e.g. {name}:every=30s")
        try:
            every_s = float(every.removesuffix("s"))
        except ValueError:
            raise ValueError(f"fault {text!r}: every must be a number of seconds") from None
        if every_s <= 0:
            raise ValueError(f"fault {text!r}: every must be > 0")
        group = params.pop("group", "default")
        # Checked now, not at the first tick: a typo must stop the start, not log an
        # error every interval.
        unknown = sorted(params.keys() - _FAULT_PARAMS.get(name, {}).keys())
        if unknown:
            raise ValueError(f"fault {name}: unknown parameter(s) {', '.join(unknown)}")
        for key, value in params.items():
            kind = _FAULT_PARAMS[name][key]
            try:
                kind(value)
            except ValueError:
                what = "an integer" if kind is int else "a number"
                raise ValueError(f"fault {name}: {key}={value!r} is not {what}") from None
        return cls(name, every_s, params, group)  # type: ignore[arg-type]


#: The parameters each fault takes, and their types (the rest take none).
_FAULT_PARAMS: dict[str, dict[str, type]] = {
    "fragmented_frame": {"parts": int},
    "close_code": {"code": int, "reason": str},
    "min_reconnect_interval": {"s": float},
    "max_connections": {"n": int},
}


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
    #: Requeue a closed connection's unconfirmed messages at once instead of at the
    #: confirm timeout (docs/protocol.md §9.4 only says "redelivered later", so later is
    #: the default).
    redeliver_on_disconnect: bool = False
    login_error_code: int = 1
    login_error_phrase: str = "invalid sign"
    close_on_login_error: bool = False
    #: Require the token on every SEND and Int64 ids (lenient: the variants in the wild).
    strict: bool = True
    seed: int = 1
    #: Answer client pings (the real server does not: a pong kills the Java client).
    answer_pings: bool = False
    #: Send a WebSocket ping every this many seconds (None: never); no pong is required.
    ping_interval_s: float | None = None
    #: Close 1011 "reach max idle time" after this long without traffic (None: never).
    idle_close_s: float | None = None
    #: Refuse a login of an (app_key, group) sooner than this after its previous one.
    min_reconnect_interval_s: float = 0.0
    #: Refuse logins beyond this many online connections per group (0: no limit).
    max_connections: int = 0
    #: Pace pushes like top-push: at most ``push_round_max`` per connection and round,
    #: rounds ``push_round_interval_s`` apart, a round ends when less than half a
    #: ``push_batch`` of window is left. Off: push the whole window at once.
    pacing: bool = False
    push_batch: int = 32
    push_round_max: int = 320
    push_round_interval_s: float = 1.0
    #: Faults injected on a schedule.
    faults: list[FaultSchedule] = field(default_factory=list)
    #: Refuse a CONNECT that does not carry a token handed out by ``taobao.tmc.auth.get``
    #: (GET /router/rest) for its app and group; each token is good for one login within
    #: ``auth_token_ttl_s`` of being issued.
    require_auth_token: bool = False
    auth_token_ttl_s: float = 300.0
    #: Refuse every login (valid sign or not) with login_error_code / login_error_phrase,
    #: e.g. as the platform refuses an app that has not enabled the message service.
    refuse_logins: bool = False
    #: TLS: serve ``wss://`` (and the gateway on ``https://``) with this PEM certificate
    #: (chain) and key; or give a ready server ``ssl_context`` instead of both.
    tls_cert: str | None = None
    tls_key: str | None = None
    ssl_context: ssl.SSLContext | None = None


@dataclass(slots=True)
class _Msg:
    """A message that is not settled yet (queued, in flight or delayed)."""

    id: int
    event: Event
    published_ms: int
    group: tuple[str, str]
    state: str = "queued"  # queued | in_flight | delayed
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
    #: What the writer sends next, in order: a TMC frame, or the fragments of one (a
    #: list). A plain list and an event rather than an asyncio.Queue: the writer takes
    #: everything queued at once and writes it in one go.
    outbox: list[bytes | list[bytes]] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    duplicate_next: int = 0
    wrong_token_next: int = 0
    gzip_next: int = 0
    fragment_next: int = 0
    fragment_parts: int = 3
    swap_next: int = 0
    #: A push held back by out_of_order, sent after the next one (or after a short wait).
    held: bytes | None = None
    held_at: float = 0.0
    #: Login order within this simulator (1, 2, ...): the ledger's ``conn``.
    serial: int = 0
    #: Pacing: pushes left in the current round and when the next round may start.
    round_left: int = 0
    next_round_at: float = 0.0

    def put(self, item: bytes | list[bytes]) -> None:
        self.outbox.append(item)
        self.ready.set()

    def faults_pending(self) -> bool:
        """A push fault is armed, or a push is held back: pushes take the general path."""
        return bool(
            self.duplicate_next
            or self.wrong_token_next
            or self.gzip_next
            or self.fragment_next
            or self.swap_next
            or self.held is not None
        )


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
    #: Of ``redelivered``: requeued because their socket closed (redeliver_on_disconnect).
    redelivered_on_disconnect: int = 0
    #: Pushes whose confirm timeout expired (each then redelivered), and of those, the
    #: ones whose connection was still online (the client held them past the timeout).
    confirm_timeouts: int = 0
    confirm_timeouts_online: int = 0
    failed_received: int = 0
    duplicate_confirms: int = 0
    unknown_confirms: int = 0
    expired: int = 0
    #: Of ``expired``: expired while pushed and unconfirmed.
    expired_in_flight: int = 0
    logins_ok: int = 0
    logins_failed: int = 0
    logins_refused: int = 0
    #: Client frames refused for a protocol error (text frames included).
    protocol_errors: int = 0
    #: Per reason key (``id_not_int64``, ``invalid_sign`` is not one: see logins_failed).
    protocol_errors_by_reason: dict[str, int] = field(default_factory=dict)
    #: Departures lenient mode accepted, per reason: what a client would fail in strict.
    tolerated_by_reason: dict[str, int] = field(default_factory=dict)
    faults_injected: int = 0
    #: Per fault name, how often it was applied.
    faults: dict[str, int] = field(default_factory=dict)
    #: Tokens handed out by taobao.tmc.auth.get; CONNECTs let in or refused for theirs
    #: (counted only with require_auth_token).
    auth_tokens_issued: int = 0
    auth_tokens_accepted: int = 0
    auth_tokens_refused: int = 0
    pings_received: int = 0
    pongs_sent: int = 0
    idle_closes: int = 0
    connections_online: int = 0
    outstanding: int = 0
    #: Wall-clock seconds of the first push and the latest confirm (throughput window).
    first_push_at: float = 0.0
    last_confirm_at: float = 0.0
    #: ``taobao.tmc.messages.consume`` calls through the HTTP gateway, per group.
    top_consume_calls: dict[str, int] = field(default_factory=dict)
    #: Push-to-confirm latencies (float32: 4 bytes a confirm).
    latencies_ms: array[float] = field(default_factory=lambda: array("f"))

    def summary(self, *, latency: bool = False) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "latencies_ms"}
        out["faults"] = dict(self.faults)
        out["protocol_errors_by_reason"] = dict(self.protocol_errors_by_reason)
        out["tolerated_by_reason"] = dict(self.tolerated_by_reason)
        out["top_consume_calls"] = dict(self.top_consume_calls)
        # Sorting every sample is costly mid-run; percentiles only when asked for.
        lat = sorted(self.latencies_ms) if latency else []
        if lat:
            out["latency_p50_ms"] = round(lat[len(lat) // 2], 2)
            out["latency_p99_ms"] = round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2)
        return out


class _TmcServerProtocol(ServerProtocol):
    """websockets' sans-I/O server protocol, except that a ping is answered only when
    ``answer_pings`` (RFC 6455 wants a pong; the TMC server sends none, and the official
    Java client dies on one). Every received frame stamps ``last_rx`` (idle close)."""

    def __init__(
        self, *, answer_pings: bool, on_ping: Callable[[int, bool], None], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.answer_pings = answer_pings
        self.on_ping = on_ping
        self.last_rx = time.monotonic()

    def recv_frame(self, frame: Frame) -> None:
        self.last_rx = time.monotonic()
        if frame.opcode is Opcode.PING:
            self.on_ping(len(frame.data), self.answer_pings)
            if not self.answer_pings:
                self.events.append(frame)  # what the base class does, minus the pong
                return
        super().recv_frame(frame)


class _SimConnection(ServerConnection):
    """A server connection that hands each Binary message of a logged-in client to
    ``on_binary`` as soon as it is parsed, instead of queueing it for ``recv()``: one
    callback per confirm rather than a queue entry and a task wake-up. Only while nothing
    is queued, so that the order of the client's frames is kept (a fragmented or text
    message, or frames that came during the login, go through ``recv()`` first)."""

    on_binary: Callable[[bytes], None] | None = None

    def process_event(self, event: Any) -> None:
        take = self.on_binary
        if (
            take is not None
            and isinstance(event, Frame)
            and event.opcode is Opcode.BINARY
            and event.fin
            and not len(self.recv_messages.frames)
        ):
            take(bytes(event.data))
            return
        super().process_event(event)


class Simulator:
    """One simulated TMC server. Use ``async with Simulator(cfg) as sim`` or start/stop."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.stats = SimStats()
        # Unsettled messages only; settled ones live on in the compact arrays below.
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
        # Compact outcomes, indexed by id - id_base: what the ledger reports of a message
        # once it is settled (the topic and key from publication on).
        self._out_state = bytearray()
        self._out_pushes = array("H")
        self._out_conn = array("I")
        self._out_topic = array("H")
        self._out_key = array("q")
        self._big_keys: dict[int, int] = {}
        self._topics: list[str] = []
        self._topic_index: dict[str, int] = {}
        self._server: Server | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._settled = asyncio.Event()
        self._logins = 0
        self._last_login: dict[tuple[str, str], float] = {}
        #: Tokens of taobao.tmc.auth.get not used yet: token -> ((app_key, group), expiry).
        self._auth_tokens: OrderedDict[str, tuple[tuple[str, str], float]] = OrderedDict()
        self._pending_401 = 0
        self._pending_wrong_flag = 0
        self._sockets: set[ServerConnection] = set()
        self._last_tx: dict[ServerConnection, float] = {}
        self.port = 0
        #: Confirmed ids the ledger never held (pushed with push_raw, or a client bug).
        self.unknown_confirmed_ids: deque[int] = deque(maxlen=10_000)
        #: The TOP HTTP gateway (``/router/rest``, GET only: the upgrade-oriented HTTP
        #: parser of websockets reads no request body) on these same queues.
        self.top_api = TopApi(self.config.apps, self)

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> int:
        cfg = self.config
        sim = self

        class _Connection(_SimConnection):
            """Swaps in the protocol that keeps quiet on pings."""

            def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
                quiet = _TmcServerProtocol(
                    answer_pings=cfg.answer_pings, on_ping=sim._on_ping, max_size=_MAX_SIZE
                )
                super().__init__(quiet, *args, **kwargs)

        self._server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            process_request=self._http,
            compression=None,
            ping_interval=cfg.ping_interval_s,
            ping_timeout=None,  # the server pings but never requires a pong
            max_size=_MAX_SIZE,
            create_connection=_Connection,
            ssl=self._server_ssl(),
        )
        sock = next(iter(self._server.sockets))
        self.port = int(sock.getsockname()[1])
        self._tasks = [asyncio.create_task(self._pump()), asyncio.create_task(self._timers())]
        self._tasks += [asyncio.create_task(self._scheduled(f)) for f in cfg.faults]
        log.info(
            "tmc simulator listening",
            url=self.url,
            strict=cfg.strict,
            answer_pings=cfg.answer_pings,
            pacing=cfg.pacing,
            faults=[f"{f.name}/{f.every_s:g}s" for f in cfg.faults],
        )
        return self.port

    def _server_ssl(self) -> ssl.SSLContext | None:
        cfg = self.config
        if cfg.ssl_context is not None:
            return cfg.ssl_context
        if cfg.tls_cert is None and cfg.tls_key is None:
            return None
        if cfg.tls_cert is None:
            raise ConfigError("simulator: tls_key (--tls-key) needs tls_cert (--tls-cert)")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
            raise ConfigError(
                f"simulator: TLS certificate {cfg.tls_cert} / key {cfg.tls_key}: {reason}"
            ) from None
        return ctx

    @property
    def tls(self) -> bool:
        """True when serving wss:// (and https:// for the gateway)."""
        cfg = self.config
        return cfg.ssl_context is not None or cfg.tls_cert is not None

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.config.host}:{self.port}/"

    @property
    def gateway_url(self) -> str:
        """The TOP gateway on the same port (``https://`` when serving TLS)."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.config.host}:{self.port}{GATEWAY_PATH}"

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
        first = self._next_id
        self._next_id = first + len(events)
        ids = range(first, self._next_id)
        messages = self._messages
        for msg_id, event in zip(ids, events, strict=True):
            messages[msg_id] = _Msg(msg_id, event, now_ms, key)
        self._record(events)
        grp.queue.extend(ids)
        self.stats.published += len(events)
        self.stats.outstanding += len(events)
        if events:
            self._settled.clear()
        self._wake.set()
        return list(ids)

    def _record(self, events: list[Event]) -> None:
        """The compact outcome entries of newly published messages (a batch at a time:
        one array extension per field rather than one append per message)."""
        n = len(events)
        self._out_state.extend(bytes(n))
        self._out_pushes.frombytes(bytes(self._out_pushes.itemsize * n))
        self._out_conn.frombytes(bytes(self._out_conn.itemsize * n))
        index = self._topic_index
        topics = []
        for event in events:
            topic = index.get(event.topic)
            if topic is None:
                topic = index[event.topic] = len(self._topics)
                self._topics.append(event.topic)
            topics.append(topic)
        self._out_topic.extend(topics)
        try:
            self._out_key.extend(array("q", [event.key for event in events]))
        except OverflowError:  # a key beyond Int64: kept aside, one at a time
            for event in events:
                try:
                    self._out_key.append(event.key)
                except OverflowError:
                    self._big_keys[len(self._out_key)] = event.key
                    self._out_key.append(0)

    def publish(self, count: int, *, group: str = "default") -> list[int]:
        """Queue ``count`` generated order events (see generator.py)."""
        return self.publish_events(self._generator.events(count), group=group)

    def ledger(self) -> list[dict[str, Any]]:
        """Every message: id, topic, key, state, how often it was pushed and the serial
        of the connection it was last pushed to (connections are numbered 1, 2, ... in
        login order; 0: never pushed)."""
        out = []
        for i in range(len(self._out_state)):
            msg_id = self.id_base + i
            live = self._messages.get(msg_id)
            out.append(
                {
                    "id": msg_id,
                    "topic": self._topics[self._out_topic[i]],
                    "key": self._big_keys.get(i, self._out_key[i]),
                    "state": live.state if live else STATES[self._out_state[i]],
                    "pushes": live.pushes if live else self._out_pushes[i],
                    "conn": live.conn if live else self._out_conn[i],
                }
            )
        return out

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
        conns = self._online(group)
        if not conns:
            return False
        conn = self._rng.choice(conns)
        conn.put(conn.session.push(entries))
        return True

    def _online(self, group: str) -> list[_Conn]:
        return [c for (_, g), grp in self._groups.items() if g == group for c in grp.conns]

    # -- faults -----------------------------------------------------------------------

    def inject(
        self, fault: Fault, *, group: str = "default", params: dict[str, str] | None = None
    ) -> bool:
        """Apply a fault (:data:`FAULTS`); False if it needs an online connection of the
        group and there is none. Raises ValueError for an unknown fault or parameter."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        p = params or {}
        conn: _Conn | None = None
        if fault == "http_401":
            self._pending_401 += 1
        elif fault == "wrong_ack_flag":
            self._pending_wrong_flag += 1
        elif fault == "min_reconnect_interval":
            self.config.min_reconnect_interval_s = float(p.get("s", "10"))
        elif fault == "max_connections":
            self.config.max_connections = int(p.get("n", "1"))
        else:
            conns = self._online(group)
            if not conns:
                return False
            conn = self._rng.choice(conns)
            self._apply(fault, conn, p)
        self.stats.faults_injected += 1
        self.stats.faults[fault] = self.stats.faults.get(fault, 0) + 1
        log.warning(
            "simulator fault injected",
            fault=fault,
            group=group,
            conn=conn.serial if conn else None,
            **p,
        )
        return True

    def _apply(self, fault: Fault, conn: _Conn, p: dict[str, str]) -> None:
        if fault == "drop_connection":
            conn.ws.transport.abort()
        elif fault == "duplicate_push":
            conn.duplicate_next += 1
        elif fault == "malformed_frame":
            conn.put(MALFORMED_FRAME)
        elif fault == "wrong_token":
            conn.wrong_token_next += 1
        elif fault == "gzip_content":
            conn.gzip_next += 1
        elif fault == "fragmented_frame":
            conn.fragment_next += 1
            conn.fragment_parts = max(2, int(p.get("parts", "3")))
        elif fault == "out_of_order":
            conn.swap_next += 1
        elif fault == "close_code":
            code = int(p.get("code", "4000"))
            self._close(conn.ws, code, p.get("reason", "simulator close"))
        elif fault == "idle_close":
            self._close(conn.ws, IDLE_CLOSE_CODE, IDLE_CLOSE_REASON)

    def _close(self, ws: ServerConnection, code: int, reason: str) -> None:
        task = asyncio.create_task(ws.close(code, reason))
        self._tasks.append(task)  # keeps a reference; cancelled at stop
        task.add_done_callback(self._tasks.remove)

    async def _scheduled(self, schedule: FaultSchedule) -> None:
        while True:
            await asyncio.sleep(schedule.every_s)
            try:
                hit = self.inject(schedule.name, group=schedule.group, params=schedule.params)
            except ValueError as exc:
                log.error("simulator: scheduled fault failed", fault=schedule.name, error=str(exc))
                continue
            if not hit:
                log.info(
                    "simulator: scheduled fault found no connection",
                    fault=schedule.name,
                    group=schedule.group,
                )

    # -- HTTP control -----------------------------------------------------------------

    def _http(  # noqa: PLR0911 - one answer per control path
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        from urllib.parse import parse_qs, urlsplit

        url = urlsplit(request.path)
        if url.path == GATEWAY_PATH:
            status, top_headers, top_body = self.top_api.handle(
                "GET", request.path, url.query, b"", None
            )
            # websockets ends the connection after any answer but a 101: say so, or a
            # keep-alive client (httpx) sends its next call on a closing socket and gets
            # "Server disconnected" (then waits out its error back-off).
            headers = Headers(top_headers.items())
            headers["Connection"] = "close"
            return Response(status, HTTPStatus(status).phrase, headers, top_body)
        if not url.path.startswith("/_sim/"):
            if self._pending_401:
                self._pending_401 -= 1
                log.info("simulator: upgrade refused with 401 (fault)", path=url.path)
                return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid app key or sign\n")
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
            name = query.pop("name", "")
            group = query.pop("group", "default")
            if name not in FAULTS:
                return connection.respond(HTTPStatus.BAD_REQUEST, f"unknown fault {name!r}\n")
            try:
                body = {"applied": self.inject(name, group=group, params=query)}  # type: ignore[arg-type]
            except ValueError as exc:
                return connection.respond(HTTPStatus.BAD_REQUEST, f"{exc}\n")
        else:
            return connection.respond(HTTPStatus.NOT_FOUND, "unknown simulator path\n")
        data = json.dumps(body).encode()
        headers = Headers(
            [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        )
        return Response(HTTPStatus.OK.value, "OK", headers, data)

    # -- one socket -------------------------------------------------------------------

    def _on_ping(self, size: int, answered: bool) -> None:
        self.stats.pings_received += 1
        if answered:
            self.stats.pongs_sent += 1
        log.debug("simulator: client ping", size=size, answered=answered)

    def _new_session(self) -> ServerSession:
        cfg = self.config
        # The configured code applies to every failed CONNECTACK; the configured phrase
        # replaces the session's "invalid sign" (the phrase the Java client reports).
        login_errors = {
            reason: (cfg.login_error_code, phrase) for reason, (_, phrase) in LOGIN_ERRORS.items()
        }
        login_errors["invalid_sign"] = (cfg.login_error_code, cfg.login_error_phrase)
        for reason, phrase in _REFUSAL_PHRASES.items():
            login_errors[reason] = (cfg.login_error_code, phrase)
        login_errors[_LOGINS_REFUSED] = (cfg.login_error_code, cfg.login_error_phrase)
        return ServerSession(
            cfg.apps,
            strict=cfg.strict,
            close_on_login_error=cfg.close_on_login_error,
            login_errors=login_errors,
            admit=self._refusal,
        )

    async def _handle(self, ws: ServerConnection) -> None:
        session = self._new_session()
        conn: _Conn | None = None
        writer: asyncio.Task[None] | None = None
        peer = ws.remote_address
        self._sockets.add(ws)
        self._last_tx[ws] = time.monotonic()
        try:
            async for data in ws:
                if not isinstance(data, bytes):
                    self._count_protocol_error(("text_frame",))
                    log.info("simulator: text frame ignored", conn=conn and conn.serial)
                    continue
                if conn is not None:
                    # Logged in: what did not take the direct way (_SimConnection).
                    self._on_frame(conn, data)
                    continue
                d = session.handle(data)
                self._count(d)
                reply = d.reply
                if d.outcome is Outcome.LOGIN and isinstance(d.event, ConnectRequest):
                    if self._pending_wrong_flag and reply is not None:
                        self._pending_wrong_flag -= 1
                        ack = codec.decode(reply)
                        ack.flag += 1
                        reply = codec.encode(ack)
                    conn = self._login(ws, session, d.event, peer)
                if reply is not None:
                    await ws.send(reply)
                    self._last_tx[ws] = time.monotonic()
                if d.outcome is Outcome.LOGIN and conn is not None and writer is None:
                    writer = asyncio.create_task(self._writer(conn))
                    self._start_round(conn)
                    if isinstance(ws, _SimConnection):
                        ws.on_binary = functools.partial(self._take_frame, conn)
                elif d.outcome is Outcome.LOGIN_FAILED:
                    self.stats.logins_failed += 1
                    log.warning("simulator: login refused", peer=peer, **d.log_fields())
                elif d.outcome is Outcome.REFUSED:
                    log.info("simulator: frame refused", conn=None, peer=peer, **d.log_fields())
                if d.close:
                    return
        except ConnectionClosed:
            pass
        finally:
            if isinstance(ws, _SimConnection):
                ws.on_binary = None
            self._sockets.discard(ws)
            self._last_tx.pop(ws, None)
            if writer is not None:
                writer.cancel()
            if conn is not None:
                self._drop(conn)
            proto = ws.protocol
            log.info(
                "simulator: connection closed",
                conn=conn.serial if conn else None,
                app_key=session.app_key,
                group=session.group_name,
                code=ws.close_code,
                reason=ws.close_reason,
                closed_by="client"
                if proto.close_rcvd_then_sent
                else "server"
                if proto.close_sent is not None
                else "tcp",
            )

    def _count(self, d: Decision) -> None:
        if d.protocol_errors:
            self._count_protocol_error(tuple(dev.reason for dev in d.protocol_errors))
        by_reason = self.stats.tolerated_by_reason
        for dev in d.tolerated:
            by_reason[dev.reason] = by_reason.get(dev.reason, 0) + 1

    def _count_protocol_error(self, reasons: tuple[str, ...]) -> None:
        """One refused frame: ``protocol_errors`` counts frames, the by-reason map each
        distinct reason in it."""
        self.stats.protocol_errors += 1
        by_reason = self.stats.protocol_errors_by_reason
        for reason in dict.fromkeys(reasons):
            by_reason[reason] = by_reason.get(reason, 0) + 1

    def _login(
        self, ws: ServerConnection, session: ServerSession, event: ConnectRequest, peer: Any
    ) -> _Conn:
        self.stats.logins_ok += 1
        self._logins += 1
        conn = _Conn(ws, session, (event.app_key, event.group_name), serial=self._logins)
        self._last_login[conn.group] = time.monotonic()
        self._groups.setdefault(conn.group, _Group()).conns.append(conn)
        log.info(
            "simulator: login",
            app_key=event.app_key,
            group=event.group_name,
            conn=conn.serial,
            sdk=event.sdk,
            peer=peer,
        )
        return conn

    def _take_frame(self, conn: _Conn, data: bytes) -> None:
        """:meth:`_on_frame` called from the protocol's data callback, where an exception
        would end the transport without a word: log it and close 1011, as websockets does
        when a connection handler fails."""
        try:
            self._on_frame(conn, data)
        except Exception:
            log.exception("simulator: frame handling failed", conn=conn.serial)
            self._close(conn.ws, 1011, "")

    def _on_frame(self, conn: _Conn, data: bytes) -> None:
        """One binary message of a logged-in client. Never awaits: replies go out with
        the pushes (the writer), so frames are acted on in the order they came."""
        session = conn.session
        read_confirm = session.confirm_reader
        msg_id = read_confirm(data) if read_confirm is not None else None
        if msg_id is not None:
            # The canonical confirm, as handle() would decide it (nothing to count).
            self._on_request(conn, Confirm(msg_id))
            return
        d = session.handle(data)
        self._count(d)
        if d.reply is not None:
            conn.put(d.reply)
        if d.outcome is Outcome.REFUSED:
            log.info(
                "simulator: frame refused",
                conn=conn.serial,
                peer=conn.ws.remote_address,
                **d.log_fields(),
            )
        elif d.event is not None:
            if d.tolerated:
                log.debug("simulator: tolerated", conn=conn.serial, **d.log_fields())
            self._on_request(conn, d.event)
        if d.close:
            self._close(conn.ws, 1000, "")

    def _on_request(self, conn: _Conn, event: ServerEvent) -> None:
        if isinstance(event, Confirm):  # first: one per message
            self._on_confirm(conn, event.message_id)
        elif isinstance(event, PullRequest):
            log.debug("simulator: pull", conn=conn.serial)
            self._start_round(conn)
        elif isinstance(event, Failed):
            self._on_failed(event.message_id, event.reason)
        elif isinstance(event, Publish):
            # §6.5: queued for the publisher's own (app_key, group); the session already
            # built the SENDACK of a flagged publish.
            self.publish_events(
                [Event(event.topic, event.content, 0, "", 0, 0)],
                group=event.group_name or conn.group[1],
                app_key=event.app_key or conn.group[0],
            )

    def _refusal(self, event: ConnectRequest) -> Deviation | None:
        """The simulator's own refusal of a CONNECT the session found valid (its sign
        checked): every login refused, connection limit, reconnect rate or auth token
        (checked last: a token is used up only by a login that goes through); None to
        accept it."""
        cfg = self.config
        group = (event.app_key, event.group_name)
        reason: str | None = _LOGINS_REFUSED if cfg.refuse_logins else None
        if reason is None and cfg.max_connections:
            grp = self._groups.get(group)
            if grp is not None and len(grp.conns) >= cfg.max_connections:
                reason = _TOO_MANY_CONNECTIONS
        last = self._last_login.get(group)
        interval = cfg.min_reconnect_interval_s
        if reason is None and interval and last is not None and time.monotonic() - last < interval:
            reason = _RECONNECT_TOO_FREQUENTLY
        if reason is None and cfg.require_auth_token:
            reason = self._auth_token_refusal(event)
            if reason is None:
                self.stats.auth_tokens_accepted += 1
            else:
                self.stats.auth_tokens_refused += 1
        if reason is None:
            return None
        self.stats.logins_refused += 1
        if reason == _LOGINS_REFUSED:
            return Deviation("app_key", reason, cfg.login_error_phrase)
        token_refused = reason in (_AUTH_TOKEN_MISSING, _AUTH_TOKEN_INVALID)
        field_name = "token" if token_refused else "group_name"
        return Deviation(field_name, reason, _REFUSAL_PHRASES[reason])

    async def _writer(self, conn: _Conn) -> None:
        """Sends what is queued for the connection, everything queued at once: one
        transport write for many pushes, and a wait for the socket's buffer to drain
        before the next (send_context checks the connection is open and drains)."""
        ws = conn.ws
        with contextlib.suppress(ConnectionClosed):
            while True:
                while not conn.outbox:
                    conn.ready.clear()
                    await conn.ready.wait()
                items, conn.outbox = conn.outbox, []
                async with ws.send_context():
                    ws.transport.write(_ws_frames(ws.protocol, items))
                self._last_tx[ws] = time.monotonic()

    def _drop(self, conn: _Conn) -> None:
        grp = self._groups.get(conn.group)
        if grp is not None and conn in grp.conns:
            grp.conns.remove(conn)
        if self.config.redeliver_on_disconnect:
            mine = [m for m in self._in_flight.values() if m.owner is conn]
            for msg in sorted(mine, key=lambda m: m.id, reverse=True):
                self._requeue(msg)
            self.stats.redelivered_on_disconnect += len(mine)
        self._wake.set()

    # -- delivery state ---------------------------------------------------------------

    def _settle(self, msg: _Msg, state: int) -> None:
        """Release a settled message, keeping its compact outcome for the ledger."""
        i = msg.id - self.id_base
        self._out_state[i] = state
        self._out_pushes[i] = min(msg.pushes, 0xFFFF)
        self._out_conn[i] = msg.conn
        del self._messages[msg.id]
        self._in_flight.pop(msg.id, None)
        if msg.owner is not None and msg.state == "in_flight":
            msg.owner.in_flight -= 1
        msg.owner = None
        self.stats.outstanding -= 1
        if self.stats.outstanding == 0:
            self._settled.set()

    # -- TopQueues (the HTTP gateway's consume/confirm, top_api.py) ---------------------

    def consume(self, app_key: str, group: str, quantity: int) -> list[TopMessage]:
        """Up to ``quantity`` queued messages, in flight for an HTTP consumer from now on
        (redelivered after ``confirm_timeout_s`` like a push)."""
        calls = self.stats.top_consume_calls
        calls[group] = calls.get(group, 0) + 1
        grp = self._groups.get((app_key, group))
        out: list[TopMessage] = []
        now = time.monotonic()
        while grp is not None and grp.queue and len(out) < quantity:
            msg = self._messages.get(grp.queue.popleft())
            if msg is None or msg.state != "queued":
                continue
            msg.pushes += 1
            msg.state, msg.owner, msg.conn = "in_flight", None, 0
            msg.pushed_at, msg.deadline = now, now + self.config.confirm_timeout_s
            self._in_flight[msg.id] = msg
            self.stats.pushes += 1
            if not self.stats.first_push_at:
                self.stats.first_push_at = time.time()
            ev = msg.event
            out.append(
                TopMessage(msg.id, ev.topic, ev.content, msg.published_ms, "", ev.user_id, ev.nick)
            )
        return out

    def confirm(
        self, app_key: str, group: str, ids: Sequence[int], failed_ids: Sequence[int]
    ) -> None:
        for msg_id in ids:
            self._on_confirm(None, msg_id)
        for msg_id in failed_ids:
            self._on_failed(msg_id, "f_message_ids")

    def auth_token(self, app_key: str, group: str) -> str:
        """A token for one CONNECT of ``(app_key, group)`` within ``auth_token_ttl_s``
        (remembered, at most :data:`_AUTH_TOKENS_MAX` at a time, oldest dropped first)."""
        tokens = self._auth_tokens
        now = time.monotonic()
        while tokens:  # issued in expiry order: drop the expired, and the oldest when full
            _, expires = next(iter(tokens.values()))
            if len(tokens) < _AUTH_TOKENS_MAX and expires > now:
                break
            tokens.popitem(last=False)
        token = str(uuid.uuid4())
        tokens[token] = ((app_key, group), now + self.config.auth_token_ttl_s)
        self.stats.auth_tokens_issued += 1
        return token

    def _auth_token_refusal(self, event: ConnectRequest) -> str | None:
        """None when the CONNECT carries a live token of its app and group (used up
        now), else the refusal reason."""
        if not event.auth_token:
            return _AUTH_TOKEN_MISSING
        issued = self._auth_tokens.pop(event.auth_token, None)
        if issued is None:
            return _AUTH_TOKEN_INVALID
        owner, expires = issued
        if owner != (event.app_key, event.group_name) or expires <= time.monotonic():
            return _AUTH_TOKEN_INVALID
        return None

    def _on_confirm(self, conn: _Conn | None, msg_id: int) -> None:
        msg = self._messages.get(msg_id)
        if msg is None:
            if 0 <= msg_id - self.id_base < len(self._out_state):
                self.stats.duplicate_confirms += 1
            else:
                self.stats.unknown_confirms += 1
                self.unknown_confirmed_ids.append(msg_id)
                log.debug(
                    "simulator: confirm of an unknown id", id=msg_id, conn=conn and conn.serial
                )
            return
        pushed_at = msg.pushed_at
        self._settle(msg, _CONFIRMED)
        self.stats.confirmed += 1
        if pushed_at:
            self.stats.latencies_ms.append((time.monotonic() - pushed_at) * 1000)
        self.stats.last_confirm_at = time.time()
        self._wake.set()

    def _on_failed(self, msg_id: int, reason: str | None = None) -> None:
        self.stats.failed_received += 1
        msg = self._messages.get(msg_id)
        log.debug("simulator: failed", id=msg_id, reason=reason)
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
        """Confirm timeouts, failed delays, TTL, idle close, pacing rounds and held
        out-of-order pushes, checked several times a second."""
        cfg = self.config
        periods = [cfg.confirm_timeout_s, cfg.failed_delay_s, cfg.ttl_s, 1.0]
        if cfg.idle_close_s:
            periods.append(cfg.idle_close_s)
        if cfg.pacing:
            periods.append(cfg.push_round_interval_s)
        tick = max(0.01, min(periods) / 4)
        ttl_every = max(0.05, min(10.0, cfg.ttl_s / 4))
        next_ttl_check = 0.0
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            expired = []
            for msg in self._in_flight.values():
                if msg.deadline > now:
                    break
                expired.append(msg)
            # A push left to time out is what a client should never cause: count it, and
            # whether its connection was still there (a client holding it) or not.
            self.stats.confirm_timeouts += len(expired)
            self.stats.confirm_timeouts_online += sum(
                1 for m in expired if m.owner is not None and m.owner.ws.state.name == "OPEN"
            )
            for msg in sorted(expired, key=lambda m: m.id, reverse=True):
                self._requeue(msg)
            due = sorted((i for t, i in self._delayed if t <= now), reverse=True)
            if due:
                self._delayed = [(t, i) for t, i in self._delayed if t > now]
                for msg_id in due:
                    delayed = self._messages.get(msg_id)
                    if delayed is not None and delayed.state == "delayed":
                        self._requeue(delayed)
            if now >= next_ttl_check:
                self._expire()
                next_ttl_check = now + ttl_every
            if cfg.idle_close_s:
                self._idle_close(now)
            for grp in self._groups.values():
                for conn in grp.conns:
                    if conn.held is not None and now - conn.held_at > 0.2:
                        conn.put(conn.held)
                        conn.held = None
                    paced_out = cfg.pacing and grp.queue and conn.round_left <= 0
                    if paced_out and now >= conn.next_round_at:
                        self._start_round(conn)

    def _idle_close(self, now: float) -> None:
        limit = self.config.idle_close_s or 0.0
        for ws in list(self._sockets):
            if ws.state.name != "OPEN":
                continue
            rx = ws.protocol.last_rx if isinstance(ws.protocol, _TmcServerProtocol) else now
            if now - max(rx, self._last_tx.get(ws, now)) >= limit:
                self.stats.idle_closes += 1
                log.info("simulator: idle close", peer=ws.remote_address, idle_s=limit)
                self._last_tx[ws] = now  # once
                self._close(ws, IDLE_CLOSE_CODE, IDLE_CLOSE_REASON)

    def _expire(self) -> None:
        cutoff_ms = int((time.time() - self.config.ttl_s) * 1000)
        old = [m for m in self._messages.values() if m.published_ms < cutoff_ms]
        for msg in old:
            if msg.state == "in_flight":
                self.stats.expired_in_flight += 1
            self._settle(msg, _EXPIRED)
            self.stats.expired += 1
        if old:
            log.info("simulator: messages expired", count=len(old), ttl_s=self.config.ttl_s)
            self._wake.set()

    async def _pump(self) -> None:
        """Hand queued messages to online connections with room in their window."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            for grp in self._groups.values():
                self._deliver(grp)
            await asyncio.sleep(0)

    def _start_round(self, conn: _Conn) -> None:
        """A pull (or login) starts a delivery round; paced rounds are spaced out."""
        cfg = self.config
        if cfg.pacing:
            now = time.monotonic()
            if conn.round_left > 0 or now < conn.next_round_at:
                return  # a round is on, or the last one is too recent
            conn.round_left = cfg.push_round_max
            conn.next_round_at = now + cfg.push_round_interval_s
        self._wake.set()

    def _has_room(self, conn: _Conn) -> bool:
        cfg = self.config
        if not cfg.pacing:
            return conn.in_flight < cfg.window
        # top-push: stop a round when less than half a batch of room is left.
        return conn.round_left > 0 and cfg.window - conn.in_flight >= max(1, cfg.push_batch // 2)

    def _deliver(self, grp: _Group) -> None:
        cfg = self.config
        queue, conns = grp.queue, grp.conns
        # One clock reading per round: every push of it is sent in the same write.
        now, out_ms = time.monotonic(), int(time.time() * 1000)
        if (
            len(conns) == 1
            and cfg.distribution == "round_robin"
            and not cfg.pacing
            and not conns[0].faults_pending()
        ):
            # What the loop below does for a lone connection (round robin over one: rr
            # stays 0), without choosing a connection per message.
            conn = conns[0]
            if queue and conn.in_flight < cfg.window:
                grp.rr = 0
                self._push_run(conn, queue, cfg.window - conn.in_flight, now, out_ms)
            return
        window = cfg.window
        while queue and conns:
            if cfg.pacing:
                room = [c for c in conns if self._has_room(c)]
            else:  # _has_room without pacing, inline: this runs once per message
                room = [c for c in conns if c.in_flight < window]
            if not room:
                break
            if cfg.distribution == "random":
                conn = self._rng.choice(room)
            else:
                grp.rr = (grp.rr + 1) % len(room)
                conn = room[grp.rr]
            msg = self._messages.get(queue.popleft())
            if msg is None or msg.state != "queued":
                continue
            self._push(conn, msg, now, out_ms)
        if cfg.pacing and not queue:
            for conn in conns:  # fewer came than requested: the round ends
                conn.round_left = 0

    def _body(self, msg: _Msg) -> bytes:
        """The attempt-independent Custom entries of a message's push (encoded once)."""
        ev = msg.event
        body = msg.body = sim_frames.push_static(
            msg.id,
            ev.topic,
            ev.content,
            msg.published_ms,
            TAOBAO_PUBLISHER,
            ev.user_id,
            ev.nick,
            ev.data_id,
        )
        return body

    def _push_run(self, conn: _Conn, queue: deque[int], room: int, now: float, out_ms: int) -> int:
        """Push up to ``room`` queued messages to ``conn``, no fault armed: :meth:`_push`
        without its fault cases, the frames queued for one write. Returns the pushes."""
        messages, in_flight = self._messages, self._in_flight
        head = conn.session.push_head
        first_extras = push_extras(out_ms)
        deadline = now + self.config.confirm_timeout_s
        out = conn.outbox
        serial = conn.serial
        n = 0
        while n < room and queue:
            msg = messages.get(queue.popleft())
            if msg is None or msg.state != "queued":
                continue
            pushes = msg.pushes
            extras = push_extras(out_ms, pushes) if pushes else first_extras
            out.append(b"".join((head, msg.body or self._body(msg), extras, _END)))
            msg.pushes = pushes + 1
            in_flight[msg.id] = msg
            msg.state = "in_flight"
            msg.owner = conn
            msg.conn = serial
            msg.pushed_at = now
            msg.deadline = deadline
            n += 1
        if n:
            conn.ready.set()
            conn.in_flight += n
            conn.round_left -= n
            self.stats.pushes += n
            if not self.stats.first_push_at:
                self.stats.first_push_at = time.time()
        return n

    def _push(self, conn: _Conn, msg: _Msg, now: float, out_ms: int) -> None:
        ev = msg.event
        gzipped = conn.gzip_next > 0
        if gzipped:
            conn.gzip_next -= 1
            static = sim_frames.push_static(
                msg.id,
                ev.topic,
                gzip.compress(ev.content.encode()),
                msg.published_ms,
                TAOBAO_PUBLISHER,
                ev.user_id,
                ev.nick,
                ev.data_id,
            )
        else:
            static = msg.body or self._body(msg)
        body = static + push_extras(out_ms, msg.pushes or None)
        if conn.wrong_token_next:
            conn.wrong_token_next -= 1
            head = codec.send_head(f"wrong-{uuid.uuid4()}", conn.session.version)
            frame = head + _KIND_DATA + body + codec.END_OF_HEADERS
        else:
            frame = conn.session.push(body)
        self._send_push(conn, frame)
        if conn.duplicate_next:
            conn.duplicate_next -= 1
            self._send_push(conn, frame)
            self.stats.pushes += 1
        msg.pushes += 1
        self._in_flight[msg.id] = msg
        msg.state = "in_flight"
        msg.owner = conn
        msg.conn = conn.serial
        msg.pushed_at = now
        msg.deadline = now + self.config.confirm_timeout_s
        conn.in_flight += 1
        conn.round_left -= 1
        self.stats.pushes += 1
        if not self.stats.first_push_at:
            self.stats.first_push_at = time.time()

    def _send_push(self, conn: _Conn, frame: bytes) -> None:
        if conn.swap_next and conn.held is None:
            conn.swap_next -= 1
            conn.held, conn.held_at = frame, time.monotonic()
            return
        if conn.fragment_next:
            conn.fragment_next -= 1
            step = -(-len(frame) // conn.fragment_parts)
            conn.put([frame[i : i + step] for i in range(0, len(frame), step)])
        else:
            conn.put(frame)
        if conn.held is not None:
            conn.put(conn.held)
            conn.held = None


def _ws_frames(protocol: ServerProtocol, items: list[bytes | list[bytes]]) -> bytes:
    """The WebSocket bytes of ``items``, for one transport write: a Binary frame per TMC
    frame, framed here (:func:`~bridge.sources.tmc.sim_frames.binary_frame_header`, what
    websockets writes for it) rather than one websockets Frame object per push; a list
    is one fragmented message, sent through the protocol as ``send(list)`` sends it (each
    part a frame, then an empty final one). The caller holds ``send_context`` (the
    connection is open)."""
    if protocol.extensions:  # none is ever negotiated (compression=None); just in case
        for item in items:
            if isinstance(item, bytes):
                protocol.send_binary(item)
            else:
                _send_fragments(protocol, item)
        return b"".join(protocol.data_to_send())
    header = sim_frames.binary_frame_header
    parts: list[bytes] = []
    for item in items:
        if isinstance(item, bytes):
            parts += (header(len(item)), item)
        else:
            _send_fragments(protocol, item)
            parts += protocol.data_to_send()
    return b"".join(parts)


def _send_fragments(protocol: ServerProtocol, chunks: list[bytes]) -> None:
    """A fragmented message through the protocol, as ``ServerConnection.send`` sends a
    list: each chunk a frame without FIN, then an empty final continuation."""
    protocol.send_binary(chunks[0], fin=False)
    for chunk in chunks[1:]:
        protocol.send_continuation(chunk, fin=False)
    protocol.send_continuation(b"", fin=True)
