"""How deep JSON nests, measured on the bytes before any parser sees them. Pure.

Deep input raises RecursionError in ``json.loads``; the sources and the router refuse it
first (a dead letter with the reason), so no parser ever meets it.
"""

from __future__ import annotations

import re

#: Strings (with their escapes) and brackets: enough to measure nesting outside strings.
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def json_too_deep(raw: bytes, limit: int) -> bool:
    """True when objects/arrays in ``raw`` nest deeper than ``limit``, checked before the
    parser sees it (deep input raises RecursionError in ``json.loads``). Counting the
    brackets is C-speed and settles ordinary content; only content with more brackets
    than the limit is scanned token by token."""
    if raw.count(b"{") + raw.count(b"[") <= limit:
        return False
    depth = 0
    for match in _JSON_TOKENS.finditer(raw):
        token = match.group()
        if token in (b"{", b"["):
            depth += 1
            if depth > limit:
                return True
        elif token in (b"}", b"]"):
            depth -= 1
    return False
