"""The committed-ids topic: created when missing, refused when it would forget too early.

Retention is the dedup window (time-based ``delete``), so the topic never holds much more
than the window and a starting bridge reads all of it. Segments roll every window/24
(at least one minute), so old ids are deleted within about an hour of leaving a 24 h
window instead of after Kafka's default 7-day segments.
"""

from __future__ import annotations

from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]
from confluent_kafka.cimpl import NewTopic  # `confluent_kafka.admin` does not re-export it

from bridge.errors import SinkError

log = structlog.get_logger("bridge.dedup")

#: How long one admin request may take before the start-up retries it.
ADMIN_TIMEOUT_S = 10.0


def topic_settings(window_ms: int) -> dict[str, str]:
    """The topic configs the bridge creates the committed-ids topic with."""
    return {
        "cleanup.policy": "delete",
        "retention.ms": str(window_ms),
        "segment.ms": str(max(60_000, window_ms // 24)),
    }


def retention_problem(configs: dict[str, str], window_ms: int, topic: str) -> str | None:
    """Why an existing topic cannot serve as the store, or None. Pure."""
    policy = configs.get("cleanup.policy", "delete")
    if "delete" not in policy.split(","):
        return (
            f"committed-ids topic {topic!r} has cleanup.policy={policy}: it needs time-based "
            "deletion (cleanup.policy=delete), else start-up reads an ever-growing topic"
        )
    retention = int(configs.get("retention.ms", "604800000"))
    if 0 <= retention < window_ms:
        return (
            f"committed-ids topic {topic!r} keeps records {retention} ms, less than the "
            f"dedup window ({window_ms} ms): ids would be forgotten early and redeliveries "
            "written twice. Raise its retention.ms or lower sink.kafka.dedup.window_h"
        )
    return None


def ensure_topic(admin: AdminClient, topic: str, window_ms: int) -> None:
    """Create ``topic`` (one partition, the broker's replication factor) or check it."""
    metadata = admin.list_topics(topic, timeout=ADMIN_TIMEOUT_S)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        _create(admin, topic, window_ms)
        return
    if len(found.partitions) != 1:
        # Markers go where the key hashes to, and every replica reads partition 0 only.
        raise SinkError(
            f"committed-ids topic {topic!r} has {len(found.partitions)} partitions; it must "
            "have exactly one (every replica reads all of it, in commit order)",
            fatal=True,
            error_class="dedup_topic",
        )
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries: dict[str, Any] = admin.describe_configs([resource])[resource].result(
        timeout=ADMIN_TIMEOUT_S
    )
    configs = {name: str(entry.value) for name, entry in entries.items()}
    problem = retention_problem(configs, window_ms, topic)
    if problem is not None:
        raise SinkError(problem, fatal=True, error_class="dedup_topic")


def _create(admin: AdminClient, topic: str, window_ms: int) -> None:
    new = NewTopic(topic, num_partitions=1, config=topic_settings(window_ms))
    try:
        admin.create_topics([new], operation_timeout=ADMIN_TIMEOUT_S)[topic].result(
            timeout=ADMIN_TIMEOUT_S
        )
    except KafkaException as exc:
        err: KafkaError = exc.args[0]
        if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another replica was first
            raise
    log.info("committed-ids topic created", topic=topic, **topic_settings(window_ms))
