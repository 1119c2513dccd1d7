"""The ports: what the pipeline needs of a source, a sink and a committed-ids store.

Every adapter is written against these and nothing else of the engine:

* a **source** hands the pipeline :class:`~bridge.model.Delivery` objects through a
  :data:`Submit` callable and settles each through its :class:`Ack`;
* a **sink** writes one :class:`Batch` at a time and answers with the records it refused
  for good (:class:`Refused`), or raises :class:`~bridge.errors.SinkError`;
* a **committed-ids store** remembers which messages were committed, so a redelivery is
  confirmed without being written again.

The contracts, stated once:

* ``Ack.confirm()`` is called only after the sink's ``write_batch`` returned without
  refusals for the batch holding the message; ``Ack.fail(reason)`` only for messages of
  a batch that was not committed. Neither blocks the event loop.
* ``write_batch`` returning ``[]`` means every record of the batch is durably in the
  broker; only then are its messages confirmed. A batch that raised, or that came back
  with refusals, counts as not committed: the engine replaces the refused records (by
  their dead letters) and calls ``write_batch`` again **with the same** :class:`Batch`
  **object** (same ``seq``). A transactional sink (Kafka) shows none of a failed attempt
  to readers; a sink that cannot (RocketMQ sends record by record) must resume on the
  ``seq`` and not send again what the broker already acknowledged. A new ``seq`` means a
  new batch. ``tests/contract`` holds every sink to this against the real brokers.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from bridge.model import Ack, Delivery, OutRecord

#: Hands one delivery to the pipeline; waits while the pipeline is full (back-pressure).
#: It may return :data:`TAKEN` (taken at once, nothing to wait for): a source that cannot
#: await where it receives (a protocol callback) checks for it.
Submit = Callable[[Delivery], Awaitable[None]]


class _Taken:
    """The awaitable of a delivery the pipeline took at once: awaiting it returns
    immediately, without suspending."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        return
        yield  # a generator function: the await ends at once

    def __repr__(self) -> str:
        return "TAKEN"


#: What :data:`Submit` returns for a delivery it took without waiting.
TAKEN: Awaitable[None] = _Taken()

#: Identifies a message across redeliveries: (source name, message id).
MessageKey = tuple[str, int]

_batch_seq = itertools.count(1)


@dataclass(slots=True)
class Batch:
    """One batch, the same object on every attempt: ``records[i]`` may be swapped for its
    dead letter between attempts, ``seq`` never changes."""

    records: list[OutRecord]
    #: ``keys[i]`` is the source message of ``records[i]`` (a sink that remembers what it
    #: committed, e.g. Kafka's committed-ids marker, writes these).
    keys: list[MessageKey] = field(default_factory=list)
    seq: int = field(default_factory=lambda: next(_batch_seq))
    #: Called on the sink thread right before a sink that can still take the batch back
    #: (Kafka) commits it: a reason means "abort and raise SinkError", because a message
    #: of the batch will be redelivered anyway (see :meth:`~bridge.model.Ack.alive`).
    still_wanted: Callable[[], str | None] | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """Record ``index`` of the batch was refused for good (too large, invalid): no retry
    can help, so the engine dead-letters it with ``reason`` and tries the batch again."""

    index: int
    reason: str


class Source(Protocol):
    """What the bridge needs of a source (TMC WebSocket, ONS push consumer)."""

    def problem(self) -> str | None:
        """Why the source is not logged in (TMC: no connection is) or not started (ONS),
        for /readyz; None when it is."""
        ...

    def notes(self) -> list[str]:
        """Things /readyz mentions while ready (e.g. the last input it had to skip)."""
        ...

    def start(self) -> None: ...

    def pause(self, reason: str) -> None:
        """Step back from the source while the sink is down: log out (TMC closes its
        connections after sending the confirms already due; the HTTP source stops
        calling consume), take nothing new, and report ``reason`` in :meth:`problem`.
        Messages held stay unconfirmed and come back from the source. Idempotent."""
        ...

    def resume(self) -> None:
        """Log in again after :meth:`pause` (the usual reconnect back-off applies)."""
        ...

    async def stop_reading(self) -> None: ...

    async def close(self) -> None: ...


class BatchSink(Protocol):
    """What the pipeline needs of a sink; every method may block (sink thread only)."""

    name: str
    #: Started and not known to be cut off from its broker (read from any thread).
    ready: bool
    #: The sink's last error, one short line without secrets (e.g. librdkafka's
    #: "_TRANSPORT: ... Connection refused"), for /readyz; None once a write or probe
    #: went through. Read from any thread.
    last_error: str | None

    def start(self) -> None: ...

    def probe(self) -> bool:
        """A cheap round trip to the broker while idle: True when it went through, False
        when the client offers none (readiness then follows real writes only); raises
        SinkError when the broker did not answer."""
        ...

    def write_batch(self, batch: Batch) -> list[Refused]:
        """Put every record of ``batch`` in the broker and return ``[]``; or return the
        records refused for good; or raise SinkError (see the module docstring)."""
        ...

    def rebuild(self) -> None:
        """Replace a client that raised a fatal SinkError."""
        ...

    def stop(self) -> None:
        """Thread-safe: make a pending write give up at its next retry point."""
        ...

    def close(self) -> None: ...


class CommittedIds(Protocol):
    """The messages known to be committed downstream. The engine asks it about every
    delivery it does not hold already (a hit is confirmed at once, not written again) and
    tells it after each commit.

    A store that other replicas write to (Kafka's committed-ids topic) is current only as
    of some moment, so the engine decides a delivery only once the store has caught up
    with its arrival: it takes a :meth:`ticket` when the delivery arrives and decides it
    when :meth:`listen`'s callback has served that ticket. An in-memory store is always
    current: its tickets are 0 and never need serving."""

    def __contains__(self, key: object) -> bool: ...

    def add_all(self, keys: Iterable[MessageKey]) -> None: ...

    def ticket(self) -> int:
        """For a delivery that arrived before this call; 0: decide it now."""
        ...

    def listen(self, callback: Callable[[int], None]) -> None:
        """Have ``callback(ticket)`` called on the running event loop once every delivery
        holding ``ticket`` or lower may be decided. Called once, on the loop."""
        ...

    def start(self) -> None:
        """Start following (on the event loop; returns at once)."""
        ...

    async def wait_ready(self) -> None:
        """Until the store has caught up at start; nothing is produced or confirmed
        before. Raises what made it fail for good (e.g. an unusable topic)."""
        ...

    def problem(self) -> str | None:
        """Why the store is not current (catching up, broker unreachable), for /readyz."""
        ...

    def close(self) -> None:
        """Stop following (blocks briefly; call off the event loop)."""
        ...


__all__ = [
    "TAKEN",
    "Ack",
    "Batch",
    "BatchSink",
    "CommittedIds",
    "Delivery",
    "MessageKey",
    "Refused",
    "Source",
    "Submit",
]
