"""The ``source.tmc`` adapter's registration: its type name, config model and factory.

The implementation is imported inside the factory, so reading a config loads none of it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.config_fields import public_url
from bridge.kinds import Reached, SourceKind
from bridge.sources.tmc.config import TmcSourceConfig

if TYPE_CHECKING:
    from bridge.observability.metrics import Metrics
    from bridge.pipeline.ports import Source, Submit


def _build(config: TmcSourceConfig, submit: Submit, metrics: Metrics) -> Source:
    # Imported here: reading a config never loads websockets.
    from bridge.sources.tmc.connection import TmcSource

    return TmcSource(config, submit, metrics=metrics)


def _check(config: TmcSourceConfig) -> None:
    config.secret()  # the secret file must be readable


def _summary(config: TmcSourceConfig) -> str:
    groups = ",".join(f"{g}x{n}" for g, n in config.group_connections())
    return f"tmc {public_url(config.url)} app_key={config.app_key} groups={groups}"


def _connect_check(config: TmcSourceConfig, timeout_s: float) -> list[Reached]:
    from bridge.sources.tmc.connect_check import check

    return check(config, timeout_s)


KIND = SourceKind(
    name="tmc",
    config=TmcSourceConfig,
    build=_build,
    summary=_summary,
    log_fields=lambda c: {"groups": dict(c.group_connections())},
    # Each group is a stream of its own under it: marker keys tmc/<app_key>/<group>|tmc.
    namespace=lambda c: f"tmc/{c.app_key}",
    check=_check,
    groups=lambda c: c.group_names(),
    connect_check=_connect_check,
)
