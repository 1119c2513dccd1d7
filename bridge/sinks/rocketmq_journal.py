"""The transactional RocketMQ sink's journal: which source messages were committed.

RocketMQ transactions are per message: a half message is stored, the producer runs its
local transaction, then sends commit or rollback **one-way**. When that last request is
lost (the bridge was killed, the network dropped it), the broker asks the producer group
later ("check-back") and the answer must match what the local transaction decided. The
bridge's local transaction is "append (source message id, transaction id) to the
journal", where the transaction id is the half message's unique id, so:

* check-back: transaction recorded -> commit; not recorded -> roll back (the source was
  not confirmed either, so it redelivers and the message is written again). Decided by
  transaction, not by source message: after such a redelivery the same source message
  has a second, committed half message, and the orphaned first one must still be rolled
  back, or the topic would hold it twice.
* a redelivery after a restart whose source message id is recorded is confirmed without
  sending it again (its half message is committed, now or at the next check-back).

Format: append-only text files ``journal-<seq>.log``, one ``<message id> <transaction
id>`` per line. A line counts only when complete and well-formed (ends with a newline,
decimal id, hex transaction id), so a torn last line after a crash can never make
another message look committed. Two segments are kept; when the
current one reaches ``segment_entries`` the older is deleted, bounding disk and memory
while remembering at least ``segment_entries`` recent ids (check-backs concern minutes,
TMC redelivery about a day at most).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path
from typing import TextIO

from bridge.errors import ConfigError

_PREFIX, _SUFFIX = "journal-", ".log"
_LINE = re.compile(r"^(\d+) ([0-9A-Fa-f]+)\n$")


class _Segment:
    __slots__ = ("messages", "transactions")

    def __init__(self) -> None:
        self.messages: set[str] = set()
        self.transactions: set[str] = set()

    def __len__(self) -> int:
        return len(self.transactions)


def _segments(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.glob(f"{_PREFIX}*{_SUFFIX}"):
        seq = path.name[len(_PREFIX) : -len(_SUFFIX)]
        if seq.isdigit():
            found.append((int(seq), path))
    return sorted(found)


def _load(path: Path) -> _Segment:
    segment = _Segment()
    with path.open("r", encoding="ascii", errors="replace", newline="") as fh:
        for line in fh:
            match = _LINE.match(line)
            if match is not None:
                segment.messages.add(match.group(1))
                segment.transactions.add(match.group(2).upper())
    return segment


class Journal:
    """Thread-safe: ``record`` runs on send lanes, ``contains`` on librocketmq's
    check-back thread."""

    def __init__(self, directory: Path, *, segment_entries: int, fsync: bool) -> None:
        self._dir = directory
        self._limit = segment_entries
        self._fsync = fsync
        self._lock = threading.Lock()
        self._older = _Segment()
        self._current = _Segment()
        self._seq = 0
        self._file: TextIO | None = None
        self._dirty = False

    def open(self) -> None:
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            segments = _segments(self._dir)
            for _, path in segments[:-2]:
                path.unlink()
            kept = segments[-2:]
            if len(kept) == 2:
                self._older = _load(kept[0][1])
            if kept:
                self._seq, last = kept[-1]
                self._current = _load(last)
            else:
                self._seq = 1
            self._file = self._segment_path(self._seq).open("a", encoding="ascii")
        except OSError as exc:
            raise ConfigError(
                f"sink.rocketmq.journal_dir: cannot use {self._dir}: {exc.strerror}"
            ) from None

    def _segment_path(self, seq: int) -> Path:
        return self._dir / f"{_PREFIX}{seq:010d}{_SUFFIX}"

    def __len__(self) -> int:
        with self._lock:
            return len(self._older) + len(self._current)

    def has_message(self, message_id: str) -> bool:
        """Was a transaction of this source message committed?"""
        with self._lock:
            return message_id in self._current.messages or message_id in self._older.messages

    def has_transaction(self, transaction_id: str) -> bool:
        """Did the local transaction of this half message decide to commit?"""
        txn = transaction_id.upper()
        with self._lock:
            return txn in self._current.transactions or txn in self._older.transactions

    def record(self, message_id: str, transaction_id: str) -> None:
        """Append one entry; flushed to the OS at once (survives a killed process)."""
        line = f"{message_id} {transaction_id.upper()}\n"
        if not _LINE.match(line):
            raise ValueError(f"not a journal entry: {message_id!r} {transaction_id!r}")
        with self._lock:
            assert self._file is not None, "journal not open"
            self._file.write(line)
            self._file.flush()
            self._current.messages.add(message_id)
            self._current.transactions.add(transaction_id.upper())
            self._dirty = True
            if len(self._current) >= self._limit:
                self._rotate()

    def _rotate(self) -> None:
        assert self._file is not None
        self._sync_locked()
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._segment_path(self._seq - 1).unlink()
        self._older, self._current = self._current, _Segment()
        self._seq += 1
        self._file = self._segment_path(self._seq).open("a", encoding="ascii")
        self._sync_dir()

    def sync(self) -> None:
        """Make what was recorded durable (fsync); called before the source is confirmed."""
        with self._lock:
            self._sync_locked()

    def _sync_locked(self) -> None:
        if self._file is not None and self._dirty and self._fsync:
            os.fsync(self._file.fileno())
        self._dirty = False

    def _sync_dir(self) -> None:
        if not self._fsync:
            return
        fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._sync_locked()
                self._file.close()
                self._file = None
