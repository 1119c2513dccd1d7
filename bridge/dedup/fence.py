"""Tickets that make a delivery wait until the committed-ids store is current, pure.

A delivery may be a redelivery of a message another replica committed a few milliseconds
ago. Its commit returned before the redelivery was pushed (TMC redelivers only after the
first connection is gone or its confirm deadline passed), so the marker record holding
its id was already *written* to the committed-ids topic when the redelivery arrived:
below that partition's high watermark at that moment. The store therefore decides a
delivery only after it has read (``read_committed``) up to a high watermark taken *after*
the delivery arrived: every transaction open at that moment has then been committed or
aborted, and the committed ones are in memory.

One high-watermark query serves every delivery that arrived before it: the event loop
takes a ticket per delivery (:meth:`Fences.ticket`, a lock and a comparison); the follower
thread takes the newest ticket (:meth:`Fences.take`) just before it asks the broker for the
high watermark, and serves that ticket once its position has passed it. A delivery whose
ticket was taken already gets the next one, because the query for it may have been sent
before the delivery arrived.
"""

from __future__ import annotations

import threading


class Fences:
    """Thread-safe between the event loop (:meth:`ticket`) and the follower (:meth:`take`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._asked = 0
        self._taken = 0

    def ticket(self) -> int:
        """For a delivery that arrived before this call: it may be decided once the
        ticket is served."""
        with self._lock:
            if self._asked == self._taken:
                self._asked += 1
            return self._asked

    def waiting(self) -> bool:
        """Some delivery waits for a ticket the follower has not taken yet (a hint for
        how long the follower may block: read without the lock, a stale answer only
        makes it look again a few milliseconds later)."""
        return self._asked != self._taken

    def take(self) -> int | None:
        """For the follower, right before it queries the high watermark: the newest ticket
        (every delivery holding it or a lower one arrived before this call), or None when
        no delivery waits."""
        with self._lock:
            if self._asked == self._taken:
                return None
            self._taken = self._asked
            return self._taken
