"""The configuration models: one pydantic model per section (see the package docstring)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from bridge.config._checks import (
    _KAFKA_PROTOCOLS,
    _KAFKA_TOPIC,
    _ROCKETMQ_TOPIC,
    Name,
    PositiveFloat,
    PositiveInt,
    Secret,
    _address_list_problems,
    _Problems,
    _url_problem,
)
from bridge.errors import ConfigError


class _Model(BaseModel):
    # allow_inf_nan=False: an infinite or NaN timeout would reach asyncio and librdkafka.
    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, allow_inf_nan=False
    )


class TmcSourceConfig(_Model):
    """TMC WebSocket source (shared/tmc-protocol.md §5, §8)."""

    #: ws:// or wss://, parsed fully (host, port 1..65535, [IPv6]); see the module doc.
    url: str = "ws://mc.api.taobao.com/"
    app_key: Name
    #: Blank is refused: the login would only fail later, with a less clear message.
    app_secret: Secret = None
    #: Alternative to app_secret: a file holding the secret (e.g. a mounted Secret).
    app_secret_file: Path | None = None
    group: Name = "default"
    #: Parallel connections to the same group; the server spreads messages over them.
    connections: PositiveInt = 1
    pull_interval_s: PositiveFloat = 15.0
    #: A WebSocket ping goes out after this long without traffic; pongs are not awaited.
    ping_idle_s: PositiveFloat = 45.0
    #: The platform refuses fast reconnects: the first retry waits at least this long.
    reconnect_min_s: Annotated[float, Field(ge=0)] = 10.0
    reconnect_max_s: PositiveFloat = 120.0
    connect_timeout_s: PositiveFloat = 5.0
    #: Largest TMC frame read whole; a larger one is skipped as it arrives (README, Bad
    #: input and limits) and dead-lettered when its first 64 KiB hold a valid id.
    max_frame_bytes: Annotated[int, Field(ge=4096)] = 16 * 1024 * 1024
    #: Largest content after inflating a gzip ByteArray; a larger one is dead-lettered.
    max_content_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    sdk: str = "tmc-bridge"

    @field_validator("url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        problem = _url_problem(value, ("ws", "wss"))
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> TmcSourceConfig:
        problems = []
        if (self.app_secret is None) == (self.app_secret_file is None):
            given = "both are" if self.app_secret is not None else "neither is"
            problems.append(
                ("app_secret", f"set exactly one of app_secret and app_secret_file ({given} set)")
            )
        if self.reconnect_max_s < self.reconnect_min_s:
            problems.append(("reconnect_max_s", "must be >= reconnect_min_s"))
        if problems:
            raise _Problems(*problems)
        return self

    def secret(self) -> str:
        """The app secret, read from the file when configured that way."""
        return _secret(self.app_secret, self.app_secret_file, "source.tmc.app_secret_file")


def _secret(value: SecretStr | None, path: Path | None, key: str) -> str:
    if value is not None:
        return value.get_secret_value()
    assert path is not None
    # The path is echoed (it names a mount, not a secret); the content never is.
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"{key}: {path} is empty")
    return secret


class RocketMQClientConfig(_Model):
    """Connection settings shared by the RocketMQ sink and the ONS source.

    The name server is either a ``host:port;host:port`` list or the URL of an address
    server (ONS ``ONSAddr`` style), from which the client fetches and refreshes the list.
    Credentials are ONS/ACL AccessKey + SecretKey; the client signs every request with the
    channel as part of the signed data, and sends nothing signed if the channel is empty.
    """

    #: ``host:port;host:port``; every entry with its port, as the old check required.
    name_server: str | None = None
    #: http(s):// URL, parsed like source.tmc.url.
    name_server_domain: str | None = None
    access_key: Name | None = None
    secret_key: Secret = None
    secret_key_file: Path | None = None
    channel: str = "ALIYUN"
    #: Client instance name; default "<group>-<pid>", so clients of different groups in one
    #: process never share librocketmq's per-instance state (name servers, connections).
    instance_name: str | None = None

    @field_validator("name_server")
    @classmethod
    def _name_server_list(cls, value: str | None) -> str | None:
        problems = None if value is None else _address_list_problems(value, ";")
        if problems:
            raise ValueError(problems)
        return value

    @field_validator("name_server_domain")
    @classmethod
    def _address_server_url(cls, value: str | None) -> str | None:
        problem = None if value is None else _url_problem(value, ("http", "https"))
        if problem is not None:
            raise ValueError(f"{problem} (the address-server URL)")
        return value

    @model_validator(mode="after")
    def _addresses_and_credentials(self) -> RocketMQClientConfig:
        if (self.name_server is None) == (self.name_server_domain is None):
            raise ValueError("set exactly one of name_server and name_server_domain")
        problems = []
        has_secret = self.secret_key is not None or self.secret_key_file is not None
        if self.secret_key is not None and self.secret_key_file is not None:
            problems.append(("secret_key", "set only one of secret_key and secret_key_file"))
        elif self.access_key is None and has_secret:
            problems.append(
                ("access_key", "access_key and secret_key (or secret_key_file) go together")
            )
        elif self.access_key is not None and not has_secret:
            problems.append(
                ("secret_key", "access_key and secret_key (or secret_key_file) go together")
            )
        if not self.channel.strip():
            problems.append(("channel", "must not be empty (the client signs nothing without it)"))
        if problems:
            raise _Problems(*problems)
        return self

    def credentials(self, key: str) -> tuple[str, str, str] | None:
        """(access key, secret key, channel), or None when the cluster has no ACL."""
        if self.access_key is None:
            return None
        return (self.access_key, _secret(self.secret_key, self.secret_key_file, key), self.channel)


class OnsSourceConfig(RocketMQClientConfig):
    """Jushita message sync / Alibaba Cloud ONS topics (shared/jushita-ons.md).

    Jushita's legacy ONS takes the app key and app secret as AccessKey/SecretKey with
    channel ``CLOUD``; Alibaba Cloud's own ONS uses ``ALIYUN``.
    """

    #: Consumer group (Jushita requires the ``CID_`` prefix there; any name locally).
    group_id: Name
    #: One topic per app on Jushita: ``rmq_sys_jst_<appkey>``.
    topics: list[Name] = Field(min_length=1)
    #: Subscription expression: ``*`` or TMC topic names joined with ``||``.
    tag_expression: Name = "*"
    channel: str = "CLOUD"
    #: One consumer thread per queue, in queue order; a failure suspends the queue
    #: and retries locally instead of sending the message back with a delay.
    orderly: bool = False
    #: Consumer threads. Each one waits for its message to be committed downstream,
    #: so this bounds the messages in flight (and the throughput) in concurrent mode.
    consume_threads: PositiveInt = 64


class SourceConfig(_Model):
    type: Literal["tmc", "ons"] = "tmc"
    tmc: TmcSourceConfig | None = None
    ons: OnsSourceConfig | None = None

    @model_validator(mode="after")
    def _section_of_type(self) -> SourceConfig:
        _one_section("source", self.type, {"tmc": self.tmc, "ons": self.ons})
        return self

    @property
    def tmc_config(self) -> TmcSourceConfig:
        assert self.tmc is not None
        return self.tmc

    @property
    def ons_config(self) -> OnsSourceConfig:
        assert self.ons is not None
        return self.ons


def _one_section(where: str, kind: str, sections: dict[str, object]) -> None:
    if sections[kind] is None:
        raise ValueError(f"{where}.type is {kind!r} but {where}.{kind} is missing")
    extra = sorted(name for name, value in sections.items() if name != kind and value)
    if extra:
        raise ValueError(f"{where}.{extra[0]} is set but {where}.type is {kind!r}")


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
    transaction_timeout_ms: Annotated[int, Field(ge=1000)] = 60_000
    #: How long one commit/abort call may block before it is retried.
    commit_timeout_s: PositiveFloat = 30.0
    #: Pass-through librdkafka settings (e.g. security.protocol, sasl.*). Values are
    #: treated as secrets in every message the bridge prints.
    extra: dict[str, str | int | float | bool] = Field(default_factory=dict)

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
    #: Journal entries per segment; two segments are kept (older ones are dropped).
    journal_segment_entries: PositiveInt = 100_000


class SinkConfig(_Model):
    type: Literal["kafka", "rocketmq"] = "kafka"
    kafka: KafkaSinkConfig | None = None
    rocketmq: RocketMQSinkConfig | None = None

    @model_validator(mode="after")
    def _section_of_type(self) -> SinkConfig:
        _one_section("sink", self.type, {"kafka": self.kafka, "rocketmq": self.rocketmq})
        return self

    @property
    def kafka_config(self) -> KafkaSinkConfig:
        assert self.kafka is not None
        return self.kafka

    @property
    def rocketmq_config(self) -> RocketMQSinkConfig:
        assert self.rocketmq is not None
        return self.rocketmq

    @property
    def value_format(self) -> str:
        if self.kafka is not None:
            return self.kafka.value_format
        return self.rocketmq_config.value_format


class RoutingConfig(_Model):
    """TMC topic -> sink topic, and which content field is the record key.

    Patterns are shell globs (``taobao_trade_*``), tried in the order written; the first
    match wins, so put ``"*"`` last. Both maps may also be written as a list of one-entry
    mappings (``- "taobao_trade_*": tmc.trade``): tools that sort mapping keys (Helm's
    ``toYaml``) would otherwise move ``"*"`` first and route everything there.
    """

    #: Never empty: with no route every message would be dead-lettered as "no route".
    #: Target names are checked against the sink's topic rule (BridgeConfig).
    topics: dict[str, str] = Field(default_factory=lambda: {"*": "tmc.messages"})
    keys: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "taobao_trade_*": ["tid"],
            "taobao_refund_*": ["tid", "refund_id"],
            "taobao_item_*": ["num_iid"],
        }
    )
    #: What to do when a topic has key fields configured but none is in the content:
    #: dead_letter (default), or use an envelope field (dataid, userid), or send unkeyed.
    missing_key: Literal["dead_letter", "dataid", "userid", "unkeyed"] = "dead_letter"
    dead_letter_topic: str = "tmc.dlq"
    #: A dead-lettered value is cut to this size (a too-large record must still fit).
    dead_letter_max_value_bytes: PositiveInt = 64 * 1024
    #: Content nested deeper than this (objects and arrays) is dead-lettered unparsed:
    #: TMC contents are a few levels deep, and a hostile depth must not reach the parser.
    max_json_depth: Annotated[int, Field(gt=0, le=500)] = 64

    @field_validator("topics", "keys", mode="before")
    @classmethod
    def _ordered_list_form(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        merged: dict[Any, Any] = {}
        for i, item in enumerate(value):
            if not isinstance(item, dict) or len(item) != 1:
                raise ValueError(f"item {i}: write one 'pattern: value' mapping per item")
            ((pattern, target),) = item.items()
            if pattern in merged:
                raise ValueError(f"item {i}: pattern {pattern!r} is listed twice")
            merged[pattern] = target
        return merged

    @field_validator("topics")
    @classmethod
    def _some_route(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError(
                "map at least one pattern to a topic (with no route, every message would "
                "be dead-lettered as 'no route'); use \"*\" for all"
            )
        if any(not pattern.strip() for pattern in value):
            raise ValueError("a pattern is empty")
        return value

    @field_validator("keys")
    @classmethod
    def _non_empty_keys(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        problems = []
        for pattern, fields in value.items():
            if not fields:
                problems.append((pattern, "list at least one field"))
            elif any(not field.strip() for field in fields):
                problems.append((pattern, "a field name is empty"))
        if problems:
            raise _Problems(*problems)
        return value


class PipelineConfig(_Model):
    #: Deliveries held and not yet confirmed; the sources stop reading at this limit.
    max_in_flight: PositiveInt = 20_000
    batch_max_messages: PositiveInt = 2_000
    batch_linger_ms: Annotated[float, Field(ge=0)] = 20.0
    #: Recently committed message ids remembered, so a redelivery is confirmed, not re-sent.
    dedupe_cache_size: PositiveInt = 200_000
    #: Back-off between attempts of a batch the sink could not commit.
    retry_backoff_min_s: PositiveFloat = 0.5
    retry_backoff_max_s: PositiveFloat = 30.0
    #: After this long without committing a batch that the sink has aborted, its
    #: messages are sent back as failed (TMC redelivers them later). 0 = never.
    give_up_after_s: Annotated[float, Field(ge=0)] = 0.0
    #: On shutdown, how long to wait for in-flight messages to be committed and confirmed.
    drain_timeout_s: PositiveFloat = 20.0
    #: While idle, how often the sink's broker is asked whether it answers (for /readyz).
    sink_probe_interval_s: PositiveFloat = 10.0
    #: /readyz reports the sink stalled when one batch has been in it this long.
    sink_stall_s: PositiveFloat = 60.0

    @model_validator(mode="after")
    def _backoff_order(self) -> PipelineConfig:
        if self.retry_backoff_max_s < self.retry_backoff_min_s:
            raise _Problems(("retry_backoff_max_s", "must be >= retry_backoff_min_s"))
        return self


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: auto = JSON, or a readable console format when stdout is a terminal.
    format: Literal["auto", "json", "console"] = "auto"
    #: Put every message id of a batch on its "batch committed" line (first/last only
    #: otherwise). Ids only: message contents are never logged.
    message_ids: bool = False


class HttpConfig(_Model):
    """The one HTTP port: /metrics (Prometheus), /livez, /readyz."""

    enabled: bool = True
    host: str = "0.0.0.0"  # noqa: S104 - probes and scrapes come from outside the pod
    #: 0 picks a free port (tests); the bound port is logged.
    port: Annotated[int, Field(ge=0, le=65535)] = 9108


class BridgeConfig(_Model):
    source: SourceConfig
    sink: SinkConfig
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)

    @model_validator(mode="after")
    def _sink_topic_names(self) -> BridgeConfig:
        # Checked here, not at send time: a bad name would dead-letter every message of
        # its route (or fail the dead-letter topic itself).
        names = [(f"routing.topics.{p}", name) for p, name in self.routing.topics.items()]
        names.append(("routing.dead_letter_topic", self.routing.dead_letter_topic))
        problems = []
        for key, name in names:
            if self.sink.type == "rocketmq" and not _ROCKETMQ_TOPIC.match(name):
                problems.append(
                    (
                        key,
                        f"{name!r} is not a valid RocketMQ topic name "
                        "(letters, digits, _ - % |; no dots; at most 127 characters)",
                    )
                )
            if self.sink.type == "kafka" and (not _KAFKA_TOPIC.match(name) or name in (".", "..")):
                problems.append(
                    (
                        key,
                        f"{name!r} is not a valid Kafka topic name "
                        "(letters, digits, . _ -; at most 249 characters; not . or ..)",
                    )
                )
        if problems:
            raise _Problems(*problems)
        return self
