"""ONS source: Jushita message sync (or any RocketMQ topic carrying the same bodies).

A clustering push consumer of :mod:`bridge.rocketmq.client` reads the topics; each message
is mapped onto the :class:`~bridge.model.SourceMessage` the TMC source produces
(docs/ons.md §3, §7), so routing, keys and dead-lettering work the same.

**Acknowledge after the sink.** librocketmq calls the handler on one of its consumer
threads and takes the return value as the verdict. The handler hands the delivery to the
pipeline on the event loop and *waits* for its ack: confirmed (committed downstream, or
dead-lettered) -> CONSUME_SUCCESS; failed, or the bridge shuts down first ->
RECONSUME_LATER, so the broker redelivers it (concurrent mode: after 10 s, 30 s, ...;
orderly mode: the queue is retried locally). Each consumer thread holds one message, so
``consume_threads`` bounds the messages in flight.

Body mapping: ``outgoing_id`` -> message id (the TMC id; stable across broker retries),
``publish_time`` -> publish time (epoch ms), ``publisher_appkey`` -> publisher,
``user_id``/``user_nick`` -> seller, ``content`` -> content (a JSON text; an object is
serialised back to text). The RocketMQ message key (the order id for trade events) is the
``dataid`` fallback key (``routing.missing_key: dataid``). A body that is not a JSON object
with ``topic`` and ``content`` is marked malformed and dead-lettered, then acknowledged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
import time

import structlog

from bridge.headers import (
    H_ONS_BORN,
    H_ONS_KEYS,
    H_ONS_MSG_ID,
    H_ONS_QUEUE,
    H_ONS_RECONSUME,
    H_ONS_TAGS,
)
from bridge.json_depth import json_too_deep
from bridge.model import Delivery, SourceMessage
from bridge.numbers import INT64_MAX, MAX_TIME_MS, decimal_int64
from bridge.observability.metrics import Metrics
from bridge.pipeline.ports import Source, Submit
from bridge.rocketmq import client as sdk
from bridge.sources.ons_config import OnsSourceConfig

log = structlog.get_logger("bridge.source.ons")

SOURCE = "ons"


#: Nesting the body itself may have before it is parsed (content nests one level deeper
#: than its own depth); routing.max_json_depth then applies to the content.
_MAX_BODY_DEPTH = 501


class _BadBody(ValueError):
    """The body cannot be mapped; the text is the dead-letter reason."""


def _int(value: object, name: str) -> int | None:
    """An integer field: a JSON integer, or a string of ASCII digits (as
    :func:`~bridge.numbers.decimal_int64` reads it), within int64 and not negative."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX:
        return value
    if isinstance(value, str):
        number = decimal_int64(value.strip())
        if number is not None:
            return number
    raise _BadBody(f"ONS body field {name!r} is {str(value)[:40]!r}, not an int64")


def _fallback_id(msg: sdk.InMessage) -> int:
    """The RocketMQ message id (UNIQ_KEY, hex) as an int: stable across broker retries."""
    try:
        return int(msg.msg_id[:64], 16)
    except ValueError:
        return int.from_bytes(msg.msg_id.encode()[:16], "big")


def to_source_message(msg: sdk.InMessage) -> SourceMessage:
    """Map one Jushita sync message; never raises (problems become ``malformed``, and
    the message is dead-lettered with the whole body as its value)."""
    extra = (
        (H_ONS_MSG_ID, msg.msg_id.encode()),
        (H_ONS_TAGS, msg.tags.encode()),
        (H_ONS_KEYS, msg.keys.encode()),
        (H_ONS_RECONSUME, str(msg.reconsume_times).encode()),
        (H_ONS_QUEUE, f"{msg.topic}:{msg.queue_id}:{msg.queue_offset}".encode()),
        (H_ONS_BORN, str(msg.born_timestamp).encode()),
    )
    keys = msg.keys.split()
    first_key = keys[0] if keys else ""
    base = SourceMessage(
        source=SOURCE,
        message_id=_fallback_id(msg),
        topic=msg.tags or "unknown",
        content=msg.body,
        received_ns=time.monotonic_ns(),
        extra_headers=extra,
    )
    # The message key is only a fallback routing key: one that is no int64 is ignored.
    with contextlib.suppress(_BadBody):
        base.data_id = _int(first_key or None, "keys")
    try:
        _map_body(msg.body, base)
    except _BadBody as exc:
        base.malformed = str(exc)
    except Exception as exc:
        # Not reached by any input the tests know of; should one get here, the message
        # is still dead-lettered and acknowledged instead of coming back forever.
        log.exception("ONS body could not be mapped", msg_id=msg.msg_id)
        base.malformed = f"ONS body could not be mapped: {type(exc).__name__}: {exc}"[:300]
    if base.malformed:
        # The dead letter carries the body as received, not a partial mapping.
        base.content = msg.body
    return base


