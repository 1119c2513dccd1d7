"""``check-config --connect``: reach the source and the sink, take and write nothing.

Each adapter does its own part (its kind's ``connect_check``, :mod:`bridge.kinds`); this
module collects the topics the sink must have, runs both parts and prints one line each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from bridge.kinds import Reached

if TYPE_CHECKING:
    from bridge.config import BridgeConfig


def needed_topics(config: BridgeConfig) -> list[str]:
    """Every sink topic the bridge may write to: the routes' (a group's own ones too), the
    filters' divert targets and the dead-letter topic, each once, in that order."""
    routing = config.routing
    names = list(routing.topics.values())
    for own in routing.groups.values():
        names += list((own.topics or {}).values())
    names += [rule.divert_to for rule in config.filters if rule.divert_to]
    names.append(routing.dead_letter_topic)
    return list(dict.fromkeys(names))


def reach(config: BridgeConfig, timeout_s: float) -> list[Reached]:
    """The source's lines, then the sink's. An adapter without a check says so (not ok).
    Whatever an adapter raises becomes its line: the other part is still tried."""
    lines: list[Reached] = []
    source = config.source_kind
    check_source = source.connect_check
    if check_source is None:
        lines.append(Reached(f"source {source.name}", False, "no connectivity check offered"))
    else:
        lines += _guarded(
            f"source {source.name}", lambda: check_source(config.source.selected, timeout_s)
        )
    sink = config.sink_kind
    check_sink = sink.connect_check
    if check_sink is None:
        lines.append(Reached(f"sink {sink.name}", False, "no connectivity check offered"))
    else:
        topics = needed_topics(config)
        lines += _guarded(
            f"sink {sink.name}", lambda: check_sink(config.sink.selected, topics, timeout_s)
        )
    return lines


def _guarded(part: str, run: Callable[[], list[Reached]]) -> list[Reached]:
    from bridge.errors import BridgeError

    try:
        return run()
    except BridgeError as exc:  # e.g. a secret file gone since the config check
        return [Reached(part, False, str(exc))]
    except Exception as exc:  # a bug in a check: still one line, and the other part runs
        return [Reached(part, False, f"check failed: {type(exc).__name__}: {exc}")]


def render(line: Reached) -> str:
    """``<part>: ok (<detail>)`` or ``<part>: FAILED: <detail>``, one line."""
    detail = " ".join(line.detail.split())
    return f"{line.part}: ok ({detail})" if line.ok else f"{line.part}: FAILED: {detail}"
