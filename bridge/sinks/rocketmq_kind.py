"""The ``sink.rocketmq`` adapter's registration: its type name, config model and factory.

The implementation is imported inside the factory, so reading a config loads none of it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bridge.config_fields import _ROCKETMQ_TOPIC, public_url
from bridge.kinds import Reached, SinkContext, SinkKind
from bridge.rocketmq.config import ensure_native_library
from bridge.sinks.rocketmq_config import RocketMQSinkConfig

if TYPE_CHECKING:
    from bridge.pipeline.ports import BatchSink, CommittedIds


def _build(config: RocketMQSinkConfig, context: SinkContext) -> BatchSink:
    # Imported here: only a RocketMQ bridge loads librocketmq.
    from bridge.sinks.rocketmq import RocketMQSink

    return RocketMQSink(config, metrics=context.metrics)


def _committed_ids(config: RocketMQSinkConfig, context: SinkContext) -> CommittedIds | None:
    """Transactional: the sink's own journal (the same instance, see ``journal_for``), so
    a redelivery within ``dedup_window_h`` is confirmed without entering the sink, also
    after a restart. Ordered: the pipeline's in-memory LRU."""
    if config.mode != "transactional":
        return None
    from bridge.sinks.rocketmq_journal import JournalCommittedIds, journal_for

    return JournalCommittedIds(journal_for(config), metrics=context.metrics)


def _check(config: RocketMQSinkConfig) -> None:
    config.credentials("sink.rocketmq.secret_key_file")  # the secret file must be readable


def _topic_problem(name: str) -> str | None:
    if _ROCKETMQ_TOPIC.match(name):
        return None
    return (
        f"{name!r} is not a valid RocketMQ topic name "
        "(letters, digits, _ - % |; no dots; at most 127 characters)"
    )


def _connect_check(
    config: RocketMQSinkConfig, topics: Sequence[str], timeout_s: float
) -> list[Reached]:
    # A route lookup on the name server: no producer is started, nothing is sent.
    from bridge.rocketmq.route_check import check

    return check(config, "sink rocketmq", topics, timeout_s)


KIND = SinkKind(
    name="rocketmq",
    config=RocketMQSinkConfig,
    build=_build,
    summary=lambda c: (
        f"rocketmq {c.name_server or public_url(c.name_server_domain or '')} mode={c.mode}"
    ),
    check=_check,
    topic_problem=_topic_problem,
    requirements=ensure_native_library,
    committed_ids=_committed_ids,
    connect_check=_connect_check,
)
