"""What a platform error means for the operator: TOP gateway errors and TMC login refusals
turned into the action to take, in the terms of the open platform console.

Pure: no I/O, no state. :func:`hint` takes whatever the error carried (a TOP ``code`` or a
CONNECTACK StatusCode, a TOP ``sub_code``, and a message: the ``msg``/``sub_msg`` of a TOP
error or the StatusPhrase of a refused CONNECT) and returns one sentence, or None when the
error is not one it knows.

The config keys a hint names depend on where the error came from: ``section`` is the
config section of the source that made the call (``source.tmc`` for a WebSocket login
and its auth token, ``source.tmc_http`` for the HTTP API source), ``url_key`` the key
under it that holds the gateway's URL (``api_url`` for the auth token's gateway, ``url``
for the HTTP API source). Hints about what only the WebSocket source has (connections,
reconnects, the auth token) always name ``source.tmc``.

Matching, first hit wins: the ``sub_code`` exactly (the most specific), then known phrases
in the message or the sub_code, then the numeric TOP ``code``. Phrases come before codes
because a CONNECTACK's StatusCode is not a TOP code: its phrase says more. The real TMC
server's login refusals are not documented (docs/protocol.md §5.5); the phrases here are the
ones seen or reported, matched case-insensitively as substrings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class _Rule:
    #: The advice; ``{section}`` and ``{url}`` stand for the config section and the
    #: full key of the gateway URL (see :func:`hint`).
    hint: str
    #: TOP error codes (``code``), exact.
    codes: frozenset[int] = frozenset()
    #: TOP sub codes, exact and lower-case; a trailing ``*`` matches a prefix.
    sub_codes: tuple[str, ...] = ()
    #: Lower-case substrings of the message (or the sub_code).
    phrases: tuple[str, ...] = ()


SWITCH_OFF: Final = (
    "the app has not enabled the message service: in the open platform console, "
    "subscribe the app to message topics (app management > message service), then it can "
    "log in"
)

#: In matching order: a more specific rule before a broader one.
_RULES: Final[tuple[_Rule, ...]] = (
    _Rule(
        SWITCH_OFF,
        sub_codes=("isv.tmc-switch-off",),
        phrases=(
            "tmc-switch-off",
            "not enable messaging-channel",
            "messaging-channel feature",
            "message service is not enabled",
        ),
    ),
    _Rule(
        "the server wants a connection token with the login: set source.tmc.auth_token to "
        "on (the token comes from taobao.tmc.auth.get at source.tmc.api_url)",
        phrases=("auth token", "connection token", "auth_token"),
    ),
    _Rule(
        "a seller's authorisation of the app has expired or was cancelled: the seller must "
        "authorise the app again; until then that seller's messages stop (what was already "
        "produced for them still arrives)",
        codes=frozenset({26, 27}),
        sub_codes=(
            "isv.invalid-sessionkey",
            "isv.session-expired",
            "isv.authorization-expired",
            "invalid-sessionkey",
            "isv.user-not-authorized",
        ),
        phrases=(
            "invalid session",
            "missing session",
            "session expired",
            "sessionkey",
            "authorization expired",
            "authorisation expired",
            "authorization cancel",
            "auth expired",
        ),
    ),
    _Rule(
        "the signature does not match: check {section}.app_secret (the App Secret of this "
        "app key in the console; resetting it there invalidates the old one)",
        codes=frozenset({24, 25}),
        sub_codes=("isv.invalid-signature", "isv.missing-signature"),
        phrases=("invalid sign", "sign does not match", "sign error", "signature"),
    ),
    _Rule(
        "the platform does not know this app key: check {section}.app_key (the App Key "
        "shown in the console) and that the app is online, not suspended",
        codes=frozenset({28, 29}),
        sub_codes=("isv.appkey-not-exists", "isv.invalid-app-key", "isv.app-not-exist"),
        phrases=(
            "invalid app key",
            "invalid appkey",
            "unknown app_key",
            "unknown app key",
            "appkey not exist",
            "app key not exist",
            "missing app key",
        ),
    ),
    _Rule(
        "the group is not usable: check {section}.group against the groups of this app in "
        "the console (taobao.tmc.groups.get); `default` always exists, others are created "
        "with taobao.tmc.group.add",
        sub_codes=("isv.group-not-exist", "isv.group-not-exists", "isv.invalid-group"),
        phrases=(
            "group not exist",
            "group not found",
            "group does not exist",
            "unknown group",
            "invalid group",
            "no such group",
        ),
    ),
    _Rule(
        "too many connections to this group: lower source.tmc.connections (times the "
        "replicas), and check in the console that no other client holds connections with "
        "this app key and group",
        phrases=("too many connection", "connection limit", "max connection", "connections limit"),
    ),
    _Rule(
        "logins come too fast: raise source.tmc.reconnect_min_s (the platform refuses "
        "quick reconnects)",
        phrases=("reconnect too", "too frequent", "connect too fast"),
    ),
    _Rule(
        "the clock of this host is off: sync it (NTP); the gateway accepts timestamps within "
        "about 10 minutes of its own (GMT+8)",
        codes=frozenset({30, 31}),
        sub_codes=("isv.invalid-timestamp",),
        phrases=("invalid timestamp", "timestamp"),
    ),
    _Rule(
        "the app's API call quota is used up: wait for it to recover (the limit is per "
        "app and time window) or ask for a higher one in the console",
        codes=frozenset({7}),
        sub_codes=("accesscontrol.*", "isv.call-limited", "isp.call-limited"),
        phrases=("call limited", "limited-by", "flow control", "frequency limit"),
    ),
    _Rule(
        "the app lacks the permission for this API: add the message service API package "
        "to the app in the console",
        codes=frozenset({11, 12, 13}),
        sub_codes=("isv.permission-*", "isv.api-permission-*"),
        phrases=("insufficient isv permission", "no permission", "permission denied"),
    ),
    _Rule(
        "the gateway does not know this API: check that {url} is a TOP gateway (…/router/rest)",
        codes=frozenset({21, 22}),
        sub_codes=("isv.invalid-method",),
        phrases=("invalid method",),
    ),
    _Rule(
        "a platform-side failure, usually passing: the bridge keeps retrying",
        codes=frozenset({10, 15}),
        sub_codes=("isp.*",),
        phrases=("service currently unavailable", "remote service error"),
    ),
)


def _sub_code_matches(patterns: tuple[str, ...], sub_code: str) -> bool:
    return any(sub_code.startswith(p[:-1]) if p.endswith("*") else sub_code == p for p in patterns)


def hint(
    code: int | str | None,
    sub_code: str | None,
    message: str | None,
    *,
    section: str = "source.tmc",
    url_key: str = "api_url",
) -> str | None:
    """What to do about a platform error, or None when it is not a known one.

    ``code``: a TOP error code or a CONNECTACK StatusCode (an int, or its text); a code
    that is not a number (``"isv.tmc-switch-off"``) is taken as a sub code. ``message``:
    the error's text (TOP ``msg`` and ``sub_msg``, or a StatusPhrase). ``section``: the
    config section whose keys the hint names (``source.tmc``, ``source.tmc_http``);
    ``url_key``: its key holding the gateway's URL (``api_url``, ``url``).
    """
    rule = _match(code, sub_code, message)
    if rule is None:
        return None
    return rule.hint.replace("{section}", section).replace("{url}", f"{section}.{url_key}")


def _match(code: int | str | None, sub_code: str | None, message: str | None) -> _Rule | None:
    number: int | None = None
    subs = [s.strip().lower() for s in (sub_code,) if s]
    if isinstance(code, int) and not isinstance(code, bool):
        number = code
    elif isinstance(code, str) and code.strip():
        text = code.strip()
        if text.isascii() and text.isdigit():
            number = int(text)
        else:
            subs.append(text.lower())
    for sub in subs:
        for rule in _RULES:
            if _sub_code_matches(rule.sub_codes, sub):
                return rule
    haystack = " ".join([*subs, (message or "").lower()])
    if haystack.strip():
        for rule in _RULES:
            if any(phrase in haystack for phrase in rule.phrases):
                return rule
    if number is not None:
        for rule in _RULES:
            if number in rule.codes:
                return rule
    return None


def with_hint(text: str, advice: str | None) -> str:
    """``text`` followed by the hint, when there is one and ``text`` does not already
    hold it (what /readyz shows)."""
    return f"{text}; hint: {advice}" if advice and advice not in text else text


__all__ = ["SWITCH_OFF", "hint", "with_hint"]