def _map_body(raw: bytes, base: SourceMessage) -> None:
    if json_too_deep(raw, _MAX_BODY_DEPTH):
        raise _BadBody(f"ONS body nests deeper than {_MAX_BODY_DEPTH} levels")
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _BadBody(f"ONS body is not valid UTF-8 (at offset {exc.start})") from None
    except ValueError as exc:
        raise _BadBody(f"ONS body is not JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise _BadBody("ONS body is not a JSON object")
    topic, content = body.get("topic"), body.get("content")
    if not isinstance(topic, str) or not topic:
        raise _BadBody("ONS body has no 'topic'")
    if not topic.isascii():
        try:
            topic.encode("utf-8")
        except UnicodeEncodeError:
            raise _BadBody("ONS body 'topic' holds a lone surrogate, not text") from None
    base.topic = topic
    if isinstance(content, dict | list):
        content = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    if not isinstance(content, str):
        raise _BadBody("ONS body has no 'content' text")
    try:
        base.content = content.encode("utf-8")
    except UnicodeEncodeError:
        # JSON may escape a lone surrogate ("\ud800"); no UTF-8 text can hold it.
        raise _BadBody("ONS body 'content' holds a lone surrogate, not text") from None
    outgoing = _int(body.get("outgoing_id"), "outgoing_id")
    if outgoing is not None:
        base.message_id = outgoing
    publish_time = _int(body.get("publish_time"), "publish_time")
    if publish_time is not None and publish_time > MAX_TIME_MS:
        raise _BadBody(f"ONS body field 'publish_time' is {publish_time}, not a date")
    base.publish_time_ms = publish_time
    publisher = body.get("publisher_appkey")
    base.publisher = None if publisher is None else str(publisher)[:200]
    base.user_id = _int(body.get("user_id"), "user_id")
    nick = body.get("user_nick")
    base.nick = nick if isinstance(nick, str) else None


class _WaitingAck:
    """The :class:`~bridge.pipeline.ports.Ack` of one message: settled on the event loop,
    awaited on a librocketmq consumer thread."""

    __slots__ = ("done", "ok", "reason")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False
        self.reason = ""

    def alive(self) -> bool:
        # The push consumer holds the message until this ack settles it (its consume
        # timeout is minutes, and a redelivery goes to this same consumer).
        return True

    def confirm(self) -> None:
        self.ok = True
        self.done.set()

    def fail(self, reason: str) -> None:
        self.reason = reason
        self.done.set()


def _release_on_error(future: concurrent.futures.Future[None], ack: _WaitingAck) -> None:
    if future.cancelled():
        ack.fail("submit cancelled")
        return
    error = future.exception()
    if error is not None:
        log.error("ons delivery could not be submitted", error=repr(error)[:300])
        ack.fail(f"submit failed: {type(error).__name__}")


class OnsSource(Source):
    """Push consumer -> pipeline; the consumer's verdict waits for the pipeline's ack."""

    def __init__(self, config: OnsSourceConfig, submit: Submit, *, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self._metrics.connection_up("ons", 0, False)
        self._started = False
        self._start_error: str | None = None
        self._submit = submit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: sdk.PushConsumer | None = None
        self._waiting: set[_WaitingAck] = set()
        self._lock = threading.Lock()
        self._reading = False
        self._starting: asyncio.Task[None] | None = None
        self.received = 0
        self.consumed = 0
        self.reconsume_later = 0
        self._last_malformed: tuple[float, str] | None = None
        self._paused: str | None = None

    @property
    def logged_in(self) -> bool:
        return self._started and self._reading

    def problem(self) -> str | None:
        if self._paused is not None:
            return f"ons consumer held back while the sink is unavailable ({self._paused})"
        if self.logged_in:
            return None
        if self._start_error is not None:
            return f"ons consumer did not start: {self._start_error}"
        return "ons consumer not started"

    def notes(self) -> list[str]:
        """What /readyz adds while ready: the last body that could not be mapped."""
        if self._last_malformed is None:
            return []
        at, reason = self._last_malformed
        return [f"ons dead-lettered a malformed body {time.monotonic() - at:.0f} s ago ({reason})"]

    def start(self) -> None:
        """Create, subscribe and start the consumer (the blocking start runs off-loop)."""
        cfg = self._config
        self._loop = asyncio.get_running_loop()
        settings = sdk.ClientSettings(
            name_server=cfg.name_server,
            name_server_domain=cfg.name_server_domain,
            credentials=cfg.credentials("source.ons.secret_key_file"),
            instance_name=cfg.instance_name or sdk.default_instance_name(cfg.group_id),
        )
        consumer = sdk.PushConsumer(
            cfg.group_id, settings, orderly=cfg.orderly, threads=cfg.consume_threads
        )
        for topic in cfg.topics:
            consumer.subscribe(topic, cfg.tag_expression, self._handle)
        self._consumer = consumer
        self._reading = True
        self._starting = asyncio.create_task(self._start(consumer))

    async def _start(self, consumer: sdk.PushConsumer) -> None:
        try:
            await asyncio.to_thread(consumer.start)
        except Exception as exc:
            # Nothing is consumed, so nothing can be acknowledged wrongly; say why loudly.
            log.error("ons consumer did not start", group=self._config.group_id, error=str(exc))
            self._start_error = str(exc)
            raise
        self._started = True
        self._metrics.connection_up("ons", 0, True)
        log.info(
            "ons consumer started",
            group=self._config.group_id,
            topics=self._config.topics,
            orderly=self._config.orderly,
            channel=self._config.channel,
        )

    def _handle(self, msg: sdk.InMessage) -> bool:
        """Consumer thread: True only once the pipeline confirmed the delivery."""
        loop = self._loop
        ack = _WaitingAck()
        with self._lock:
            # Checked under the lock that close() takes, so no handler can start
            # waiting after close() released the waiting ones.
            if not self._reading or loop is None:
                return False
            self._waiting.add(ack)
            self.received += 1
        try:
            message = to_source_message(msg)
            if message.malformed:
                self._last_malformed = (time.monotonic(), message.malformed[:300])
                log.warning("malformed ONS message", msg_id=msg.msg_id, reason=message.malformed)
            delivery = Delivery(message, [ack])
            future = asyncio.run_coroutine_threadsafe(self._submit_one(delivery), loop)
            # Should submit itself fail (a bug), this thread must not wait forever for
            # an ack that will never come: RECONSUME_LATER, and the failure is logged.
            future.add_done_callback(lambda f: _release_on_error(f, ack))
            ack.done.wait()
        finally:
            with self._lock:
                self._waiting.discard(ack)
                if ack.ok:
                    self.consumed += 1
                else:
                    self.reconsume_later += 1
        return ack.ok

    async def _submit_one(self, delivery: Delivery) -> None:
        # Submit may return any awaitable; run_coroutine_threadsafe needs a coroutine.
        await self._submit(delivery)

    def pause(self, reason: str) -> None:
        """Reported only. The consumer stays started: its threads already wait on the
        pipeline's back-pressure, so it pulls nothing more, and the broker keeps the rest
        in order; answering RECONSUME_LATER instead would move messages to the retry
        topic (out of order, and to the dead-letter queue after 16 tries)."""
        if self._paused is None:
            log.warning("sink unavailable: ons consumer held by back-pressure", reason=reason)
        self._paused = reason

    def resume(self) -> None:
        self._paused = None

    async def stop_reading(self) -> None:
        """Hand nothing new to the pipeline; what it holds can still be confirmed."""
        self._reading = False

    async def close(self) -> None:
        """Release every waiting handler as RECONSUME_LATER, then shut the consumer down."""
        with self._lock:
            self._reading = False
            waiting = list(self._waiting)
        for ack in waiting:
            ack.fail("bridge shutting down")
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
        consumer, self._consumer = self._consumer, None
        self._started = False
        self._metrics.connection_up("ons", 0, False)
        if consumer is not None:
            await asyncio.to_thread(consumer.shutdown)
        log.info(
            "ons consumer stopped",
            received=self.received,
            consumed=self.consumed,
            reconsume_later=self.reconsume_later,
        )
