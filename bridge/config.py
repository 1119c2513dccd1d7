"""Configuration: YAML -> ``${ENV}`` interpolation -> pydantic models.

Rules a user can rely on:

* Unknown keys are errors (``extra="forbid"``), so a typo never silently falls back to a
  default. Every error names the dotted path of the bad key.
* ``${VAR}`` and ``${VAR:-default}`` are replaced in every string value from the process
  environment, before validation. A missing variable without default is an error naming
  both the key and the variable.
* Secrets (``app_secret``, values under ``sink.kafka.extra`` whose name contains
  ``password`` or ``secret``) are ``SecretStr``: they are never part of a repr, a log line
  or an error message; pydantic is told to hide inputs in its errors.
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
        if self.app_secret is not None:
            return self.app_secret.get_secret_value()
        assert self.app_secret_file is not None
        try:
            return self.app_secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"source.tmc.app_secret_file: cannot read {self.app_secret_file}: {exc.strerror}"
            ) from None


class SourceConfig(_Model):
    type: Literal["tmc"] = "tmc"
    tmc: TmcSourceConfig


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


class SinkConfig(_Model):
    type: Literal["kafka"] = "kafka"
    kafka: KafkaSinkConfig


class RoutingConfig(_Model):
    """TMC topic -> sink topic, and which content field is the record key.

    Patterns are shell globs (``taobao_trade_*``), tried in the order written; the first
    match wins, so put ``"*"`` last.
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


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: auto = JSON, or a readable console format when stdout is a terminal.
    format: Literal["auto", "json", "console"] = "auto"


class BridgeConfig(_Model):
    source: SourceConfig
    sink: SinkConfig
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    log: LogConfig = Field(default_factory=LogConfig)


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
