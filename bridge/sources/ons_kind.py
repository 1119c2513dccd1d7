"""The ``source.ons`` adapter's registration: its type name, config model and factory.

The implementation is imported inside the factory, so reading a config loads none of it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.config_fields import public_url
from bridge.kinds import Reached, SourceKind
from bridge.rocketmq.config import ensure_native_library
from bridge.sources.ons_config import OnsSourceConfig

if TYPE_CHECKING:
    from bridge.observability.metrics import Metrics
    from bridge.pipeline.ports import Source, Submit


def _build(config: OnsSourceConfig, submit: Submit, metrics: Metrics) -> Source:
    # Imported here: only an ONS bridge loads librocketmq.
    from bridge.sources.ons import OnsSource

    return OnsSource(config, submit, metrics=metrics)


def _check(config: OnsSourceConfig) -> None:
    config.credentials("source.ons.secret_key_file")  # the secret file must be readable


def _connect_check(config: OnsSourceConfig, timeout_s: float) -> list[Reached]:
    # A route lookup on the name server: no consumer is started, nothing is consumed.
    from bridge.rocketmq.route_check import check

    return check(config, f"source ons group={config.group_id}", config.topics, timeout_s)


KIND = SourceKind(
    name="ons",
    config=OnsSourceConfig,
    build=_build,
    summary=lambda c: (
        f"ons {c.name_server or public_url(c.name_server_domain or '')} group={c.group_id}"
    ),
    log_fields=lambda c: {"group": c.group_id, "topics": c.topics},
    namespace=lambda c: f"ons/{c.group_id}",
    check=_check,
    requirements=ensure_native_library,
    connect_check=_connect_check,
)
