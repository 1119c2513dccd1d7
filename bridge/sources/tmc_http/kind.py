"""The ``source.tmc_http`` adapter's registration: its type name, config model and factory.

Its namespace and stream are the WebSocket source's (``tmc/<app_key>``, and the group as
the stream: marker keys ``tmc/<app_key>/<group>|tmc``) on purpose: both read the same TMC
queue, so the committed-ids store knows a message whichever way it came.
The implementation (and httpx) is imported inside the factory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.config_fields import public_url
from bridge.kinds import Reached, SourceKind
from bridge.sources.tmc_http.config import TmcHttpSourceConfig

if TYPE_CHECKING:
    from bridge.observability.metrics import Metrics
    from bridge.pipeline.ports import Source, Submit


def _build(config: TmcHttpSourceConfig, submit: Submit, metrics: Metrics) -> Source:
    from bridge.sources.tmc_http.source import TmcHttpSource

    return TmcHttpSource(config, submit, metrics=metrics)


def _check(config: TmcHttpSourceConfig) -> None:
    config.secret()  # the secret file must be readable


def _connect_check(config: TmcHttpSourceConfig, timeout_s: float) -> list[Reached]:
    from bridge.sources.tmc_http.connect_check import check

    return check(config, timeout_s)


KIND = SourceKind(
    name="tmc_http",
    config=TmcHttpSourceConfig,
    build=_build,
    summary=lambda c: (
        f"tmc_http {public_url(c.url)} app_key={c.app_key} group={c.group} quantity={c.quantity}"
    ),
    log_fields=lambda c: {"group": c.group, "quantity": c.quantity, "sign_method": c.sign_method},
    namespace=lambda c: f"tmc/{c.app_key}",
    check=_check,
    connect_check=_connect_check,
)
