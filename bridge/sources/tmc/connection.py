"""TMC asyncio driver: WebSocket I/O around the sans-I/O
:class:`~bridge.sources.tmc.session.ClientSession`.

One :class:`TmcSource` runs, for each configured group, ``connections`` independent
:class:`_Connection` tasks logged in to that group (TMC gives each message of a group to
one of its connections; the groups never share a message). Each connection loops:
connect, log in, pull right away and then every ``pull_interval_s``, ping after
``ping_idle_s`` without traffic (never waiting for the pong, docs/protocol.md §8.1),
hand every push to the pipeline and send the confirm or failed frame when the pipeline
settles it. On any failure it closes the socket and reconnects after a jittered back-off
whose first delay is at least ``reconnect_min_s``.

Back-pressure: the reader awaits ``submit`` before reading the next frame, so a full
pipeline stops the socket reads and TCP pushes back on the server (§9.6).

Bad input never ends a connection: every frame is taken under one guard. A push whose
id is valid but whose other fields are not (a bad time, content that is not gzip or
inflates past ``max_content_bytes``, a frame over ``max_frame_bytes``) is handed on
marked malformed, so the pipeline dead-letters it and then confirms it. A frame that
cannot be confirmed (not a frame at all, a push without a valid int64 id) is logged
with the reason, counted in ``tmc_bridge_source_skipped_frames_total`` and skipped: the
server redelivers it later, and the session goes on. The connection task itself logs
every exit with its reason (an unexpected exception with its traceback), shows it in
``/readyz`` while no connection is logged in, and reconnects with the usual back-off.

Stepping back: while the sink has been unavailable for ``pipeline.step_back_after_s``
the bridge calls :meth:`TmcSource.pause`: every connection stops taking pushes, sends
the confirms already due and logs out; TMC keeps the group's messages meanwhile and
pushes the backlog in order at the next login. What was pushed and left unconfirmed is
redelivered by TMC after its confirm timeout, so the next login waits until that has
passed (``server_confirm_timeout_s`` after the last such push): otherwise newer events of
an order could be pushed before the older ones come back.

A confirm is sent only on the socket the message came in on, and only while that login
is still current: after a reconnect the old token is void, the server redelivers, and the
pipeline's committed-id cache confirms the redelivery without writing it twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.uri import parse_uri

from bridge.config_fields import public_url
from bridge.errors import ConfigError, FrameError, LoginError, ProtocolError, TmcError
from bridge.model import Delivery
from bridge.observability.metrics import Metrics
from bridge.pipeline.ports import TAKEN, Ack, Source, Submit
from bridge.retry import Backoff
from bridge.sources.tmc import platform_errors, tls, transport
from bridge.sources.tmc.auth_token import AuthTokenError, AuthTokenSource
from bridge.sources.tmc.config import TmcSourceConfig
from bridge.sources.tmc.session import ClientSession, Ignored, LoggedIn, Push, Rejected

log = structlog.get_logger("bridge.source.tmc")


class _Ack:
    """Settles one push on the login it arrived on; a no-op once that login is gone."""

    __slots__ = ("_conn", "_deadline", "_generation", "_id")

    def __init__(self, conn: _Connection, generation: int, message_id: int) -> None:
        self._conn, self._generation, self._id = conn, generation, message_id
        self._deadline = time.monotonic() + conn.max_hold_s

    def alive(self) -> bool:
        """Its login is current and TMC's confirm deadline has not passed (taken as
        ``max_hold_s`` from receipt, below the server's ~60 s)."""
        conn = self._conn
        return (
            self._generation == conn.generation
            and conn.online
            and time.monotonic() < self._deadline
        )

    def confirm(self) -> None:
        conn = self._conn
        if conn.send_if_current(self._generation, conn.session.confirm, self._id):
            conn.confirmed_this_login += 1
            conn.unreported_confirmed += 1

    def fail(self, reason: str) -> None:
        self._conn.send_if_current(
            self._generation, lambda i: self._conn.session.fail(i, reason), self._id
        )


class _Outbox:
    """Frames for the writer, taken all at once: the confirms the pipeline settles in one
    batch go out in one socket write (see :func:`transport.send_all`)."""

    __slots__ = ("_frames", "_idle", "_ready")

    def __init__(self) -> None:
        self._frames: list[bytes] = []
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def put(self, frame: bytes) -> None:
        self._frames.append(frame)
        self._ready.set()
        self._idle.clear()

    async def take(self) -> list[bytes]:
        """Every frame queued so far (waits for one)."""
        while not self._frames:
            self._ready.clear()
            await self._ready.wait()
        frames, self._frames = self._frames, []
        return frames

    def sent(self) -> None:
        """The writer wrote what it took."""
        if not self._frames:
            self._idle.set()

    async def drained(self) -> None:
        """Until everything queued was written."""
        await self._idle.wait()


