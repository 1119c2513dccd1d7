"""Turn a :class:`SourceMessage` into the :class:`OutRecord` a sink writes. Pure, no I/O.

* Topic: the first glob in ``routing.topics`` that matches the TMC topic (a TMC group
  listed under ``routing.groups`` uses its own routes instead).
* Key: the first field of the first matching ``routing.keys`` pattern that is present in
  the JSON content, as a decimal string (ids are exact ints: ``json.loads`` never makes
  a float of an integer literal, docs/protocol.md §13.3). A topic that matches no
  key pattern is sent unkeyed; a topic that matches one but lacks every field follows
  ``routing.missing_key``.
* Permanent problems (content not JSON or not UTF-8 where the key must be read from it,
  nested deeper than ``routing.max_json_depth``, a missing key under ``dead_letter``, no
  route, or whatever the source marked malformed) produce a record for the dead-letter
  topic carrying the reason in a header. Content that needs no parsing is forwarded as
  the bytes received.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from bridge.headers import (
    H_DLQ_REASON,
    H_DLQ_TARGET,
    H_DLQ_TRUNCATED,
    H_GROUP,
    H_MESSAGE_ID,
    H_PUBLISH_TIME,
    H_PUBLISHER,
    H_TOPIC,
    H_USER_ID,
)
from bridge.json_depth import json_too_deep
from bridge.model import OutRecord, SourceMessage

if TYPE_CHECKING:
    # A type only: the config package (YAML, the registry) is not loaded for it.
    from bridge.config import RoutingConfig


def _matcher(patterns: list[str]) -> Callable[[str], int | None]:
    compiled = [re.compile(fnmatch.translate(p)) for p in patterns]

    def first(topic: str) -> int | None:
        for i, rx in enumerate(compiled):
            if rx.match(topic):
                return i
        return None

    return first


class Router:
    """Routes and keys messages; results per TMC topic are cached (few distinct topics)."""

    def __init__(self, config: RoutingConfig, *, envelope: bool = False) -> None:
        self._config = config
        self._envelope = envelope
        self._topic_targets = list(config.topics.values())
        self._key_fields = list(config.keys.values())
        self._match_topic = _matcher(list(config.topics))
        self._match_key = _matcher(list(config.keys))
        self._cache: dict[str, tuple[str | None, list[str] | None]] = {}
        #: A TMC group's own routes (``routing.groups``), by group name.
        self._by_group = {
            group: Router(config.for_group(group), envelope=envelope) for group in config.groups
        }

    def _rules(self, topic: str) -> tuple[str | None, list[str] | None]:
        rules = self._cache.get(topic)
        if rules is None:
            if len(self._cache) >= _RULE_CACHE_MAX:
                # A source sending ever new topic names must not grow this without end.
                self._cache.clear()
            ti = self._match_topic(topic)
            ki = self._match_key(topic)
            rules = (
                None if ti is None else self._topic_targets[ti],
                None if ki is None else self._key_fields[ki],
            )
            self._cache[topic] = rules
        return rules

    def route(self, msg: SourceMessage) -> OutRecord:
        """The record for ``msg``; a dead letter with the reason when it cannot be routed.

        The content is parsed only where the key must be read from it; otherwise it is
        forwarded as received, whatever it holds. Never raises for any content.
        """
        own = self._by_group.get(msg.group) if self._by_group and msg.group else None
        return (own or self)._route(msg)

    def _route(self, msg: SourceMessage) -> OutRecord:
        headers = _headers(msg)
        target, key_fields = self._rules(msg.topic)
        raw = msg.content
        if msg.malformed:
            return self._dead(raw, headers, msg.malformed, target, None)
        if target is None:
            return self._dead(raw, headers, f"no route for topic {msg.topic}", None, None)
        key: bytes | None = None
        if key_fields is not None:
            key, problem = self._key_of(msg, key_fields)
            if problem:
                return self._dead(raw, headers, problem, target, None)
        value = raw
        if self._envelope:
            try:
                value = _envelope(msg)
            except UnicodeDecodeError as exc:
                return self._dead(raw, headers, _utf8_problem(exc), target, key)
            except UnicodeEncodeError:
                return self._dead(raw, headers, "a text field holds a lone surrogate", target, key)
        return OutRecord(topic=target, key=key, value=value, headers=headers)

    def _key_of(self, msg: SourceMessage, key_fields: list[str]) -> tuple[bytes | None, str]:
        """The record key read from the content, or the reason there is none."""
        body, problem = _parse(msg.content, self._config.max_json_depth)
        if body is None:
            return None, problem
        key_text, problem = _key(body, key_fields)
        if key_text is None:
            policy = self._config.missing_key
            if policy == "dataid" and msg.data_id is not None:
                key_text = str(msg.data_id)
            elif policy == "userid" and msg.user_id is not None:
                key_text = str(msg.user_id)
            elif policy != "unkeyed":
                return None, problem
        return (None if key_text is None else key_text.encode()), ""

    def last_resort(self, msg: SourceMessage, reason: str) -> OutRecord:
        """A dead letter built from nothing but the message id and the content bytes, for
        when :meth:`route` itself failed: it cannot fail in turn."""
        headers = ((H_MESSAGE_ID, str(msg.message_id).encode()),)
        return self._dead(bytes(msg.content), headers, reason, None, None)

    def dead_letter(self, record: OutRecord, reason: str) -> OutRecord:
        """The dead-letter twin of a record the sink refused (e.g. too large)."""
        if record.dead_letter_reason is not None:
            # A dead letter refused in its turn (the dead-letter topic accepts less than
            # dead_letter_max_value_bytes): keep key and headers, which carry the reason and
            # the message id, and drop the value. An empty value is refused no further.
            if not record.value:
                return record
            headers = tuple(h for h in record.headers if h[0] != H_DLQ_TRUNCATED)
            return OutRecord(
                topic=record.topic,
                key=record.key,
                value=b"",
                headers=(*headers, (H_DLQ_TRUNCATED, b"true")),
                dead_letter_reason=record.dead_letter_reason,
            )
        return self._dead(record.value, record.headers, reason, record.topic, record.key)

    def _dead(
        self,
        value: bytes,
        headers: tuple[tuple[str, bytes], ...],
        reason: str,
        target: str | None,
        key: bytes | None,
    ) -> OutRecord:
        limit = self._config.dead_letter_max_value_bytes
        extra = [(H_DLQ_REASON, reason.encode("utf-8", "replace")[:1024])]
        if target is not None:
            extra.append((H_DLQ_TARGET, _utf8(target)))
        if len(value) > limit:
            value = value[:limit]
            extra.append((H_DLQ_TRUNCATED, b"true"))
        return OutRecord(
            topic=self._config.dead_letter_topic,
            key=key,
            value=value,
            headers=headers + tuple(extra),
            dead_letter_reason=reason,
        )


_RULE_CACHE_MAX = 10_000
#: Keys are order, refund and item ids: non-negative, at most 20 digits (uint64).
_KEY_MAX_CHARS = 20
_KEY_LIMIT = 10**_KEY_MAX_CHARS


def _utf8_problem(exc: UnicodeDecodeError) -> str:
    return f"content is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"


def _parse(raw: bytes, max_depth: int) -> tuple[dict[str, object] | None, str]:
    """The content as a JSON object, or None and why not."""
    if json_too_deep(raw, max_depth):
        return None, f"content nests deeper than routing.max_json_depth ({max_depth})"
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return None, _utf8_problem(exc)
    except ValueError as exc:  # JSONDecodeError, and int literals over 4,300 digits
        return None, f"content is not JSON: {str(exc)[:200]}"
    except RecursionError:
        return None, "content nests too deep to parse"
    if not isinstance(body, dict):
        return None, "content is not a JSON object"
    return body, ""


def _key(body: dict[str, object], fields: list[str]) -> tuple[str | None, str]:
    for name in fields:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            if 0 <= value < _KEY_LIMIT:
                return str(value), ""
            return None, f"key field {name!r} is {str(value)[:40]}, not an id (0 ≤ id < 10^20)"
        if isinstance(value, str):
            text = value.strip()
            # ASCII only: str.isdigit() is also true for "²" and other Unicode digits.
            if 0 < len(text) <= _KEY_MAX_CHARS and text.isascii() and text.isdigit():
                return text, ""
            return None, f"key field {name!r} is the string {text[:40]!r}, not an integer id"
        return None, f"key field {name!r} is a {type(value).__name__}, not an integer id"
    return None, f"none of the key fields {fields} is in the content"


def _utf8(text: str) -> bytes:
    # "replace": a lone surrogate (JSON can escape one) must not make a header unwritable.
    return text.encode("utf-8", "replace")


def _headers(msg: SourceMessage) -> tuple[tuple[str, bytes], ...]:
    headers = [(H_TOPIC, _utf8(msg.topic)), (H_MESSAGE_ID, str(msg.message_id).encode())]
    if msg.user_id is not None:
        headers.append((H_USER_ID, str(msg.user_id).encode()))
    if msg.publish_time_ms is not None:
        headers.append((H_PUBLISH_TIME, str(msg.publish_time_ms).encode()))
    if msg.publisher:
        headers.append((H_PUBLISHER, _utf8(msg.publisher)))
    if msg.group is not None:
        headers.append((H_GROUP, _utf8(msg.group)))
    headers.extend(msg.extra_headers)
    return tuple(headers)


def _envelope(msg: SourceMessage) -> bytes:
    """JSON envelope; ids as strings so JavaScript and other double-based readers keep them."""
    doc = {
        "topic": msg.topic,
        "id": str(msg.message_id),
        "user_id": None if msg.user_id is None else str(msg.user_id),
        "nick": msg.nick,
        "publish_time_ms": msg.publish_time_ms,
        "publisher": msg.publisher,
        "data_id": None if msg.data_id is None else str(msg.data_id),
        "content": msg.content.decode("utf-8"),
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
