"""Numbers as the sources receive them: the ranges the bridge accepts, and decimal text
read safely. Pure; shared by the TMC session and the ONS mapping."""

from __future__ import annotations

#: The wire type of TMC message ids (§4.5): what a confirm can carry.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Publish times outside 1970-01-01 .. 9999-12-31 (UTC) are not dates any reader accepts.
MAX_TIME_MS = 253_402_300_799_999


def decimal_int64(text: str) -> int | None:
    """The number ``text`` writes in ASCII decimal digits (leading zeros allowed), when it
    is within Int64; else None.

    Checked before ``int()``: ``str.isdigit`` is true for "²" and other Unicode digits,
    and ``int`` refuses more than 4,300 digits; only 19 significant digits reach it.
    """
    digits = text.lstrip("0")
    if not text or len(digits) > 19 or not text.isascii() or not text.isdigit():
        return None
    number = int(digits or "0")
    return number if number <= INT64_MAX else None
