"""What an adapter declares to be registered: its type name, its config model, a factory.

Each source and sink module declares one :class:`SourceKind` or :class:`SinkKind` next to
its config model (``bridge/sources/tmc/config.py``, ``bridge/sinks/kafka_config.py``, …);
:mod:`bridge.registry` lists them. The config (``source.type`` and the section of that
name), the composition root and ``check-config`` all read the registry, so adding an
adapter is its own modules plus one line there.

Factories import their implementation lazily: reading a config loads neither
librdkafka nor librocketmq nor websockets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from bridge.observability.metrics import Metrics
    from bridge.pipeline.ports import BatchSink, CommittedIds, Source, Submit

C = TypeVar("C", bound=BaseModel)


def _nothing(*_args: object) -> None:
    return None


def _no_groups(_config: object) -> list[str]:
    return []


@dataclass(frozen=True)
class Reached:
    """One line of ``check-config --connect``: what was tried, and whether it went through.

    ``detail`` is one line without secrets: what was proven when ``ok``, else the error
    and what to check."""

    part: str
    ok: bool
    detail: str


#: ``check-config --connect`` of a source: log in (or make one signed call) and leave
#: without taking a message. Gets the config and a time limit per attempt in seconds.
SourceConnectCheck = Callable[[C, float], list[Reached]]
#: ``check-config --connect`` of a sink: reach the broker and look up ``topics`` (the
#: routes' topics and the dead-letter topic) without writing anything.
SinkConnectCheck = Callable[[C, Sequence[str], float], list[Reached]]


@dataclass(frozen=True)
class SinkContext:
    """What a sink factory gets besides its own config section."""

    metrics: Metrics
    dead_letter_topic: str
    #: The source's message stream, e.g. ``tmc/<app_key>/<group>``: message ids are
    #: unique within it (a committed-ids store keeps them per namespace).
    namespace: str


@dataclass(frozen=True)
class SourceKind(Generic[C]):
    #: ``source.type`` value, and the name of the section holding ``config``.
    name: str
    config: type[C]
    build: Callable[[C, Submit, Metrics], Source]
    #: One line for ``check-config`` (no secrets).
    summary: Callable[[C], str]
    #: Fields of the "bridge starting" log line (no secrets).
    log_fields: Callable[[C], dict[str, object]]
    #: The stream its message ids are unique in (see :attr:`SinkContext.namespace`).
    namespace: Callable[[C], str]
    #: Checks beyond the file (e.g. a secret file is readable); raises ConfigError.
    check: Callable[[C], None] = _nothing
    #: What must be installed (e.g. a native library); ``check-config`` calls it.
    requirements: Callable[[], None] = field(default=_nothing)
    #: The source's groups that ``routing.groups`` may name (TMC groups); none by default.
    groups: Callable[[C], list[str]] = _no_groups
    #: ``check-config --connect``: log in and leave, consuming nothing; None: not offered.
    connect_check: SourceConnectCheck[C] | None = None


@dataclass(frozen=True)
class SinkKind(Generic[C]):
    #: ``sink.type`` value, and the name of the section holding ``config``.
    name: str
    config: type[C]
    build: Callable[[C, SinkContext], BatchSink]
    summary: Callable[[C], str]
    #: Why a topic name is not valid for this broker, or None when it is.
    topic_problem: Callable[[str], str | None]
    check: Callable[[C], None] = _nothing
    requirements: Callable[[], None] = field(default=_nothing)
    #: The committed-ids store this sink keeps, or None for the in-memory one.
    committed_ids: Callable[[C, SinkContext], CommittedIds | None] = _nothing
    #: ``check-config --connect``: reach the broker, write nothing; None: not offered.
    connect_check: SinkConnectCheck[C] | None = None
