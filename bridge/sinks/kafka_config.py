"""``sink.kafka``: the Kafka sink's settings."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from bridge.config_fields import (
    _KAFKA_PROTOCOLS,
    _KAFKA_TOPIC,
    Name,
    PositiveFloat,
    _address_list_problems,
    _Model,
    _Problems,
)


class KafkaDedupConfig(_Model):
    """``sink.kafka.dedup``: where the ids of committed messages are remembered."""

    #: kafka: every committed id is written to ``topic`` in the same transaction as the
    #: records, and every replica follows that topic (exactly once across crashes and
    #: replicas, within the window). memory: the last ``pipeline.dedupe_cache_size`` ids of
    #: this process only (at least once across crashes).
    store: Literal["kafka", "memory"] = "kafka"
    #: One partition, time-based retention of the window; created by the bridge when
    #: missing. Several bridges (apps, groups) may share it: ids are kept per app and group.
    topic: str = "tmc-bridge.committed-ids"
    #: How long a committed id is remembered: TMC keeps unconfirmed messages about a day.
    window_h: Annotated[float, Field(gt=0, le=24 * 30)] = 24.0

    @field_validator("topic")
    @classmethod
    def _topic_name(cls, value: str) -> str:
        if not _KAFKA_TOPIC.match(value) or value in (".", ".."):
            raise ValueError(
                "not a valid Kafka topic name (letters, digits, . _ -; at most 249 "
                "characters; not . or ..)"
            )
        return value


class KafkaSinkConfig(_Model):
    """Transactional confluent-kafka producer."""

    #: ``host[:port],host[:port]``, IPv6 in brackets, optional ``protocol://`` prefix. The
    #: port may be left out as librdkafka allows (9092); when given it must be 1..65535.
    bootstrap_servers: str
    #: Stable per replica (e.g. contains the pod name) so a restart fences its old self.
    #: Blank is refused: librdkafka takes "" as "no transactions" without a word.
    transactional_id: Name
    #: raw: the TMC content as received; envelope: JSON with TMC fields, ids as strings.
    value_format: Literal["raw", "envelope"] = "raw"
    #: librdkafka refuses less than 1000 ms; the broker caps it (transaction.max.timeout.ms).
    #: Also the longest a crashed replica's open transaction holds read_committed readers
    #: back (plus the broker's abort check interval) when it does not come back.
    transaction_timeout_ms: Annotated[int, Field(ge=1000)] = 10_000
    #: How long one commit/abort call may block before it is retried.
    commit_timeout_s: PositiveFloat = 30.0
    #: Pass-through librdkafka settings (e.g. security.protocol, sasl.*). Values are
    #: treated as secrets in every message the bridge prints.
    extra: dict[str, str | int | float | bool] = Field(default_factory=dict)
    dedup: KafkaDedupConfig = Field(default_factory=KafkaDedupConfig)

    @field_validator("bootstrap_servers")
    @classmethod
    def _bootstrap_list(cls, value: str) -> str:
        problems = _address_list_problems(
            value, ",", port_required=False, prefixes=_KAFKA_PROTOCOLS
        )
        if problems:
            raise ValueError(problems)
        return value

    @field_validator("extra", mode="before")
    @classmethod
    def _scalar_values(cls, value: Any) -> Any:
        # One clear line per bad property instead of one per member of the value union.
        if isinstance(value, dict):
            bad = [
                (str(key), "must be a string, number or boolean")
                for key, item in value.items()
                if not isinstance(item, str | int | float | bool)
            ]
            if bad:
                raise _Problems(*bad)
        return value

    @field_validator("extra")
    @classmethod
    def _no_overrides(
        cls, value: dict[str, str | int | float | bool]
    ) -> dict[str, str | int | float | bool]:
        owned = {"transactional.id", "bootstrap.servers", "enable.idempotence"}
        problems = [
            (key, "is set by the bridge; use the named sink.kafka options")
            for key in value
            if key in owned
        ]
        # confluent-kafka's callables (error_cb, logger, ...) cannot come from YAML.
        problems += [
            (key, "is a callback of the Python client; a configuration value cannot be one")
            for key in value
            if key.endswith("_cb") or key in ("logger", "on_delivery", "on_commit")
        ]
        if problems:
            raise _Problems(*problems)
        return value

    @model_validator(mode="after")
    def _prefixes_match_protocol(self) -> KafkaSinkConfig:
        # librdkafka drops a bootstrap server whose protocol:// differs from
        # security.protocol, with nothing but a log line.
        protocol = str(self.extra.get("security.protocol", "plaintext")).lower()
        for raw in self.bootstrap_servers.split(","):
            scheme, sep, _ = raw.strip().partition("://")
            if sep and scheme.lower() != protocol:
                raise _Problems(
                    (
                        "bootstrap_servers",
                        f"{raw.strip()!r}: the protocol prefix does not match "
                        "security.protocol (plaintext unless sink.kafka.extra sets it)",
                    )
                )
        return self
