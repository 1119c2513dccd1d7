"""Ask an ONS address server (``ONSAddr``) for the name server list.

librocketmq's own support (``set_name_server_domain``) fetches the list once and then
loses the domain in its periodic refresh ("fetchNSAddr with domain is empty"), after
which the client finds no routes; so the bridge fetches the list itself at start-up.
"""

from __future__ import annotations

import re
import urllib.request

from bridge.errors import BridgeError

_ADDRESS = re.compile(r"[\w.-]+:\d+")
#: An address server answers with a few host:port pairs; more is not an answer.
_MAX_ANSWER_BYTES = 4096


def fetch_name_servers(url: str, timeout_s: float = 5.0) -> str:
    """The ``host:port;host:port`` list the address server at ``url`` answers with.

    Raises :class:`~bridge.errors.BridgeError` when it does not answer, or answers with
    anything else.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - configured URL
            text = resp.read(_MAX_ANSWER_BYTES).decode("ascii", "replace").strip()
    except OSError as exc:
        raise BridgeError(f"address server {url} did not answer: {exc}") from None
    addrs = [a.strip() for a in text.split(";") if a.strip()]
    if not addrs or not all(_ADDRESS.fullmatch(a) for a in addrs):
        raise BridgeError(f"address server {url} answered {text[:100]!r}, not host:port;...")
    return ";".join(addrs)
