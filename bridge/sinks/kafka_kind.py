"""The ``sink.kafka`` adapter's registration: its type name, config model and factory.

The implementation is imported inside the factory, so reading a config loads none of it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bridge.config_fields import _KAFKA_TOPIC
from bridge.kinds import Reached, SinkContext, SinkKind
from bridge.sinks.kafka_config import KafkaSinkConfig

if TYPE_CHECKING:
    from bridge.pipeline.ports import BatchSink, CommittedIds


def _build(config: KafkaSinkConfig, context: SinkContext) -> BatchSink:
    # Imported here: only a Kafka bridge loads librdkafka.
    from bridge.sinks.kafka import KafkaSink

    # The probe asks for the dead-letter topic's metadata: a topic the bridge may write
    # to anyway, and one small answer instead of the whole cluster's topic list.
    return KafkaSink(
        config,
        metrics=context.metrics,
        probe_topic=context.dead_letter_topic,
        dedup_namespace=context.namespace if config.dedup.store == "kafka" else None,
    )


def _committed_ids(config: KafkaSinkConfig, context: SinkContext) -> CommittedIds | None:
    if config.dedup.store != "kafka":
        return None  # the pipeline's in-memory LRU
    from bridge.dedup.kafka_store import KafkaCommittedIds

    return KafkaCommittedIds(config, context.namespace, metrics=context.metrics)


def _check(config: KafkaSinkConfig) -> None:
    from bridge.sinks.kafka_check import check_offline

    check_offline(config)


def _topic_problem(name: str) -> str | None:
    if _KAFKA_TOPIC.match(name) and name not in (".", ".."):
        return None
    return (
        f"{name!r} is not a valid Kafka topic name "
        "(letters, digits, . _ -; at most 249 characters; not . or ..)"
    )


def _connect_check(
    config: KafkaSinkConfig, topics: Sequence[str], timeout_s: float
) -> list[Reached]:
    from bridge.sinks.kafka_connect import check

    return check(config, topics, timeout_s)


KIND = SinkKind(
    name="kafka",
    config=KafkaSinkConfig,
    build=_build,
    summary=lambda c: f"kafka {c.bootstrap_servers} transactional_id={c.transactional_id}",
    check=_check,
    topic_problem=_topic_problem,
    committed_ids=_committed_ids,
    connect_check=_connect_check,
)
