"""structlog setup: JSON lines to stdout by default, a readable format on a terminal.

Log lines carry ids and counts, never message contents or secrets: call sites pass only
those, and nothing here serialises configuration objects.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal

import structlog

Format = Literal["auto", "json", "console"]


def configure(level: str = "info", fmt: Format = "auto") -> None:
    """Configure structlog and the stdlib loggers of the libraries we use.

    ``TMC_BRIDGE_LOG_LEVEL`` in the environment overrides ``level``.
    """
    level = os.environ.get("TMC_BRIDGE_LOG_LEVEL", level).lower()
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    console = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=True)
        if console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    # websockets logs every handshake failure at INFO/ERROR with tracebacks; ours say it once.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
