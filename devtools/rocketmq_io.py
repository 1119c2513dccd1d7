"""Jushita-style publishing and read-back for a local RocketMQ (tests, demo, benchmark).

* :class:`JushitaPublisher` writes what Jushita's message sync writes
  (docs/ons.md §3.4): a JSON body ``{topic, content (JSON text), outgoing_id,
  publish_time, user_id, user_nick, publisher_appkey}``, tag = the TMC topic, key = the
  business id. It returns a ledger in the simulator's format, so the same checks apply.
* :func:`read_topics` consumes topics from the beginning with a fresh consumer group
  and returns :class:`~devtools.harness.Arrived` records (queue id as partition,
  queue offset as offset), so per-order queue placement and order can be checked.

Both go through :mod:`bridge.rocketmq.client`, like the bridge itself.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from bridge.errors import RocketMQSendError
from bridge.headers import H_MESSAGE_ID
from bridge.rocketmq import client as sdk
from bridge.sources.tmc.generator import TAOBAO_PUBLISHER, Event
from devtools.harness import Arrived

#: Jushita's outgoing ids are TMC ids, above 2^53 (docs/ons.md §3.2).
FIRST_OUTGOING_ID = 5_100_407_799_000_000_000


def jushita_body(event: Event, outgoing_id: int, publish_time_ms: int) -> bytes:
    doc: dict[str, Any] = {
        "topic": event.topic,
        "outgoing_id": outgoing_id,
        "publish_time": publish_time_ms,
        "user_id": event.user_id,
        "user_nick": event.nick,
        "publisher_appkey": TAOBAO_PUBLISHER,
        "content": event.content,
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


class JushitaPublisher:
    """Publishes generated events the way Jushita's sync service does."""

    def __init__(
        self,
        name_server: str,
        topic: str,
        *,
        credentials: tuple[str, str, str] | None = None,
        group: str = "jushita_sim",
    ) -> None:
        self.topic = topic
        settings = sdk.ClientSettings(name_server, None, credentials, instance_name=group)
        self._producer = sdk.Producer(
            group, settings, send_timeout_ms=5000, max_message_bytes=4 * 1024 * 1024
        )
        self._producer.start()
        self._next_id = FIRST_OUTGOING_ID

    def publish(self, events: list[Event], *, by_key: bool = False) -> list[dict[str, Any]]:
        """Send ``events``; ``by_key`` shards by business id (queue order = event order)."""
        ledger = []
        for event in events:
            self._next_id += 1
            body = jushita_body(event, self._next_id, int(time.time() * 1000))
            self.publish_raw(body, tags=event.topic, key=str(event.key), by_key=by_key)
            ledger.append({"id": str(self._next_id), "key": str(event.key), "topic": event.topic})
        return ledger

    def publish_raw(self, body: bytes, *, tags: str, key: str, by_key: bool = False) -> None:
        msg = sdk.OutMessage(self.topic, body, tags, [key], ())
        deadline = time.monotonic() + 30
        while True:
            try:
                self._producer.send(msg, key if by_key else None)
                return
            except RocketMQSendError:
                # A fresh topic's route reaches the client a moment after creation.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def close(self) -> None:
        self._producer.shutdown()


def read_topics(
    name_server: str,
    topics: list[str],
    *,
    expected: int,
    timeout_s: float = 60.0,
    settle_s: float = 2.0,
    credentials: tuple[str, str, str] | None = None,
) -> list[Arrived]:
    """Consume ``topics`` from the start until ``expected`` records arrived and nothing
    new came for ``settle_s`` (to catch duplicates), or ``timeout_s`` passed."""
    group = f"verify_{time.monotonic_ns()}"
    settings = sdk.ClientSettings(name_server, None, credentials, instance_name=group)
    consumer = sdk.PushConsumer(
        group, settings, orderly=False, threads=4, property_names=(H_MESSAGE_ID,)
    )
    got: list[Arrived] = []
    lock = threading.Lock()
    last = [time.monotonic()]

    def handle(msg: sdk.InMessage) -> bool:
        raw_id = msg.properties.get(H_MESSAGE_ID, "")
        keys = msg.keys.split()
        key = keys[0] if len(keys) > 1 else None
        with lock:
            got.append(
                Arrived(
                    topic=msg.topic,
                    partition=msg.queue_id,
                    offset=msg.queue_offset,
                    key=key.encode() if key else None,
                    message_id=int(raw_id) if raw_id.isdigit() else -1,
                )
            )
            last[0] = time.monotonic()
        return True

    for topic in topics:
        consumer.subscribe(topic, "*", handle)
    consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with lock:
                enough = len(got) >= expected and time.monotonic() - last[0] > settle_s
            if enough:
                break
            time.sleep(0.2)
    finally:
        consumer.shutdown()
    with lock:
        return list(got)
