"""The bridge's own sections, and the source/sink sections built from the registry."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from bridge import registry
from bridge.config.filters import FilterRule, filter_problems
from bridge.config_fields import (
    PositiveFloat,
    PositiveInt,
    _Model,
    _Problems,
)
from bridge.kinds import SinkKind, SourceKind


def _ordered_list_form(value: Any) -> Any:
    """``[{pattern: value}, ...]`` -> an ordered dict; anything else as it is."""
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


def _check_topics(value: dict[str, str]) -> dict[str, str]:
    if not value:
        raise ValueError(
            "map at least one pattern to a topic (with no route, every message would "
            "be dead-lettered as 'no route'); use \"*\" for all"
        )
    if any(not pattern.strip() for pattern in value):
        raise ValueError("a pattern is empty")
    return value


def _check_keys(value: dict[str, list[str]]) -> dict[str, list[str]]:
    problems = []
    for pattern, fields in value.items():
        if not fields:
            problems.append((pattern, "list at least one field"))
        elif any(not field.strip() for field in fields):
            problems.append((pattern, "a field name is empty"))
    if problems:
        raise _Problems(*problems)
    return value


class GroupRoutingConfig(_Model):
    """``routing.groups.<group>``: a TMC group's own routes. What it leaves out comes from
    ``routing`` itself (a group may set only ``topics``, or only ``keys``)."""

    topics: dict[str, str] | None = None
    keys: dict[str, list[str]] | None = None

    @field_validator("topics", "keys", mode="before")
    @classmethod
    def _ordered(cls, value: Any) -> Any:
        return _ordered_list_form(value)

    @field_validator("topics")
    @classmethod
    def _some_route(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return None if value is None else _check_topics(value)

    @field_validator("keys")
    @classmethod
    def _non_empty_keys(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        return None if value is None else _check_keys(value)


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

    #: A TMC group's own routes (``source.tmc.groups``), by group name; a group not
    #: listed here uses the routes above.
    groups: dict[str, GroupRoutingConfig] = Field(default_factory=dict)

    @field_validator("topics", "keys", mode="before")
    @classmethod
    def _ordered_list_form(cls, value: Any) -> Any:
        return _ordered_list_form(value)

    @field_validator("topics")
    @classmethod
    def _some_route(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_topics(value)

    @field_validator("keys")
    @classmethod
    def _non_empty_keys(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return _check_keys(value)

    def for_group(self, group: str) -> RoutingConfig:
        """The routes of ``group``: its own where it has them, the common ones else."""
        own = self.groups.get(group)
        if own is None:
            return self
        return self.model_copy(
            update={
                "topics": own.topics if own.topics is not None else self.topics,
                "keys": own.keys if own.keys is not None else self.keys,
                "groups": {},
            }
        )


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
    #: Sink unavailable (failing, not connected or stalled) this long: log out of the
    #: source until the sink answers again, instead of holding pushes the source will
    #: redeliver after newer events, and confirming none of them (the platform slows
    #: down, and may block, an app key that keeps a low confirm ratio). 60 s is past
    #: source.tmc.max_hold_s, so nothing still deliverable is given up. 0 = never.
    step_back_after_s: Annotated[float, Field(ge=0)] = 60.0

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


class Section(_Model):
    """``source`` or ``sink``: a ``type`` and exactly the section of that name.

    The concrete models are built from the registry (:func:`_section_model`): one optional
    field per registered adapter, named after it, holding that adapter's config model.
    """

    type: str

    @model_validator(mode="after")
    def _section_of_type(self) -> Section:
        where = self._where
        sections = {name: getattr(self, name) for name in type(self).model_fields if name != "type"}
        if sections.get(self.type) is None:
            raise ValueError(f"{where}.type is {self.type!r} but {where}.{self.type} is missing")
        extra = sorted(name for name, value in sections.items() if name != self.type and value)
        if extra:
            raise ValueError(f"{where}.{extra[0]} is set but {where}.type is {self.type!r}")
        return self

    @property
    def _where(self) -> str:
        return type(self).__name__.removesuffix("Config").lower()

    @property
    def selected(self) -> BaseModel:
        """The config of the adapter ``type`` names."""
        selected: BaseModel = getattr(self, self.type)
        return selected

    def get(self, model: builtins.type[_S]) -> _S | None:
        """The selected config if it is a ``model``, else None (typed access)."""
        selected = self.selected
        if isinstance(selected, model):
            return selected
        return None


_S = TypeVar("_S", bound=BaseModel)


def _section_model(
    where: str, kinds: Mapping[str, SourceKind[Any] | SinkKind[Any]]
) -> type[Section]:
    names = tuple(kinds)
    fields: dict[str, Any] = {"type": (Literal[names], names[0])}
    for name, kind in kinds.items():
        fields[name] = (kind.config | None, None)
    model: type[Section] = create_model(f"{where.title()}Config", __base__=Section, **fields)
    return model


if TYPE_CHECKING:
    SourceConfig = Section
    SinkConfig = Section
else:
    SourceConfig = _section_model("source", registry.SOURCES)
    SinkConfig = _section_model("sink", registry.SINKS)


class BridgeConfig(_Model):
    source: SourceConfig
    sink: SinkConfig
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    #: Drop or divert messages by topic and seller (bridge/config/filters.py).
    filters: list[FilterRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _filter_rules(self) -> BridgeConfig:
        problems = filter_problems(
            self.filters,
            max_in_flight=self.pipeline.max_in_flight,
            topic_problem=self.sink_kind.topic_problem,
        )
        if problems:
            raise _Problems(*((f"filters.{key}", problem) for key, problem in problems))
        return self

    @property
    def source_kind(self) -> SourceKind[Any]:
        return registry.SOURCES[self.source.type]

    @property
    def sink_kind(self) -> SinkKind[Any]:
        return registry.SINKS[self.sink.type]

    @property
    def value_format(self) -> str:
        """``raw`` or ``envelope``, from the selected sink's section."""
        return str(getattr(self.sink.selected, "value_format", "raw"))

    @model_validator(mode="after")
    def _sink_topic_names(self) -> BridgeConfig:
        # Checked here, not at send time: a bad name would dead-letter every message of
        # its route (or fail the dead-letter topic itself). Each sink knows its rule.
        names = [(f"routing.topics.{p}", name) for p, name in self.routing.topics.items()]
        names.append(("routing.dead_letter_topic", self.routing.dead_letter_topic))
        for group, own in self.routing.groups.items():
            for p, name in (own.topics or {}).items():
                names.append((f"routing.groups.{group}.topics.{p}", name))
        problem_of = self.sink_kind.topic_problem
        problems = [(key, problem) for key, name in names if (problem := problem_of(name))]
        groups = self.source_kind.groups(self.source.selected)
        for group in self.routing.groups:
            if group not in groups:
                known = ", ".join(groups) if groups else "none"
                problems.append(
                    (
                        f"routing.groups.{group}",
                        f"{self.source.type} has no group {group!r} (its groups: {known})",
                    )
                )
        if problems:
            raise _Problems(*problems)
        return self
