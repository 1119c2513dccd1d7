"""structlog setup: JSON lines to stdout by default, a readable format on a terminal.

Log lines carry ids and counts, never message contents or secrets: call sites pass only
those, and nothing here serialises configuration objects.

Libraries that log through the standard ``logging`` module (websockets, asyncio) go
through the same processors and renderer, so a log collector sees one JSON stream on
stdout with one schema: ``timestamp``, ``level``, ``logger``, ``event`` and fields.

Ids are written as strings (:func:`ids_as_strings`): TMC ids exceed 2^53, and a log
viewer that parses JSON numbers as JavaScript doubles (Kibana, Grafana, a browser)
would show a neighbouring id instead.
"""

from __future__ import annotations

import logging
import numbers
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal

import structlog

from bridge.errors import ConfigError

Format = Literal["auto", "json", "console"]
LEVEL_ENV = "TMC_BRIDGE_LOG_LEVEL"
FORMAT_ENV = "TMC_BRIDGE_LOG_FORMAT"
#: The values ``log.level`` / ``log.format`` accept; the variables accept the same.
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "json", "console")


def settings(
    level: str = "info", fmt: str = "auto", env: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """The level and format to use: ``TMC_BRIDGE_LOG_LEVEL`` / ``_FORMAT`` win.

    Raises ConfigError naming the variable when one holds anything else than the
    config accepts (it used to fall back to INFO silently, hiding the typo). An empty
    variable counts as unset, as ``${VAR}`` does in the config. ``check-config`` and
    ``run`` call this before anything starts.
    """
    env = os.environ if env is None else env
    chosen = []
    for name, given, allowed in ((LEVEL_ENV, level, LEVELS), (FORMAT_ENV, fmt, FORMATS)):
        override = env.get(name, "").strip().lower()
        value = override or given.strip().lower()
        if value not in allowed:
            where = name if override else f"log {'level' if name == LEVEL_ENV else 'format'}"
            raise ConfigError(f"{where}: must be one of {', '.join(allowed)}")
        chosen.append(value)
    return chosen[0], chosen[1]


def is_id_field(name: str) -> bool:
    """Whether a log field holds ids: ``id``, ``ids``, and any ``…_id`` / ``…_ids``."""
    return name in ("id", "ids") or name.endswith(("_id", "_ids"))


def _id_text(value: object) -> object:
    # numbers.Integral covers numpy's integers too; a bool is an int but not an id.
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, list | tuple | set | frozenset):
        return [_id_text(item) for item in value]
    return value


def ids_as_strings(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: integer values of id fields as decimal strings.

    ``message_id``, ``first_id``, ``last_id``, ``user_id``, ``id``, ``ids``,
    ``message_ids``, …: an integer becomes its decimal text, and so does every integer in
    a list (or tuple, or set) of them; anything else is left as it is. JSON renders an
    int as a number, which JavaScript-based log viewers read as a double, rounding every
    id above 2^53 (9,007,199,254,740,992): TMC message ids are that large. Counts
    (``messages``, ``size``) stay numbers.
    """
    for name, value in event_dict.items():
        if is_id_field(name):
            event_dict[name] = _id_text(value)
    return event_dict


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and the stdlib loggers of the libraries we use.

    ``TMC_BRIDGE_LOG_LEVEL`` and ``TMC_BRIDGE_LOG_FORMAT`` in the environment override
    the configured level and format (e.g. ``debug`` for one pod without a new ConfigMap);
    see :func:`settings`.
    """
    level, fmt = settings(level, fmt)
    numeric = logging.getLevelNamesMapping()[level.upper()]
    console = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=True)
        if console
        else structlog.processors.JSONRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        ids_as_strings,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.add_logger_name,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_NamedPrintLogger.factory,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    # websockets logs every handshake failure at INFO/ERROR with tracebacks; ours say it once.
    logging.getLogger("websockets").setLevel(logging.CRITICAL)


class _NamedPrintLogger(structlog.PrintLogger):
    """PrintLogger (the fast path) that keeps the name given to ``get_logger``."""

    def __init__(self, name: str) -> None:
        super().__init__(sys.stdout)
        self.name = name

    @classmethod
    def factory(cls, *args: object) -> _NamedPrintLogger:
        return cls(str(args[0]) if args else "bridge")


__all__ = [
    "FORMATS",
    "FORMAT_ENV",
    "LEVELS",
    "LEVEL_ENV",
    "Format",
    "configure",
    "ids_as_strings",
    "is_id_field",
    "settings",
]
