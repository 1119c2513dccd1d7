"""Configuration: YAML -> ``${ENV}`` interpolation -> pydantic models.

Rules a user can rely on:

* Unknown keys are errors (``extra="forbid"``), so a typo never silently falls back to a
  default. Every error names the dotted path of the bad key.
* ``${VAR}`` and ``${VAR:-default}`` are replaced in every string value from the process
  environment, before validation. A missing variable without default is an error naming
  both the key and the variable.
* Secrets (``app_secret``, RocketMQ/ONS ``secret_key``, values under ``sink.kafka.extra``)
  are ``SecretStr`` or treated as such: they are never part of a repr, a log line or an
  error message; pydantic is told to hide inputs in its errors. Each secret can also come
  from a file (``*_file``), e.g. a mounted Kubernetes Secret.
* ``source.type`` / ``sink.type`` pick the adapter; exactly the section of that name must
  be present (``source.tmc`` or ``source.ons``, ``sink.kafka`` or ``sink.rocketmq``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from bridge.errors import ConfigError

#: RocketMQ's own topic rule (TopicValidator): no dots, unlike Kafka.
_ROCKETMQ_TOPIC = re.compile(r"^[%|a-zA-Z0-9_-]{1,127}$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class TmcSourceConfig(_Model):
    """TMC WebSocket source (shared/tmc-protocol.md §5, §8)."""

    url: str = "ws://mc.api.taobao.com/"
    app_key: str
    app_secret: SecretStr | None = None
    #: Alternative to app_secret: a file holding the secret (e.g. a mounted Secret).
    app_secret_file: Path | None = None
    group: str = "default"
    #: Parallel connections to the same group; the server spreads messages over them.
    connections: PositiveInt = 1
    pull_interval_s: PositiveFloat = 15.0
    #: A WebSocket ping goes out after this long without traffic; pongs are not awaited.
    ping_idle_s: PositiveFloat = 45.0
    #: The platform refuses fast reconnects: the first retry waits at least this long.
    reconnect_min_s: Annotated[float, Field(ge=0)] = 10.0
    reconnect_max_s: PositiveFloat = 120.0
    connect_timeout_s: PositiveFloat = 5.0
    max_frame_bytes: PositiveInt = 16 * 1024 * 1024
    sdk: str = "tmc-bridge"

    @field_validator("url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://")):
            raise ValueError("must start with ws:// or wss://")
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> TmcSourceConfig:
        if (self.app_secret is None) == (self.app_secret_file is None):
            raise ValueError("set exactly one of app_secret and app_secret_file")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self

    def secret(self) -> str:
        """The app secret, read from the file when configured that way."""
        return _secret(self.app_secret, self.app_secret_file, "source.tmc.app_secret_file")


def _secret(value: SecretStr | None, path: Path | None, key: str) -> str:
    if value is not None:
        return value.get_secret_value()
    assert path is not None
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None


class RocketMQClientConfig(_Model):
    """Connection settings shared by the RocketMQ sink and the ONS source.

    The name server is either a ``host:port;host:port`` list or the URL of an address
    server (ONS ``ONSAddr`` style), from which the client fetches and refreshes the list.
    Credentials are ONS/ACL AccessKey + SecretKey; the client signs every request with the
    channel as part of the signed data, and sends nothing signed if the channel is empty.
    """

    name_server: str | None = None
    name_server_domain: str | None = None
    access_key: str | None = None
    secret_key: SecretStr | None = None
    secret_key_file: Path | None = None
    channel: str = "ALIYUN"
    #: Client instance name; default "<group>-<pid>", so clients of different groups in one
    #: process never share librocketmq's per-instance state (name servers, connections).
    instance_name: str | None = None

    @model_validator(mode="after")
    def _addresses_and_credentials(self) -> RocketMQClientConfig:
        if (self.name_server is None) == (self.name_server_domain is None):
            raise ValueError("set exactly one of name_server and name_server_domain")
        if self.name_server is not None:
            for addr in self.name_server.split(";"):
                host, _, port = addr.strip().rpartition(":")
                if not host or not port.isdigit():
                    raise ValueError(f"name_server: {addr!r} is not host:port")
        if self.name_server_domain is not None and not self.name_server_domain.startswith(
            ("http://", "https://")
        ):
            raise ValueError("name_server_domain must be an http(s):// address-server URL")
        has_secret = self.secret_key is not None or self.secret_key_file is not None
        if self.secret_key is not None and self.secret_key_file is not None:
            raise ValueError("set only one of secret_key and secret_key_file")
        if (self.access_key is None) != (not has_secret):
            raise ValueError("access_key and secret_key (or secret_key_file) go together")
        if not self.channel.strip():
            raise ValueError("channel must not be empty (the client signs nothing without it)")
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
    group_id: str
    #: One topic per app on Jushita: ``rmq_sys_jst_<appkey>``.
    topics: list[str] = Field(min_length=1)
    #: Subscription expression: ``*`` or TMC topic names joined with ``||``.
    tag_expression: str = "*"
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

    bootstrap_servers: str
    #: Stable per replica (e.g. contains the pod name) so a restart fences its old self.
    transactional_id: str
    #: raw: the TMC content as received; envelope: JSON with TMC fields, ids as strings.
    value_format: Literal["raw", "envelope"] = "raw"
    transaction_timeout_ms: PositiveInt = 60_000
    #: How long one commit/abort call may block before it is retried.
    commit_timeout_s: PositiveFloat = 30.0
    #: Pass-through librdkafka settings (e.g. security.protocol, sasl.*). Values are
    #: treated as secrets in every message the bridge prints.
    extra: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("extra")
    @classmethod
    def _no_overrides(
        cls, value: dict[str, str | int | float | bool]
    ) -> dict[str, str | int | float | bool]:
        owned = {"transactional.id", "bootstrap.servers", "enable.idempotence"}
        clash = owned & set(value)
        if clash:
            raise ValueError(f"{sorted(clash)} are set by the bridge; use the named options")
        return value


class RocketMQSinkConfig(RocketMQClientConfig):
    """rocketmq-client-python producer: ordered by sharding key, or transactional."""

    #: ordered: each record is sent with the record key (the order id) as sharding key,
    #: so one order's events share a queue, in arrival order. transactional: half message,
    #: journal, commit; no queue selection is possible then (see the README).
    mode: Literal["ordered", "transactional"] = "ordered"
    #: Producer group. In transactional mode the broker asks this group about half
    #: messages whose outcome it never heard, so it must be stable and unique per
    #: replica (like Kafka's transactional_id), and the journal must outlive restarts.
    producer_group: str
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

    @field_validator("keys")
    @classmethod
    def _non_empty_keys(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for pattern, fields in value.items():
            if not fields:
                raise ValueError(f"{pattern!r}: list at least one field")
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
        if self.sink.type == "rocketmq":
            names = [*self.routing.topics.values(), self.routing.dead_letter_topic]
            for name in names:
                if not _ROCKETMQ_TOPIC.match(name):
                    raise ValueError(
                        f"routing: {name!r} is not a valid RocketMQ topic name "
                        "(letters, digits, _ - % |; no dots; at most 127 characters)"
                    )
        return self


def interpolate(node: Any, env: dict[str, str], path: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree."""
    if isinstance(node, dict):
        return {k: interpolate(v, env, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, f"{path}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):

        def repl(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env and env[name] != "":
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{path}: environment variable {name} is not set")

        return _ENV_REF.sub(repl, node)
    return node


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "invalid configuration:\n" + "\n".join(lines)


def parse(data: Any, env: dict[str, str] | None = None) -> BridgeConfig:
    """Validate a parsed YAML document. Raises ConfigError naming every bad key."""
    if not isinstance(data, dict):
        raise ConfigError("invalid configuration: the top level must be a mapping")
    resolved = interpolate(data, dict(os.environ) if env is None else env)
    try:
        return BridgeConfig.model_validate(resolved)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None


def load(path: Path, env: dict[str, str] | None = None) -> BridgeConfig:
    """Read and validate a YAML config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return parse(data, env)
