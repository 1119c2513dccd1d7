"""Checks beyond the file, made by ``check-config`` and ``run`` alike: each selected
adapter's own (secret files are readable; for Kafka, the librdkafka configuration is
built offline). Touches no network."""

from __future__ import annotations

from bridge.config.models import BridgeConfig
from bridge.config_fields import _report, _report_lines
from bridge.errors import ConfigError


def check_runtime(config: BridgeConfig) -> None:
    """Raises ConfigError naming every bad key, never a secret."""
    problems: list[str] = []
    for kind, section in (
        (config.source_kind, config.source.selected),
        (config.sink_kind, config.sink.selected),
    ):
        try:
            kind.check(section)
        except ConfigError as exc:
            problems += _report_lines(str(exc))
    if problems:
        raise ConfigError(_report(problems))
