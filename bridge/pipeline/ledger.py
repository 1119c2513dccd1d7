"""The pipeline's decisions about messages, free of I/O and asyncio: tested on their own.

* :class:`Ledger` knows which messages are held (received, not settled) and asks a
  :class:`~bridge.pipeline.ports.CommittedIds` store which were committed. Its
  :meth:`~Ledger.admit` decides what a delivery is: new, a redelivery of a held message
  (its acks are folded into the first delivery, both confirmed on commit), or a
  redelivery of a committed one (confirmed at once, never written again).
* :class:`LruCommittedIds` is the in-memory store: the most recent ``capacity`` ids.
* :func:`swap_refused` replaces the records a sink refused by their dead letters.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from bridge.model import OutRecord
from bridge.pipeline.ports import CommittedIds, MessageKey, Refused

_E = TypeVar("_E")


class Admission(enum.Enum):
    NEW = "new"
    #: The message is held: fold this delivery into the held one.
    HELD = "in_flight"
    #: The message was committed: confirm this delivery at once.
    COMMITTED = "committed"


class LruCommittedIds:
    """The last ``capacity`` committed message keys, in memory (lost on restart)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._keys: OrderedDict[MessageKey, None] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def ticket(self) -> int:
        return 0  # always current: decide now

    def listen(self, callback: Callable[[int], None]) -> None:
        pass  # no ticket ever waits

    def start(self) -> None:
        pass

    async def wait_ready(self) -> None:
        pass  # empty at start: nothing to catch up with

    def problem(self) -> str | None:
        return None

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._keys)

    def add_all(self, keys: Iterable[MessageKey]) -> None:
        store = self._keys
        for key in keys:
            store[key] = None
        while len(store) > self._capacity:
            store.popitem(last=False)


class Ledger(Generic[_E]):
    """Held messages (key -> the caller's entry) and the committed-ids store."""

    def __init__(self, committed: CommittedIds) -> None:
        self._committed = committed
        self._held: dict[MessageKey, _E] = {}

    def __len__(self) -> int:
        return len(self._held)

    def admit(self, key: MessageKey) -> Admission:
        if key in self._committed:
            return Admission.COMMITTED
        if key in self._held:
            return Admission.HELD
        return Admission.NEW

    def held(self, key: MessageKey) -> _E:
        return self._held[key]

    def holding(self, key: MessageKey) -> _E | None:
        """The held entry of ``key`` (fold a redelivery into it), or None."""
        return self._held.get(key)

    def committed(self, key: MessageKey) -> bool:
        """Known to be committed: confirm without writing (ask only once current)."""
        return key in self._committed

    def hold(self, key: MessageKey, entry: _E) -> None:
        self._held[key] = entry

    def settle(self, keys: list[MessageKey]) -> None:
        """Committed: no longer held, and remembered as committed."""
        for key in keys:
            del self._held[key]
        self._committed.add_all(keys)

    def release(self, keys: Iterable[MessageKey]) -> None:
        """Handed back to the source uncommitted: no longer held, not committed."""
        for key in keys:
            del self._held[key]

    def __iter__(self) -> Iterator[MessageKey]:
        return iter(self._held)


def swap_refused(
    records: list[OutRecord],
    refused: list[Refused],
    dead_letter: Callable[[OutRecord, str], OutRecord],
) -> bool:
    """Replace each refused record by ``dead_letter(record, reason)``, in place.

    Returns True when a record stayed as it was (even its dead letter cannot be made
    smaller: the dead-letter topic itself refuses it, a configuration problem).
    """
    stuck = False
    for item in refused:
        before = records[item.index]
        records[item.index] = dead_letter(before, item.reason)
        stuck = stuck or records[item.index] is before
    return stuck
