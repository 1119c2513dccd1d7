"""The ``source.tmc`` adapter's registration: its type name, config model and factory.

The implementation is imported inside the factory, so reading a config loads none of it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.config_fields import public_url
from bridge.kinds import SourceKind
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


KIND = SourceKind(
    name="tmc",
    config=TmcSourceConfig,
    build=_build,
    summary=lambda c: f"tmc {public_url(c.url)} app_key={c.app_key} group={c.group}",
    log_fields=lambda c: {"group": c.group, "connections": c.connections},
    namespace=lambda c: f"tmc/{c.app_key}/{c.group}",
    check=_check,
)
