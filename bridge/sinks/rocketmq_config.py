"""``sink.rocketmq``: the RocketMQ sink's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from bridge.config_fields import (
    Name,
    PositiveInt,
)
from bridge.rocketmq.config import RocketMQClientConfig


class RocketMQSinkConfig(RocketMQClientConfig):
    """rocketmq-client-python producer: ordered by sharding key, or transactional."""

    #: ordered: each record is sent with the record key (the order id) as sharding key,
    #: so one order's events share a queue, in arrival order. transactional: half message,
    #: journal, commit; no queue selection is possible then (see the README).
    mode: Literal["ordered", "transactional"] = "ordered"
    #: Producer group. In transactional mode the broker asks this group about half
    #: messages whose outcome it never heard, so it must be stable and unique per
    #: replica (like Kafka's transactional_id), and the journal must outlive restarts.
    producer_group: Name
    value_format: Literal["raw", "envelope"] = "raw"
    send_timeout_ms: PositiveInt = 3_000
    #: Attempts per record beyond the first before the batch is handed back for a retry.
    retries: Annotated[int, Field(ge=0)] = 2
    #: Parallel send lanes; a key always uses the same lane, so per-key order holds.
    send_threads: PositiveInt = 8
    max_message_bytes: PositiveInt = 4 * 1024 * 1024
    #: Transactional mode: where the journal of committed message ids lives.
    journal_dir: Path = Path("journal")
    #: fsync the journal before the source is confirmed (once per batch).
    journal_fsync: bool = True
    #: Journal entries per segment (~5 MB at 100,000). A segment is deleted once its
    #: newest entry is older than ``dedup_window_h``; the newest two are always kept
    #: (their transaction ids answer the broker's check-backs). Smaller segments: less
    #: to keep beyond the window and less memory for transaction ids; more files.
    journal_segment_entries: PositiveInt = 100_000
    #: Transactional mode: how long the journal remembers a committed message id, so that
    #: a redelivery is confirmed without being sent again (TMC redelivers for about a
    #: day). Ordered mode remembers ``pipeline.dedupe_cache_size`` ids in memory only.
    dedup_window_h: Annotated[float, Field(gt=0, le=24 * 30)] = 24.0
