"""Every source and sink the bridge can run, by type name. One line per adapter."""

from __future__ import annotations

from typing import Any

from bridge.kinds import SinkKind, SourceKind
from bridge.sinks import kafka_kind, rocketmq_kind
from bridge.sources import ons_kind
from bridge.sources.tmc import kind as tmc_kind
from bridge.sources.tmc_http import kind as tmc_http_kind

#: The first one is the default of ``source.type``.
SOURCES: dict[str, SourceKind[Any]] = {
    k.name: k for k in (tmc_kind.KIND, ons_kind.KIND, tmc_http_kind.KIND)
}
#: The first one is the default of ``sink.type``.
SINKS: dict[str, SinkKind[Any]] = {k.name: k for k in (kafka_kind.KIND, rocketmq_kind.KIND)}
