"""Records that travel through the bridge, and the acknowledgement handle of a delivery.

A source turns what it receives into a :class:`SourceMessage` and hands the pipeline a
:class:`Delivery`: the message plus an :class:`Ack`. The pipeline calls exactly one of
``ack.confirm()`` (the message is durably in the sink) or ``ack.fail(reason)`` (retryable,
please redeliver). It never confirms what the sink did not commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


# Not frozen: a frozen dataclass pays object.__setattr__ per field on every message,
# which showed up in profiles. Treat instances as immutable all the same.
@dataclass(slots=True)
class SourceMessage:
    """One business event as received, independent of the source protocol.

    Ids are exact Python ints (TMC ids exceed 2^53). ``content`` is the JSON text as the
    bytes received, never decoded and re-encoded (gzip ByteArray content is already
    inflated), so what reaches the sink is byte for byte what the source sent.
    """

    source: str
    message_id: int
    topic: str
    content: bytes
    publish_time_ms: int | None = None
    publisher: str | None = None
    user_id: int | None = None
    nick: str | None = None
    data_id: int | None = None
    #: Set when the source could not decode the payload; the pipeline dead-letters it.
    malformed: str | None = None
    #: time.monotonic_ns() when the bridge received it, for push->confirm latency.
    received_ns: int = 0
    #: Source-specific metadata copied into the output headers (e.g. the ONS message id).
    extra_headers: tuple[tuple[str, bytes], ...] = ()
    #: The TMC group it came through (None for other sources): selects the group's own
    #: routes, is written as the ``tmc.group`` header, and scopes the id (see
    #: :func:`stream_key`).
    group: str | None = None


def stream_key(msg: SourceMessage) -> tuple[str, int]:
    """The message's identity across redeliveries: ``(stream, id)``. Ids are unique within
    a stream: the source, and for a TMC message its group (``tmc@vip``), because nothing
    promises TMC ids unique across an app's groups."""
    if msg.group is None:
        return (msg.source, msg.message_id)
    return (f"{msg.source}@{msg.group}", msg.message_id)


class Ack(Protocol):
    """Settles one delivery with its source. Both calls must not block the event loop."""

    def confirm(self) -> None: ...

    def fail(self, reason: str) -> None: ...

    def alive(self) -> bool:
        """False once the source will redeliver this delivery whatever the bridge does
        (its connection is gone, or it was held past the source's confirm deadline): the
        redelivery may reach another replica, so writing it now could write it twice."""
        ...


@dataclass(slots=True)
class Delivery:
    """A message plus the handles that settle it. Redeliveries of a message still in
    flight are folded into the first delivery as extra acks (see the pipeline)."""

    message: SourceMessage
    acks: list[Ack] = field(default_factory=list)


@dataclass(slots=True)
class OutRecord:
    """What a sink writes: topic, key, value bytes and headers, plus the delivery it settles."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    dead_letter_reason: str | None = None
