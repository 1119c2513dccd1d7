"""``check-config --connect`` for ``sink.kafka``: the cluster's metadata, nothing written.

An admin client with the sink's connection settings (security, SASL, TLS from
``sink.kafka.extra``) asks for the metadata of all topics the credentials may see, and
the line names the brokers and every topic the routes need that is missing.

Not done on purpose: ``init_transactions`` with the bridge's ``transactional_id`` would
fence a running bridge that holds that id (its open transaction aborted, its producer
dead); and a metadata request naming one topic could create it on a broker with
``auto.create.topics.enable``. So transactions are not tried: a principal that may read
metadata but not write (no ``Write`` on the topics, no ``TransactionalId`` ACL) passes
this check and fails at the first write.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bridge.kinds import Reached
from bridge.sinks.kafka_config import KafkaSinkConfig
from bridge.sinks.kafka_log import VARIABLE_TAIL, Redactor, one_line, sensitive_values


def _consumer_settings(config: KafkaSinkConfig) -> dict[str, Any]:
    from bridge.dedup.kafka_store import consumer_settings

    return consumer_settings(config)


class _Quiet:
    """librdkafka ``logger``: its lines are not wanted on a check's terminal."""

    def log(self, *args: object, **kwargs: object) -> None:
        pass


def check(config: KafkaSinkConfig, topics: Sequence[str], timeout_s: float) -> list[Reached]:
    """One line: the cluster reached, and the needed topics that are missing."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    part = f"sink kafka {config.bootstrap_servers}"
    redact = Redactor(sensitive_values(dict(config.extra)))
    errors: list[str] = []

    def on_error(err: KafkaError) -> None:
        errors.append(f"{err.name()}: {err.str()}")

    settings: dict[str, Any] = {
        **_consumer_settings(config),
        "error_cb": on_error,
        "logger": _Quiet(),
    }
    admin = AdminClient(settings)
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        err: KafkaError = exc.args[0]
        admin.poll(0)  # delivers error_cb: the cause (refused, TLS, SASL) of a timeout
        causes = [e for e in errors if not e.startswith(("_TIMED_OUT", "_ALL_BROKERS_DOWN"))]
        text = causes[-1] if causes else f"{err.name()}: {err.str()}"
        text = one_line(VARIABLE_TAIL.sub("", redact(text)))
        return [Reached(part, False, f"no metadata within {timeout_s:g} s: {text}")]
    known = metadata.topics
    missing: list[str] = []
    refused: list[str] = []
    for name in dict.fromkeys(topics):
        found = known.get(name)
        if found is None:
            missing.append(name)
        elif found.error is not None:
            refused.append(f"{name} ({found.error.name()})")
    brokers = len(metadata.brokers)
    dedup = ""
    if config.dedup.store == "kafka":
        there = config.dedup.topic in known
        dedup = f"; committed-ids topic {config.dedup.topic} " + (
            "found" if there else "missing (the bridge creates it at start)"
        )
    if missing or refused:
        problems = []
        if missing:
            problems.append(f"missing topics: {', '.join(missing)}")
        if refused:
            problems.append(f"topics with errors: {', '.join(refused)}")
        return [
            Reached(
                part,
                False,
                f"reached ({brokers} brokers) but {'; '.join(problems)} "
                "(create them, or grant Describe on them)",
            )
        ]
    return [
        Reached(
            part,
            True,
            f"metadata from {brokers} broker(s); all {len(set(topics))} topics found{dedup}; "
            "transactions not tried (that would fence a running bridge)",
        )
    ]
