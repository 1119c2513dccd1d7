"""``check-config --connect`` for the RocketMQ sink and the ONS source: topic routes.

librocketmq offers no call that reaches the cluster without starting a producer or a
consumer (a started push consumer joins its group and takes messages), so this asks the
name server itself, over RocketMQ's remoting protocol, for each topic's route
(``GET_ROUTEINFO_BY_TOPIC``), and opens a TCP connection to each master broker the routes
name. Nothing is sent to a broker and nothing is consumed or produced.

What it cannot prove: the AccessKey/SecretKey. Name servers do not check ACL, and a
signed broker request that proves them without a producer or consumer is not something
this check fakes; wrong credentials show at the bridge's first send or subscribe.

The protocol (as the Java and C++ clients speak it): a frame is a 4-byte big-endian
length, a 4-byte header length (its high byte the serialisation, 0 = JSON), the JSON
header, the body. The route's JSON is fastjson's, whose map keys (broker ids) are not
quoted, so the addresses are read with a pattern, not a JSON parser.
"""

from __future__ import annotations

import json
import re
import socket
import struct
from collections.abc import Sequence

from bridge.config_fields import public_url
from bridge.errors import BridgeError
from bridge.kinds import Reached
from bridge.rocketmq.address import fetch_name_servers
from bridge.rocketmq.config import RocketMQClientConfig

GET_ROUTEINFO_BY_TOPIC = 105
SUCCESS = 0
TOPIC_NOT_EXIST = 17
#: A route answer is a few KiB; more is not a name server.
_MAX_FRAME = 16 * 1024 * 1024
#: ``0:"host:port"`` in brokerAddrs: the master (broker id 0).
_MASTER = re.compile(r'(?:^|[{,])\s*"?0"?\s*:\s*"([^"]+:\d+)"')
_BROKER_ADDRS = re.compile(r'"brokerAddrs"\s*:\s*\{([^}]*)\}')


class RouteError(BridgeError):
    """The name server did not answer, or answered something else than a route."""


def _frame(topic: str, opaque: int) -> bytes:
    header = json.dumps(
        {
            "code": GET_ROUTEINFO_BY_TOPIC,
            "language": "PYTHON",
            "version": 0,
            "opaque": opaque,
            "flag": 0,
            "extFields": {"topic": topic},
        },
        separators=(",", ":"),
    ).encode()
    return struct.pack(">II", 4 + len(header), len(header)) + header


def _read_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise RouteError("the name server closed the connection")
        out += chunk
    return bytes(out)


def route(address: str, topic: str, timeout_s: float) -> list[str] | None:
    """The master broker addresses of ``topic`` from the name server at ``host:port``;
    None when the name server knows no such topic. Raises RouteError, OSError."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        sock.sendall(_frame(topic, 1))
        (length,) = struct.unpack(">I", _read_exact(sock, 4))
        if not 4 <= length <= _MAX_FRAME:
            raise RouteError(f"{address} answered a frame of {length} bytes: not a name server")
        data = _read_exact(sock, length)
    (mark,) = struct.unpack(">I", data[:4])
    header_len = mark & 0xFFFFFF
    if mark >> 24 != 0 or header_len > length - 4:
        raise RouteError(f"{address} answered in an unknown serialisation: not a name server")
    try:
        header = json.loads(data[4 : 4 + header_len])
    except ValueError:
        raise RouteError(f"{address} answered a header that is not JSON") from None
    code = header.get("code") if isinstance(header, dict) else None
    if code == TOPIC_NOT_EXIST:
        return None
    if code != SUCCESS:
        remark = str(header.get("remark") or "") if isinstance(header, dict) else ""
        raise RouteError(f"{address} refused the route lookup: code {code} {remark[:200]}")
    body = data[4 + header_len :].decode("utf-8", "replace")
    masters: list[str] = []
    for addrs in _BROKER_ADDRS.findall(body):
        masters += _MASTER.findall(addrs)
    return masters


def _name_servers(config: RocketMQClientConfig, timeout_s: float) -> list[str]:
    if config.name_server is not None:
        listed = config.name_server
    else:
        listed = fetch_name_servers(config.name_server_domain or "", timeout_s)
    return [a.strip() for a in listed.split(";") if a.strip()]


def _reachable(address: str, timeout_s: float) -> str | None:
    """None when a TCP connection to ``host:port`` opens, else why not."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return None
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


def check(
    config: RocketMQClientConfig, part: str, topics: Sequence[str], timeout_s: float
) -> list[Reached]:
    """One line: every topic's route found on a name server and its masters reachable."""
    where = config.name_server or public_url(config.name_server_domain or "")
    part = f"{part} {where}"
    try:
        servers = _name_servers(config, timeout_s)
    except BridgeError as exc:
        return [Reached(part, False, str(exc))]
    last_error = "no name server listed"
    for server in servers:
        missing: list[str] = []
        masters: set[str] = set()
        try:
            for topic in dict.fromkeys(topics):
                found = route(server, topic, timeout_s)
                if found is None:
                    missing.append(topic)
                else:
                    masters.update(found)
        except (OSError, RouteError) as exc:
            last_error = f"name server {server}: {type(exc).__name__}: {exc}"
            continue  # the next name server may answer
        if missing:
            return [
                Reached(
                    part,
                    False,
                    f"name server {server} has no route for: {', '.join(missing)} "
                    "(create the topics; a broker auto-creating topics creates them only "
                    "at the first send)",
                )
            ]
        down = [f"{a} ({why})" for a in sorted(masters) if (why := _reachable(a, timeout_s))]
        if down:
            return [
                Reached(part, False, f"routes found, but brokers unreachable: {'; '.join(down)}")
            ]
        return [
            Reached(
                part,
                True,
                f"routes of {len(set(topics))} topic(s) from {server}; master broker(s) "
                f"{', '.join(sorted(masters))} reachable (credentials are not checked here)",
            )
        ]
    return [Reached(part, False, f"no name server answered ({last_error})")]
