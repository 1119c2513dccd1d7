"""The committed-ids marker: one Kafka record per source per transaction, pure.

Written by the Kafka sink into the committed-ids topic inside the same transaction as the
batch's records, so a ``read_committed`` reader sees the ids exactly when it can see the
records, and never for an aborted batch.

* key: the stream's scope in UTF-8, ``<namespace>|<source>`` (e.g. ``ons/GID_x|ons``), or
  for a source that reads groups (a TMC group), whose pipeline key names the stream
  ``<source>@<group>``, ``<namespace>/<group>|<source>`` (``tmc/12345678/default|tmc``).
  Ids are taken as unique within one stream only, so each TMC group has its own ids and
  replicas of other bridges sharing the topic keep out of each other's way.
* value: the format byte ``0x01``, then the ids as big-endian int64 (8 bytes each).

A record of an unknown format (a newer bridge wrote it) is skipped with a warning by the
reader: its ids are then not remembered, which can only cause a duplicate, never a loss.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from bridge.numbers import INT64_MAX, INT64_MIN

FORMAT_V1 = b"\x01"
#: Ids per marker at most (512 KiB, well below Kafka's 1 MB default message size); a
#: larger batch writes several markers.
MAX_IDS = 65_536


def scope(namespace: str, source: str) -> str:
    """The marker key of the pipeline's stream name ``source`` (see the module doc)."""
    name, at, group = source.partition("@")
    if at:
        return f"{namespace}/{group}|{name}"
    return f"{namespace}|{source}"


def source_of(namespace: str, found: str) -> str | None:
    """The stream name a marker key ``found`` stands for under ``namespace`` (the inverse
    of :func:`scope`), or None when it belongs to another namespace."""
    if found.startswith(namespace + "|"):
        return found[len(namespace) + 1 :]
    if found.startswith(namespace + "/"):
        # Source names hold no "|"; a group name might.
        group, bar, name = found[len(namespace) + 1 :].rpartition("|")
        if bar and group and name:
            return f"{name}@{group}"
    return None


def encode(ids: Iterable[int]) -> bytes:
    """The value of one marker. Ids outside int64 are left out (the caller counts them)."""
    kept = [i for i in ids if INT64_MIN <= i <= INT64_MAX]
    return FORMAT_V1 + struct.pack(f">{len(kept)}q", *kept)


@dataclass(frozen=True, slots=True)
class Marker:
    scope: str
    #: Big-endian int64 ids, 8 bytes each.
    packed: memoryview


class MarkerError(ValueError):
    """A record in the committed-ids topic that this version cannot read."""


def decode(key: bytes | None, value: bytes | None) -> Marker:
    if key is None or value is None or not value:
        raise MarkerError("record without key or value")
    if value[:1] != FORMAT_V1:
        raise MarkerError(f"unknown marker format {value[:1].hex()}")
    body = memoryview(value)[1:]
    if len(body) % 8:
        raise MarkerError(f"marker body of {len(body)} bytes is not a multiple of 8")
    try:
        name = key.decode("utf-8")
    except UnicodeDecodeError:
        raise MarkerError("marker key is not UTF-8") from None
    return Marker(name, body)
