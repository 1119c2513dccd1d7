"""Reading a ``taobao.tmc.messages.consume`` answer into messages. Pure: no I/O.

Each ``tmc_message`` becomes a :class:`~bridge.model.SourceMessage` (``source="tmc"``: the
same stream as the WebSocket source) or a :class:`Skipped`:

* no usable id (missing, or not an exact int64: a float, a string, a bool) -> Skipped: it
  could never be confirmed, TMC sends it again;
* a good id with a bad other field -> the message, marked ``malformed`` with the first
  problem (the pipeline dead-letters it, then confirms it).

Ids are the ints :func:`json.loads` produced, so ids above 2^53 are exact; nothing here
ever goes through a float.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from bridge.model import SourceMessage
from bridge.sources.tmc.top_sign import parse_timestamp

INT64_MAX: Final = (1 << 63) - 1
_SHOWN: Final = 40


@dataclass(frozen=True, slots=True)
class Skipped:
    """An entry that cannot be confirmed: why, and the id as given (trimmed), if any."""

    reason: str
    given_id: str | None = None


def _shown(value: object) -> str:
    return repr(value)[:_SHOWN]


def _is_int(value: object) -> bool:
    return type(value) is int  # bool is an int subclass: refused, as floats are


def entries(result: Mapping[str, Any]) -> list[Any] | Skipped:
    """The raw ``tmc_message`` entries of a consume result (``[]`` when ``messages`` is
    absent: an empty queue), or one Skipped when the answer has an unreadable shape."""
    messages = result.get("messages")
    if messages is None:
        return []
    if not isinstance(messages, dict):
        return Skipped(f"'messages' is {type(messages).__name__}, not an object")
    items = messages.get("tmc_message")
    if items is None:
        return []
    if isinstance(items, dict):  # a one-element list rendered as its element
        return [items]
    if not isinstance(items, list):
        return Skipped(f"'tmc_message' is {type(items).__name__}, not a list")
    return items


def message_id(entry: Mapping[str, Any]) -> int | Skipped:
    raw = entry.get("id")
    if raw is None:
        return Skipped("message without an id: it could never be confirmed")
    if not _is_int(raw):
        kind = type(raw).__name__
        return Skipped(
            f"message id is a {kind}, not an integer: it cannot be confirmed", _shown(raw)
        )
    if not 0 <= raw <= INT64_MAX:
        return Skipped("message id is out of the int64 range", _shown(raw))
    value: int = raw
    return value


def to_message(entry: object, received_ns: int = 0) -> SourceMessage | Skipped:
    """One ``tmc_message`` entry -> a message (maybe malformed) or Skipped."""
    if not isinstance(entry, dict):
        return Skipped(f"entry is {type(entry).__name__}, not an object")
    msg_id = message_id(entry)
    if isinstance(msg_id, Skipped):
        return msg_id
    problems: list[str] = []

    def text(key: str) -> str | None:
        value = entry.get(key)
        if value is None or isinstance(value, str):
            return value
        if _is_int(value):  # an app key or nick rendered as a number
            return str(value)
        problems.append(f"field {key!r} is a {type(value).__name__}, not a string")
        return None

    topic = text("topic")
    if not topic:
        problems.append("message without a topic")
        topic = "unknown"
    content = b""
    raw_content = entry.get("content")
    if isinstance(raw_content, str):
        try:
            content = raw_content.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
            problems.append("content is not valid Unicode (a lone surrogate)")
            content = raw_content.encode("utf-8", "replace")
    elif raw_content is None:
        problems.append("message without content")
    else:
        problems.append(f"field 'content' is a {type(raw_content).__name__}, not a string")
    publish_ms = None
    pub_time = text("pub_time")
    if pub_time is not None:
        try:
            publish_ms = round(parse_timestamp(pub_time) * 1000)
        except (ValueError, OverflowError, OSError):
            problems.append(f"field 'pub_time' {_shown(pub_time)} is not yyyy-MM-dd HH:mm:ss")
    user_id = entry.get("user_id")
    if user_id is not None and not (_is_int(user_id) and -INT64_MAX - 1 <= user_id <= INT64_MAX):
        problems.append(f"field 'user_id' {_shown(user_id)} is not an int64")
        user_id = None
    return SourceMessage(
        source="tmc",
        message_id=msg_id,
        topic=topic,
        content=content,
        publish_time_ms=publish_ms,
        publisher=text("pub_app_key") or None,
        user_id=user_id,
        nick=text("user_nick"),
        malformed=problems[0] if problems else None,
        received_ns=received_ns,
    )


def parse_consume(
    result: Mapping[str, Any], received_ns: int = 0
) -> tuple[list[SourceMessage], list[Skipped]]:
    """A consume result (the body of ``tmc_messages_consume_response``) -> the messages
    to hand on, in order, and the entries skipped."""
    raw = entries(result)
    if isinstance(raw, Skipped):
        return [], [raw]
    messages: list[SourceMessage] = []
    skipped: list[Skipped] = []
    for entry in raw:
        out = to_message(entry, received_ns)
        if isinstance(out, Skipped):
            skipped.append(out)
        else:
            messages.append(out)
    return messages, skipped
