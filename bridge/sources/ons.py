"""ONS source: Jushita message sync (or any RocketMQ topic carrying the same bodies).

A clustering push consumer of :mod:`bridge.rocketmq_sdk` reads the topics; each message
is mapped onto the :class:`~bridge.model.SourceMessage` the TMC source produces
(shared/jushita-ons.md §3, §7), so routing, keys and dead-lettering work the same.

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
import json
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from bridge import rocketmq_sdk as sdk
from bridge.config import OnsSourceConfig
from bridge.model import Delivery, SourceMessage
from bridge.observability.metrics import Metrics

log = structlog.get_logger("bridge.source.ons")

SOURCE = "ons"
H_ONS_MSG_ID = "ons.msg_id"
H_ONS_TAGS = "ons.tags"
H_ONS_KEYS = "ons.keys"
H_ONS_RECONSUME = "ons.reconsume_times"
H_ONS_QUEUE = "ons.queue"
H_ONS_BORN = "ons.born_timestamp"


def _int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _fallback_id(msg: sdk.InMessage) -> int:
    """The RocketMQ message id (UNIQ_KEY, hex) as an int: stable across broker retries."""
    try:
        return int(msg.msg_id, 16)
    except ValueError:
        return int.from_bytes(msg.msg_id.encode()[:16], "big")


def to_source_message(msg: sdk.InMessage) -> SourceMessage:
    """Map one Jushita sync message; never raises (problems become ``malformed``)."""
    extra = (
        (H_ONS_MSG_ID, msg.msg_id.encode()),
        (H_ONS_TAGS, msg.tags.encode()),
        (H_ONS_KEYS, msg.keys.encode()),
        (H_ONS_RECONSUME, str(msg.reconsume_times).encode()),
        (H_ONS_QUEUE, f"{msg.topic}:{msg.queue_id}:{msg.queue_offset}".encode()),
        (H_ONS_BORN, str(msg.born_timestamp).encode()),
    )
    first_key = msg.keys.split()[0] if msg.keys.split() else ""
    base = SourceMessage(
        source=SOURCE,
        message_id=_fallback_id(msg),
        topic=msg.tags or "unknown",
        content=msg.body.decode("utf-8", "replace"),
        data_id=_int(first_key),
        received_ns=time.monotonic_ns(),
        extra_headers=extra,
    )
    try:
        body = json.loads(msg.body)
    except ValueError as exc:  # includes invalid UTF-8
        base.malformed = f"ONS body is not JSON: {exc}"
        return base
    if not isinstance(body, dict):
        base.malformed = "ONS body is not a JSON object"
        return base
    topic, content = body.get("topic"), body.get("content")
    if not isinstance(topic, str) or not topic:
        base.malformed = "ONS body has no 'topic'"
        return base
    base.topic = topic
    if isinstance(content, str):
        base.content = content
    elif isinstance(content, dict | list):
        base.content = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    else:
        base.malformed = "ONS body has no 'content' text"
        return base
    outgoing = _int(body.get("outgoing_id"))
    if outgoing is not None:
        base.message_id = outgoing
    base.publish_time_ms = _int(body.get("publish_time"))
    publisher = body.get("publisher_appkey")
    base.publisher = None if publisher is None else str(publisher)
    base.user_id = _int(body.get("user_id"))
    nick = body.get("user_nick")
    base.nick = nick if isinstance(nick, str) else None
    return base


class _WaitingAck:
    """Settled on the event loop, awaited on a librocketmq consumer thread."""

    __slots__ = ("done", "ok", "reason")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False
        self.reason = ""

    def confirm(self) -> None:
        self.ok = True
        self.done.set()

    def fail(self, reason: str) -> None:
        self.reason = reason
        self.done.set()


class OnsSource:
    """Push consumer -> pipeline; the consumer's verdict waits for the pipeline's ack."""

    def __init__(
        self,
        config: OnsSourceConfig,
        submit: Callable[[Delivery], Coroutine[Any, Any, None]],
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics or Metrics()
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

    @property
    def logged_in(self) -> bool:
        return self._started and self._reading

    def problem(self) -> str | None:
        if self.logged_in:
            return None
        if self._start_error is not None:
            return f"ons consumer did not start: {self._start_error}"
        return "ons consumer not started"

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
                log.warning("malformed ONS message", msg_id=msg.msg_id, reason=message.malformed)
            asyncio.run_coroutine_threadsafe(self._submit(Delivery(message, [ack])), loop)
            ack.done.wait()
        finally:
            with self._lock:
                self._waiting.discard(ack)
                if ack.ok:
                    self.consumed += 1
                else:
                    self.reconsume_later += 1
        return ack.ok

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
