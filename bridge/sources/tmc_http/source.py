"""The TMC HTTP API source: one consume loop and one confirm loop over a :class:`TopClient`.

**Consume.** One task calls ``taobao.tmc.messages.consume`` (``group_name``, ``quantity``),
never two calls at once (the platform asks callers not to consume concurrently), hands
every message to the pipeline through ``submit`` (awaited: a full pipeline stops the
calls) and calls again at once while messages come; after an empty answer it waits
``idle_backoff_s``, growing up to ``idle_backoff_max_s``. A failed call (an error envelope,
a network error) is logged with what to check, shown by :meth:`problem` for /readyz, and
tried again after a growing back-off: the daemon never dies of it.

**Confirm.** ``Ack.confirm()`` queues the id; the confirm task waits ``confirm_linger_ms``
for more, then sends ``taobao.tmc.messages.confirm`` with at most 200 ids a call, one
call at a time. A failed confirm call is tried ``confirm_attempts`` times in all, then
logged and left: the messages come back and the committed-ids store confirms them
without writing them again. ``Ack.fail()`` sends nothing (``f_message_ids`` is
deprecated): the message comes back after TMC's confirm timeout. ``Ack.alive()`` is
False once a message was held ``max_hold_s`` since its consume call answered.

**Pause.** :meth:`pause` stops the consume calls (the rest of a batch being handed on is
not taken: it comes back); confirms keep going out. :meth:`resume` starts them again, but
when messages consumed before or during the pause were left unconfirmed (given up by the
pipeline, not taken, or their confirm call given up), not before TMC's confirm timeout
(``server_confirm_timeout_s``) has passed since the consume call that handed out the last
of them: TMC gives those out again only then, and a consume before that would take newer
events of the same order first.

**Retries.** A confirm call that fails on a stale keep-alive connection is sent once more
at once (confirming twice is harmless); a consume call never is (its answer may have been
lost, not its request: see :mod:`~bridge.sources.tmc.top_client`).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import structlog

from bridge.config_fields import _url_problem, public_url
from bridge.errors import ConfigError
from bridge.model import Delivery, SourceMessage
from bridge.observability.metrics import Metrics
from bridge.pipeline.ports import Source, Submit
from bridge.retry import Backoff
from bridge.sources.tmc import tls
from bridge.sources.tmc.top_client import TopCallError, TopClient, TopTransportError
from bridge.sources.tmc_http.config import MAX_CONFIRM_IDS, TmcHttpSourceConfig
from bridge.sources.tmc_http.parse import Skipped, parse_consume

if TYPE_CHECKING:
    import httpx

log = structlog.get_logger("bridge.source.tmc_http")

CONSUME: Final = "taobao.tmc.messages.consume"
CONFIRM: Final = "taobao.tmc.messages.confirm"
#: Label of this source in the metrics (its messages carry ``source="tmc"``).
METRICS_SOURCE: Final = "tmc_http"
#: The config section the errors' hints name.
SECTION: Final = "source.tmc_http"


class _Batch:
    """The messages of one consume answer: when it came (TMC's confirm timeout counts
    from then) and how many of them no confirm was queued for yet."""

    __slots__ = ("at", "open")

    def __init__(self, at: float, size: int) -> None:
        self.at = at
        self.open = size


class _Ack:
    """Settles one consumed message: queues its id for the confirm task."""

    __slots__ = ("_batch", "_deadline", "_id", "_source")

    def __init__(
        self, source: TmcHttpSource, message_id: int, deadline: float, batch: _Batch | None = None
    ) -> None:
        self._source, self._id, self._deadline = source, message_id, deadline
        self._batch = batch

    def alive(self) -> bool:
        return time.monotonic() < self._deadline

    def confirm(self) -> None:
        batch, self._batch = self._batch, None  # counted once, however often called
        if batch is not None:
            batch.open -= 1
        self._source.queue_confirm(self._id, batch)

    def fail(self, reason: str) -> None:
        self._source.failed += 1  # nothing to send: TMC redelivers it


class TmcHttpSource(Source):
    """TMC over the TOP HTTP API, one group, one consume call at a time."""

    name = "tmc_http"

    def __init__(
        self,
        config: TmcHttpSourceConfig,
        submit: Submit,
        *,
        metrics: Metrics,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        problem = _url_problem(config.url, ("http", "https"))
        if problem is not None:
            raise ConfigError(f"source.tmc_http.url: {problem}")
        self._config = config
        self._submit = submit
        self._metrics = metrics
        self._top = TopClient(
            config.url,
            config.app_key,
            config.secret(),
            sign_method=config.sign_method,
            timeout_s=config.request_timeout_s,
            client=client,
            config_section=SECTION,
            url_key="url",
            verify=_verify(config),
        )
        self._log = log.bind(group=config.group)
        self._running = asyncio.Event()  # set: consume calls may go out (not paused)
        self._running.set()
        self._stopping = asyncio.Event()
        self._paused: str | None = None
        self._reading = True
        #: Ids to confirm, each with the batch it came in (None: not known).
        self._confirms: deque[tuple[int, _Batch | None]] = deque()
        #: Recent consume answers with messages, oldest first, while some of their
        #: messages may still be unconfirmed and TMC's confirm timeout has not passed.
        self._batches: deque[_Batch] = deque()
        #: When the newest batch came of which a confirm call was given up.
        self._lost_at: float | None = None
        #: No consume call before this (monotonic): after a pause that left messages
        #: unconfirmed, TMC's confirm timeout must pass for them first.
        self._hold_until = 0.0
        self._confirm_wake = asyncio.Event()
        self._confirm_idle = asyncio.Event()  # set: nothing queued, no call under way
        self._confirm_idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._up = False
        self._failures = 0
        #: The last call's error (None once a call went through), for /readyz.
        self.last_error: str | None = "no consume call answered yet"
        self.last_skipped: tuple[float, str] | None = None
        self.consume_calls = 0
        self.received = 0
        self.confirms_sent = 0
        self.confirm_calls = 0
        self.confirms_dropped = 0
        self.failed = 0
        self.left_for_redelivery = 0
        #: Calls (consume or confirm) that failed, in all.
        self.failed_calls = 0
        #: Consume calls held back after a resume (see :meth:`resume`).
        self.holds = 0
        metrics.connection_up(METRICS_SOURCE, 0, False)

    @property
    def top(self) -> TopClient:
        """The gateway client (tests watch its calls)."""
        return self._top

    # -- Source port ---------------------------------------------------------------

    def problem(self) -> str | None:
        if self._paused is not None:
            return f"tmc_http paused: {self._paused}"
        if self.last_error is not None:
            return f"tmc_http not consuming ({self.last_error})"
        return None

    def notes(self) -> list[str]:
        notes = []
        if self.last_skipped is not None:
            at, reason = self.last_skipped
            notes.append(f"tmc_http skipped a message {time.monotonic() - at:.0f} s ago ({reason})")
        if self.confirms_dropped:
            notes.append(f"tmc_http could not send {self.confirms_dropped} confirms (they return)")
        held = self._hold_until - time.monotonic()
        if held > 0 and self._paused is None:
            notes.append(
                f"tmc_http consume held {held:.0f} s more, until TMC has put back the "
                "messages left unconfirmed"
            )
        return notes

    def start(self) -> None:
        self._log.info(
            "tmc_http starting",
            url=public_url(self._config.url),
            quantity=self._config.quantity,
            sign_method=self._config.sign_method,
        )
        self._tasks = [
            asyncio.create_task(self._consume_loop(), name="tmc-http-consume"),
            asyncio.create_task(self._confirm_loop(), name="tmc-http-confirm"),
        ]

    def pause(self, reason: str) -> None:
        if self._paused is None:
            self._log.info("tmc_http paused", reason=reason)
        self._paused = reason
        self._running.clear()

    def resume(self) -> None:
        """Consume again; but not before TMC has put back, in order, what was consumed
        and left unconfirmed (see :meth:`_redelivery_due`)."""
        if self._paused is not None:
            due = self._redelivery_due()
            if due is not None:
                self._hold_until = max(self._hold_until, due)
            self._log.info("tmc_http resumed")
        self._paused = None
        self._running.set()

    def _redelivery_due(self) -> float | None:
        """When TMC will have put back every message consumed and not confirmed (its
        confirm timeout after the answer that handed out the last of them), or None when
        nothing is left unconfirmed. A message the pipeline still holds counts as
        unconfirmed: after a step back it was given up."""
        self._prune_batches()
        times = [b.at for b in self._batches if b.open > 0]
        if self._lost_at is not None:
            times.append(self._lost_at)
        if not times:
            return None
        return max(times) + self._config.server_confirm_timeout_s

    def _prune_batches(self) -> None:
        """Forget batches all confirmed, or old enough that TMC has put back the rest."""
        horizon = time.monotonic() - self._config.server_confirm_timeout_s
        while self._batches and (self._batches[0].open <= 0 or self._batches[0].at <= horizon):
            self._batches.popleft()
        if self._lost_at is not None and self._lost_at <= horizon:
            self._lost_at = None

    async def stop_reading(self) -> None:
        """No more consume calls; confirms keep going out until :meth:`close`."""
        self._reading = False
        self._stopping.set()
        self._running.set()  # a paused loop wakes up to end

    async def close(self) -> None:
        await self.stop_reading()
        consume = self._tasks[:1]
        for task in consume:
            task.cancel()
        await asyncio.gather(*consume, return_exceptions=True)
        # Let the confirms already queued out (bounded: one call's timeout and a bit).
        self._confirm_wake.set()
        await _wait(self._confirm_idle, self._config.request_timeout_s + 2.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._confirms:
            self.confirms_dropped += len(self._confirms)
            self._log.warning("tmc_http confirms not sent at close", ids=len(self._confirms))
        self._set_up(False)
        await self._top.aclose()
        self._log.info(
            "tmc_http closed",
            consume_calls=self.consume_calls,
            received=self.received,
            confirms_sent=self.confirms_sent,
            left_for_redelivery=self.left_for_redelivery,
        )

    # -- called by acks (event loop, never blocks) ---------------------------------

    def queue_confirm(self, message_id: int, batch: _Batch | None = None) -> None:
        self._confirms.append((message_id, batch))
        self._confirm_idle.clear()
        self._confirm_wake.set()

    # -- consume -------------------------------------------------------------------

    async def _consume_loop(self) -> None:
        cfg = self._config
        params = {"group_name": cfg.group, "quantity": str(cfg.quantity)}
        idle = Backoff(cfg.idle_backoff_s, cfg.idle_backoff_max_s)
        errors = Backoff(cfg.error_backoff_min_s, cfg.error_backoff_max_s)
        idle_delays, error_delays = idle.delays(), errors.delays()
        while True:
            await self._running.wait()
            if self._stopping.is_set():
                return
            if await self._held():
                continue  # paused or stopped meanwhile? the top of the loop decides
            delay = 0.0
            try:
                taken = await self._consume_once(params)
            except Exception as exc:
                delay = next(error_delays)
                self._call_failed(CONSUME, exc, delay)
            else:
                error_delays = errors.delays()
                if taken:
                    idle_delays = idle.delays()
                else:
                    delay = next(idle_delays)
            if delay > 0:
                await _wait(self._stopping, delay)

    async def _held(self) -> bool:
        """Wait out the hold after a resume (logged once); False when there is none."""
        wait = self._hold_until - time.monotonic()
        if wait <= 0:
            return False
        self.holds += 1
        self._log.info(
            "tmc_http consume held back: TMC's confirm timeout must pass for the messages "
            "left unconfirmed, so that they come back in order",
            in_s=round(wait, 1),
        )
        await _wait(self._stopping, wait)
        return True

    async def _consume_once(self, params: dict[str, str]) -> int:
        """One consume call, its messages handed on; how many it returned."""
        self.consume_calls += 1
        result = await self._top.call(CONSUME, params)
        received_ns = time.monotonic_ns()
        self._call_ok()
        messages, skipped = parse_consume(result, received_ns)
        for item in skipped:
            self._skip(item)
        if not messages:
            return len(skipped)
        self.received += len(messages)
        deadline = time.monotonic() + self._config.max_hold_s
        batch = _Batch(time.monotonic(), len(messages))
        self._prune_batches()
        self._batches.append(batch)
        for index, message in enumerate(messages):
            if not self._reading or self._paused is not None:
                # Not taken, not confirmed: TMC gives them out again after its timeout.
                self.left_for_redelivery += len(messages) - index
                break
            # The group is the message's stream, as for the WebSocket source (same ids).
            message.group = self._config.group
            ack = _Ack(self, message.message_id, deadline, batch)
            await self._submit(Delivery(message, [ack]))
            if message.malformed:
                self._log_malformed(message)
        return len(messages) + len(skipped)

    def _log_malformed(self, message: SourceMessage) -> None:
        self._log.warning(
            "tmc_http message malformed, dead-lettering it",
            message_id=message.message_id,
            topic=message.topic,
            reason=message.malformed,
        )

    def _skip(self, item: Skipped) -> None:
        self._metrics.skipped(METRICS_SOURCE, "unconfirmable")
        self.last_skipped = (time.monotonic(), item.reason[:300])
        self._log.warning("tmc_http message skipped", reason=item.reason, given_id=item.given_id)

    # -- confirm -------------------------------------------------------------------

    async def _confirm_loop(self) -> None:
        linger = self._config.confirm_linger_ms / 1000
        while True:
            await self._confirm_wake.wait()
            self._confirm_wake.clear()
            if linger > 0 and len(self._confirms) < MAX_CONFIRM_IDS:
                # Gather more ids; a close ends the wait early.
                await _wait(self._stopping, linger)
            while self._confirms:
                batch = [
                    self._confirms.popleft()
                    for _ in range(min(MAX_CONFIRM_IDS, len(self._confirms)))
                ]
                if not await self._confirm_batch([message_id for message_id, _ in batch]):
                    self._confirms_lost(batch)
            self._confirm_idle.set()

    def _confirms_lost(self, lost: list[tuple[int, _Batch | None]]) -> None:
        """Confirms given up: those messages come back after TMC's confirm timeout, so a
        resume waits for it (see :meth:`_redelivery_due`)."""
        at = max((b.at for _, b in lost if b is not None), default=time.monotonic())
        self._lost_at = at if self._lost_at is None else max(self._lost_at, at)

    async def _confirm_batch(self, ids: list[int]) -> bool:
        """Confirm ``ids`` (tried ``confirm_attempts`` times); False when given up."""
        cfg = self._config
        params = {"group_name": cfg.group, "s_message_ids": ",".join(map(str, ids))}
        delays = _confirm_delays(cfg)
        for attempt in range(1, cfg.confirm_attempts + 1):
            try:
                self.confirm_calls += 1
                # Idempotent: sent once more at once after a stale keep-alive connection.
                await self._top.call(CONFIRM, params, retry_stale=True)
            except Exception as exc:
                if attempt == cfg.confirm_attempts:
                    self.confirms_dropped += len(ids)
                    self._log.error(
                        "tmc_http confirm given up; the messages will come back",
                        ids=len(ids),
                        attempts=attempt,
                        error=_reason(exc),
                    )
                    return False
                delay = next(delays)
                self._call_failed(CONFIRM, exc, delay, ids=len(ids), attempt=attempt)
                await asyncio.sleep(delay)
            else:
                self.confirms_sent += len(ids)
                self._call_ok()
                return True
        return False

    # -- state and logging ---------------------------------------------------------

    def _call_ok(self) -> None:
        if self._failures:
            self._log.info("tmc_http calls go through again", after_failures=self._failures)
            self._failures = 0
        self.last_error = None
        self._set_up(True)

    def _call_failed(self, method: str, exc: BaseException, delay: float, **fields: object) -> None:
        self.last_error = _reason(exc)
        self._failures += 1
        self.failed_calls += 1
        self._set_up(False)
        self._metrics.reconnect(METRICS_SOURCE, 0)
        retry_in_s = round(delay, 2)
        if isinstance(exc, TopCallError):
            self._log.error(
                "tmc_http call refused", api=method, error=str(exc), retry_in_s=retry_in_s, **fields
            )
        elif isinstance(exc, TopTransportError):
            self._log.warning(
                "tmc_http call failed", api=method, error=str(exc), retry_in_s=retry_in_s, **fields
            )
        else:  # a bug: say so whole, and go on
            self._log.exception(
                "tmc_http call failed unexpectedly", api=method, retry_in_s=retry_in_s, **fields
            )

    def _set_up(self, up: bool) -> None:
        if up != self._up:
            self._metrics.connection_up(METRICS_SOURCE, 0, up)
        self._up = up


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    """Until ``event`` is set or ``timeout_s`` passed. Not ``asyncio.wait_for``: on
    Python 3.11 it can swallow a cancellation that arrives as the event is set, leaving
    a task that was told to stop waiting for ever."""
    if event.is_set():
        return
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout_s)
    finally:
        waiter.cancel()


def _verify(cfg: TmcHttpSourceConfig) -> ssl.SSLContext | bool:
    """httpx's ``verify`` for ``cfg.url``: an unusable ``tls_ca_file`` is a ConfigError
    at start-up (the client is made once, here)."""
    if not cfg.url.lower().startswith("https://"):
        return True
    try:
        return tls.client_context(cfg.tls_ca_file, cfg.tls_verify, section=SECTION)
    except OSError as exc:
        raise ConfigError(str(exc)) from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (TopCallError, TopTransportError)):
        return str(exc)
    return f"internal error: {type(exc).__name__}: {str(exc)[:200]}"


def _confirm_delays(cfg: TmcHttpSourceConfig) -> Iterator[float]:
    # Short: a confirm is only useful before TMC's confirm timeout (about a minute).
    low = min(cfg.error_backoff_min_s, 10.0)
    return Backoff(low, max(low, min(cfg.error_backoff_max_s, 10.0))).delays()