class _SteppedBack(Exception):
    """A login abandoned half-way because the bridge stepped back meanwhile."""


class _Connection:
    def __init__(
        self,
        index: int,
        group: str,
        *,
        config: TmcSourceConfig,
        secret: str,
        submit: Submit,
        metrics: Metrics,
    ) -> None:
        self.index = index
        self.group = group
        self.max_hold_s = config.max_hold_s
        self.metrics = self._metrics = metrics
        self._config = config
        self._submit = submit
        # Jittered upward, so the first retry waits at least reconnect_min_s.
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        self.session = ClientSession(
            config.app_key,
            secret,
            group,
            sdk=config.sdk,
            max_content_bytes=config.max_content_bytes,
        )
        self.generation = 0
        self.online = False
        self._ws: ClientConnection | None = None
        self._outbox = _Outbox()
        #: Deliveries read while the pipeline was full (see _on_binary), in order; the
        #: task that submits them as room appears; True while it runs.
        self._backlog: collections.deque[Delivery] = collections.deque()
        self._backlog_task: asyncio.Task[None] | None = None
        self._backlog_first: asyncio.Future[None] | None = None
        self._blocked = False
        #: Pushes taken and confirms queued since the last metrics update: counted here
        #: and added to the Prometheus counter once per write, not once per message.
        self.unreported_received = 0
        self.unreported_confirmed = 0
        self._last_traffic = time.monotonic()
        self._stop = asyncio.Event()
        self._reading = True
        self.confirms_sent = 0
        self.confirms_dropped = 0
        self.pushes_left = 0
        self.last_error: str | None = None
        #: (monotonic time, reason) of the last frame skipped, for /readyz.
        self.last_skipped: tuple[float, str] | None = None
        self._log = log.bind(connection=index, group=group)
        #: Fetches the CONNECT's auth token before every login; None: Void is sent.
        self._auth_token = AuthTokenSource.for_config(config, secret)
        #: Stepped back (see :meth:`pause`): no login until :meth:`resume`.
        self.paused = False
        #: A pause ended (or will end) the current socket: the run loop must stay out
        #: (and hold back) before the next login, even if a resume came meanwhile.
        self._stepped_back = False
        self._resumed = asyncio.Event()
        #: Pushes taken and confirms sent on the current login, and when the last push
        #: came: after stepping back with pushes unconfirmed, the next login waits for
        #: TMC's confirm timeout to have passed for them (see ``server_confirm_timeout_s``).
        self.taken_this_login = 0
        self.confirmed_this_login = 0
        self._last_push_at = 0.0
        self._hold_until = 0.0
        self._logged_out_at = 0.0
        self._closing: asyncio.Task[None] | None = None
        metrics.connection_up("tmc", index, False, group)

    # -- called by acks (event loop, never blocks) --------------------------------

    def send_if_current(self, generation: int, make: Callable[[int], bytes], msg_id: int) -> bool:
        """Queue the frame ``make(msg_id)`` on the login ``generation``; False when that
        login is gone (nothing sent: the server redelivers)."""
        if generation != self.generation or not self.online:
            self.confirms_dropped += 1
            return False
        try:
            frame = make(msg_id)
        except TmcError as exc:
            # Ids are validated on arrival, so this is a bug; it must not escape into the
            # pipeline that is settling a batch. Unconfirmed, the message comes back.
            self._log.error("cannot encode confirm", message_id=msg_id, error=str(exc))
            self.confirms_dropped += 1
            return False
        self._outbox.put(frame)
        self.confirms_sent += 1
        return True

    # -- lifecycle ----------------------------------------------------------------

    async def run(self) -> None:
        delays = self._backoff.delays()
        while not self._stop.is_set():
            if self.paused or self._stepped_back:
                # Stepped back (also when it came during a back-off wait): no login.
                self._stepped_back = False
                await self._stay_out()
                delays = self._backoff.delays()
                continue
            generation = self.generation
            try:
                await self._session_once()
            except _SteppedBack:
                self._log.info("tmc login abandoned: stepping back")
            except LoginError as exc:
                # What to do about it, in the console's terms, in the log and /readyz.
                if isinstance(exc, AuthTokenError):
                    advice = exc.hint
                    self._log.error("tmc auth token not obtained", error=str(exc), hint=advice)
                else:
                    advice = platform_errors.hint(exc.status_code, None, exc.status_phrase)
                    self._log.error(
                        "tmc login refused",
                        status_code=exc.status_code,
                        status_phrase=exc.status_phrase,
                        hint=advice,
                    )
                self.last_error = platform_errors.with_hint(str(exc), advice)
            except (FrameError, ProtocolError) as exc:
                # Only the login exchange raises these; online, bad frames are skipped.
                self.last_error = f"login failed: {exc}"
                self._log.error("tmc login failed, resetting connection", error=str(exc))
            except ConnectionClosed as exc:
                if self._stop.is_set() or self._stepped_back:
                    self._log.info(
                        "tmc connection closed",
                        confirms_sent=self.confirms_sent,
                        pushes_left_for_redelivery=self.pushes_left,
                    )
                else:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    self._log.warning("tmc connection lost", error=self.last_error)
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._log.warning("tmc connection lost", error=self.last_error)
            except (InvalidURI, ValueError) as exc:
                # Checked at start-up (ConfigError); should a URL still fail here, keep
                # saying so (in the log and /readyz) instead of ending the task.
                self.last_error = f"invalid source.tmc.url: {exc}"
                self._log.error("invalid TMC url", error=str(exc))
            except Exception as exc:
                # A bug. The task must not end silently: log it whole, and reconnect.
                self.last_error = f"internal error: {type(exc).__name__}: {exc}"
                self._log.exception("tmc connection failed unexpectedly", error=self.last_error)
            finally:
                self._set_online(False)
                self.session.lost()
            if self._stop.is_set():
                break
            if self.paused or self._stepped_back:
                continue
            self._metrics.reconnect("tmc", self.index, self.group)
            # A login went through on that socket (the generation counts logins): it
            # resets the back-off. _session_once always ends in an exception, so its
            # return value cannot tell.
            if self.generation != generation:
                # A session that got online resets the back-off, but the first retry
                # still waits reconnect_min_s: the platform refuses fast reconnects.
                delays = self._backoff.delays()
            delay = next(delays)
            self._log.info("tmc reconnecting", in_s=round(delay, 2))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _session_once(self) -> None:
        """One socket from connect to close. Always ends in an exception (the reason)."""
        cfg = self._config
        # A fresh auth token for every login (AuthTokenError, a LoginError, if none).
        token = None if self._auth_token is None else await self._auth_token.fetch(self.group)
        if self._stepped_back:
            raise _SteppedBack
        self._log.info("tmc connecting", url=public_url(cfg.url), auth_token=token is not None)
        async with connect(
            cfg.url,
            ping_interval=None,  # our own idle ping, pongs not awaited (§8.1, §12)
            ping_timeout=None,
            compression=None,  # no TMC client negotiates permessage-deflate
            # The frame limit is enforced by skipping, not by failing the connection.
            max_size=None,
            create_connection=transport.connection_class(cfg.max_frame_bytes),
            open_timeout=cfg.connect_timeout_s,
            close_timeout=2,
            user_agent_header=None,
            # wss://: the system's CAs, or source.tmc.tls_ca_file (an OSError naming it).
            ssl=tls.ws_ssl(cfg.url, cfg.tls_ca_file, cfg.tls_verify, section="source.tmc"),
        ) as ws:
            self._ws = ws
            if self._stepped_back:
                # A pause during the handshake found no socket to close.
                raise _SteppedBack
            # The official client tells the server its own address (intranet_ip): the
            # socket's local end.
            local = ws.local_address
            address = str(local[0]) if isinstance(local, tuple) and local else None
            now_ms = int(time.time() * 1000)
            await ws.send(self.session.connect(now_ms, intranet_ip=address, token=token))
            first = await asyncio.wait_for(ws.recv(), cfg.connect_timeout_s)
            if not isinstance(first, bytes):
                raise ProtocolError("text frame instead of CONNECTACK")
            event = self.session.receive(first)
            if not isinstance(event, LoggedIn):
                raise ProtocolError(f"unexpected first reply {event!r}")
            self.generation += 1
            self._outbox = _Outbox()
            # Taking pushes again (a pause or a drain stopped it on the previous socket).
            self._reading = not self._stop.is_set()
            self._set_online(True)
            self.last_error = None
            self._log.info("tmc logged in", flag=self.generation)
            if isinstance(ws, transport.TmcConnection):
                # Pushes straight from the protocol parser from now on (see _on_binary).
                generation = self.generation
                ws.on_binary = lambda data: self._on_binary(ws, data, generation)
            tasks: list[asyncio.Future[None]] = [
                asyncio.create_task(self._reader(ws)),
                asyncio.create_task(self._writer(ws)),
                asyncio.create_task(self._puller()),
                asyncio.create_task(self._pinger(ws)),
            ]
            try:
                # Whichever ends first ends the session, with its exception: a writer that
                # died must not leave a reader taking pushes it can never confirm.
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
                raise RuntimeError(f"tmc connection task ended: {sorted(map(str, done))}")
            finally:
                self._set_online(False)
                if isinstance(ws, transport.TmcConnection):
                    ws.on_binary = None
                # Deliveries still waiting for room are dropped: unconfirmed, the server
                # redelivers them, as it does what was still unread in the socket.
                self._backlog.clear()
                self._blocked = False
                for pending in (self._backlog_task, self._backlog_first):
                    if pending is not None:
                        tasks.append(pending)
                self._backlog_task = self._backlog_first = None
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._ws = None
                self._report_counts()

    def _set_online(self, online: bool) -> None:
        if online != self.online:
            self._metrics.connection_up("tmc", self.index, online, self.group)
            if online:
                self.taken_this_login = self.confirmed_this_login = 0
        self.online = online

    # -- stepping back during a sink outage ----------------------------------------

    def pause(self) -> None:
        """Log out: take no more pushes, let the confirms already due out, close."""
        if self.paused:
            return
        self.paused = self._stepped_back = True
        self._resumed.clear()
        self._reading = False
        self._logged_out_at = time.monotonic()
        left = self.taken_this_login - self.confirmed_this_login
        if self.online and left > 0:
            self._hold_until = max(
                self._hold_until, self._last_push_at + self._config.server_confirm_timeout_s
            )
        self._log.warning(
            "tmc logging out: the sink is unavailable",
            pushes_left_unconfirmed=max(left, 0),
        )
        self._closing = asyncio.get_running_loop().create_task(
            self._close_socket("tmc client stepping back")
        )

    def resume(self) -> None:
        if not self.paused:
            return
        # Pushes are taken again only on the next login (_session_once): the socket the
        # pause closes may still be open.
        self.paused = False
        self._resumed.set()

    async def _stay_out(self) -> None:
        """While paused, and then until TMC has taken back what this login left
        unconfirmed (so the backlog comes back in order)."""
        stop = asyncio.ensure_future(self._stop.wait())
        resumed = asyncio.ensure_future(self._resumed.wait())
        try:
            await asyncio.wait({stop, resumed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            resumed.cancel()
        if self.paused or self._stop.is_set():
            return  # stopping (or paused again at once): the caller loops
        # Not before TMC's confirm timeout has passed for what was left unconfirmed, nor
        # sooner after the logout than the platform accepts a reconnect.
        earliest = max(self._hold_until, self._logged_out_at + self._config.reconnect_min_s)
        wait = earliest - time.monotonic()
        if wait > 0:
            self._log.info(
                "tmc login held back: TMC's confirm timeout must pass for the pushes left "
                "unconfirmed, so that they come back in order",
                in_s=round(wait, 1),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)

    async def _reader(self, ws: ClientConnection) -> None:
        # Runs until the socket closes, also while draining: leaving the loop would end
        # the session, and with it the writer that still has confirms to send for what
        # the pipeline commits during the drain (a lost confirm is a duplicate later).
        # Pushes normally come through _on_binary; recv() gets only what that path left
        # (text, fragments, or frames behind such a message, in order).
        generation = self.generation
        direct = ws if isinstance(ws, transport.TmcConnection) else None
        while True:
            data = await ws.recv()
            self._last_traffic = time.monotonic()
            if not isinstance(data, bytes):
                continue  # text frames are not part of TMC (§3)
            delivery = self._take(data, generation)
            if delivery is None:
                continue
            if direct is not None:
                # Nothing may overtake this one through the direct path meanwhile.
                direct.direct_paused = True
            try:
                await self._submit(delivery)
            finally:
                if direct is not None:
                    direct.direct_paused = False

    def _on_binary(self, ws: transport.TmcConnection, data: bytes, generation: int) -> None:
        """A push as the protocol parsed it (synchronously, from the socket's
        ``data_received``): taken into the pipeline at once when it has room. When it is
        full, this delivery and every later one wait in ``_backlog`` (in order) while the
        socket's reads are paused, so TCP pushes back on the server as before (§9.6)."""
        self._last_traffic = time.monotonic()
        delivery = self._take(data, generation)
        if delivery is None:
            return
        if self._blocked:
            self._backlog.append(delivery)
            return
        try:
            waiting = self._submit(delivery)
        except Exception as exc:
            # A bug; the frame must not end the socket's protocol callback. Unconfirmed,
            # the message comes back.
            self._log.exception("tmc push could not be submitted", error=repr(exc)[:300])
            return
        if waiting is TAKEN:
            return
        self._blocked = True
        ws.transport.pause_reading()
        # A future of its own, so that the session's end can cancel it whatever state the
        # task serving the backlog is in (a coroutine never awaited would be a warning).
        self._backlog_first = asyncio.ensure_future(waiting)
        self._backlog_task = asyncio.get_running_loop().create_task(
            self._serve_backlog(ws, self._backlog_first)
        )

    async def _serve_backlog(self, ws: transport.TmcConnection, first: Awaitable[None]) -> None:
        """Wait for room for the first blocked delivery, then submit the ones read after
        it, in order, then read the socket again."""
        try:
            await first
            backlog = self._backlog
            while backlog:
                await self._submit(backlog.popleft())
        except Exception as exc:
            # A bug in submit: log it, drop the rest (redelivered), and read on rather
            # than leave the socket paused for good.
            self._log.exception("tmc pushes could not be submitted", error=repr(exc)[:300])
            self._backlog.clear()
        self._blocked = False
        self._backlog_task = self._backlog_first = None
        ws.transport.resume_reading()

    def _take(self, data: bytes, generation: int) -> Delivery | None:
        """One frame -> a delivery, or None (logged and counted). The guard of the source:
        nothing a frame holds can raise out of here."""
        try:
            cut = transport.oversized(data)
            if cut is None:
                event = self.session.receive(data, received_ns=time.monotonic_ns())
            else:
                size, head = cut
                event = self.session.receive_oversized(
                    head, size, self._config.max_frame_bytes, received_ns=time.monotonic_ns()
                )
        except TmcError as exc:
            self._skip("oversized" if cut else "malformed", str(exc))
            return None
        except Exception as exc:
            self._log.exception("tmc frame could not be handled", error=repr(exc)[:300])
            self._skip("internal_error", f"{type(exc).__name__}: {exc}")
            return None
        if isinstance(event, Push):
            msg = event.message
            if not self._reading:
                # Draining or stepping back: not taken, not confirmed; the server
                # redelivers it (after its confirm timeout: the next login waits for it).
                self.pushes_left += 1
                if self.paused:
                    self._hold_until = time.monotonic() + self._config.server_confirm_timeout_s
                return None
            msg.group = self.group
            self.taken_this_login += 1
            self._last_push_at = time.monotonic()
            self.unreported_received += 1
            if msg.malformed:
                self._log.warning(
                    "tmc push malformed, dead-lettering it",
                    message_id=msg.message_id,
                    topic=msg.topic,
                    reason=msg.malformed,
                )
            ack: Ack = _Ack(self, generation, msg.message_id)
            return Delivery(msg, [ack])
        if isinstance(event, Rejected):
            kind = "oversized" if cut else "unconfirmable"
            self._skip(kind, event.reason, message_id=event.message_id)
        elif isinstance(event, Ignored):
            self._log.debug("tmc frame ignored", reason=event.reason)
        return None

    def _skip(self, kind: str, reason: str, **fields: object) -> None:
        self._metrics.skipped("tmc", kind)
        self.last_skipped = (time.monotonic(), f"{kind}: {reason[:300]}")
        self._log.warning("tmc frame skipped", kind=kind, reason=reason[:300], **fields)

    async def _writer(self, ws: ClientConnection) -> None:
        outbox = self._outbox
        while True:
            frames = await outbox.take()
            await transport.send_all(ws, frames)
            outbox.sent()
            self._report_counts()
            self._last_traffic = time.monotonic()

    def _report_counts(self) -> None:
        """Add what was taken and confirmed since the last call to the group metrics."""
        if self.unreported_received:
            self._metrics.group_messages(
                "tmc", self.group, self.index, "received", self.unreported_received
            )
            self.unreported_received = 0
        if self.unreported_confirmed:
            self._metrics.group_messages(
                "tmc", self.group, self.index, "confirmed", self.unreported_confirmed
            )
            self.unreported_confirmed = 0

    async def _puller(self) -> None:
        # One pull right after login to fetch any backlog, then periodically (§6.4, §12);
        # none while draining. It never returns: a returning task would end the session.
        while True:
            if self._reading:
                self._outbox.put(self.session.pull())
            # Also while nothing is confirmed (the writer reports on every write).
            self._report_counts()
            await asyncio.sleep(self._config.pull_interval_s)

    async def _pinger(self, ws: ClientConnection) -> None:
        idle = self._config.ping_idle_s
        while True:
            wait = self._last_traffic + idle - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            waiter = asyncio.ensure_future(await ws.ping())
            # The pong may never come (§8.1): never await it, but retrieve its outcome so a
            # closed connection does not leave an unobserved exception behind.
            waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._last_traffic = time.monotonic()

    async def stop_reading(self) -> None:
        """Stop pulling and taking pushes; confirms keep flowing until :meth:`close`."""
        self._reading = False
        self._stop.set()

    async def close(self) -> None:
        self._stop.set()
        self._reading = False
        if self._closing is not None:
            # A step-back close under way: let it finish, not close the socket twice.
            await asyncio.gather(self._closing, return_exceptions=True)
        await self._close_socket("tmc client closed")

    async def _close_socket(self, reason: str) -> None:
        ws = self._ws
        if ws is not None:
            if self._blocked:
                # Reads paused for a full pipeline: the server's Close must be read. What
                # comes before it is not taken any more (_reading is off when closing).
                ws.transport.resume_reading()
            # Let queued confirms out before the Close frame.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.drained(), 2.0)
            await ws.close(1000, reason)


class TmcSource(Source):
    """Every configured group's connections (``connections`` logins each), all feeding
    one pipeline. Ready while every group has a connection logged in."""

    name = "tmc"

    def __init__(self, config: TmcSourceConfig, submit: Submit, *, metrics: Metrics) -> None:
        try:
            parse_uri(config.url)
        except (InvalidURI, ValueError) as exc:
            raise ConfigError(f"source.tmc.url: {exc}") from None
        secret = config.secret()
        self._connections: list[_Connection] = []
        for group, count in config.group_connections():
            for _ in range(count):
                index = len(self._connections)
                self._connections.append(
                    _Connection(
                        index, group, config=config, secret=secret, submit=submit, metrics=metrics
                    )
                )
        self._groups = config.group_names()
        self._tasks: list[asyncio.Task[None]] = []
        self._metrics = metrics
        #: Why the bridge stepped back (see :meth:`pause`), None while logged in.
        self._paused: str | None = None

    @property
    def logged_in(self) -> int:
        return sum(1 for c in self._connections if c.online)

    @property
    def last_errors(self) -> list[str]:
        return [c.last_error for c in self._connections if c.last_error]

    def group_problems(self) -> dict[str, str]:
        """Per group without a connection logged in: why (its last error, if any)."""
        found = {}
        for group in self._groups:
            conns = [c for c in self._connections if c.group == group]
            if any(c.online for c in conns):
                continue
            errors = [c.last_error for c in conns if c.last_error]
            found[group] = "not logged in" + (f" (last error: {errors[0]})" if errors else "")
        return found

    def problem(self) -> str | None:
        if self._paused is not None:
            return f"tmc logged out while the sink is unavailable ({self._paused})"
        problems = self.group_problems()
        if not problems:
            return None
        if len(self._groups) == 1:
            return f"tmc {next(iter(problems.values()))}"
        return "; ".join(f"tmc group {group} {what}" for group, what in problems.items())

    def notes(self) -> list[str]:
        """What /readyz adds while ready: the last frame skipped, if one was."""
        skipped = [c.last_skipped for c in self._connections if c.last_skipped]
        if not skipped:
            return []
        at, reason = max(skipped)
        return [f"tmc skipped a frame {time.monotonic() - at:.0f} s ago ({reason})"]

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(c.run(), name=f"tmc-connection-{c.index}-{c.group}")
            for c in self._connections
        ]

    def pause(self, reason: str) -> None:
        if self._paused is not None:
            return
        self._paused = reason
        self._metrics.source_stepped_back.set(1)
        for c in self._connections:
            c.pause()

    def resume(self) -> None:
        if self._paused is None:
            return
        self._paused = None
        self._metrics.source_stepped_back.set(0)
        for c in self._connections:
            c.resume()

    async def stop_reading(self) -> None:
        for c in self._connections:
            await c.stop_reading()

    async def close(self) -> None:
        for c in self._connections:
            await c.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
