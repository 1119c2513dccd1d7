"""Operator commands without brokers: the help text, the replay's pure parts, the
RocketMQ route lookup against a stand-in name server."""

from __future__ import annotations

import argparse
import json
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from bridge import cli
from bridge.config import RoutingConfig
from bridge.headers import H_DLQ_REASON, H_DLQ_TRUNCATED, H_GROUP, H_MESSAGE_ID, H_TOPIC
from bridge.model import SourceMessage
from bridge.observability import logging as obs_logging
from bridge.ops import replay
from bridge.pipeline.routing import Router
from bridge.rocketmq import route_check
from bridge.sinks.rocketmq_config import RocketMQSinkConfig

# -- --help ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_global_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """cli.main configures structlog for the process (levels, cached loggers): inside the
    test process that would silence the debug lines later tests capture."""
    monkeypatch.setattr(obs_logging, "configure", lambda *_a, **_k: None)


def _parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    todo = [("tmc-bridge", cli.build_parser())]
    while todo:
        name, parser = todo.pop()
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {sub}", p) for sub, p in action.choices.items()]


def test_every_command_and_option_has_a_help_line_and_its_default() -> None:
    for name, parser in _parsers():
        text = parser.format_help()
        assert "``" not in text and ":func:" not in text, name
        assert parser.description, name
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{name} {choice.dest}"
                continue
            assert action.help, f"{name} {action.option_strings}"
            if action.default not in (None, argparse.SUPPRESS):
                assert "default" in text, name
        for action in parser._actions:
            if action.option_strings and action.default not in (None, argparse.SUPPRESS):
                shown = str(action.default)
                assert f"(default: {shown})" in " ".join(text.split()), (name, action.dest)


def test_defaults_left_out_only_where_the_help_says_it() -> None:
    text = " ".join(dict(_parsers())["tmc-bridge dead-letters replay"].format_help().split())
    assert "(default: None)" not in text
    assert "(default: the start of the topic)" in text


# -- replay, pure parts ------------------------------------------------------------------


def _dead(router: Router, msg: SourceMessage) -> tuple[bytes, dict[str, bytes]]:
    record = router.route(msg)
    assert record.dead_letter_reason is not None
    return record.value, dict(record.headers)


def test_rebuild_gives_back_the_message_routing_saw() -> None:
    before = Router(RoutingConfig(topics={"taobao_trade_*": "trade"}))
    msg = SourceMessage(
        "tmc", 2**62 + 5, "taobao_item_ItemAdd", b'{"num_iid": 7}', 1700, "pub", 42, group="vip"
    )
    value, headers = _dead(before, msg)
    built = replay.rebuild(value, headers)
    assert isinstance(built, SourceMessage)
    assert (built.message_id, built.topic, built.content) == (
        msg.message_id,
        msg.topic,
        msg.content,
    )
    assert (built.publish_time_ms, built.publisher, built.user_id, built.group) == (
        1700,
        "pub",
        42,
        "vip",
    )
    after = Router(RoutingConfig(topics={"*": "items"}))
    planned = replay.plan(after, "dlq:0:9", value, headers)
    assert planned.outcome == "routed to items"
    assert planned.record is not None
    assert dict(planned.record.headers)[replay.H_REPLAY_OF] == b"dlq:0:9"
    assert planned.record.key == b"7"


def test_an_envelope_the_sink_refused_is_unwrapped() -> None:
    router = Router(RoutingConfig(topics={"*": "all"}), envelope=True)
    msg = SourceMessage("tmc", 9, "taobao_trade_X", b'{"tid": 3}', nick="n", data_id=11)
    record = router.route(msg)
    dead = router.dead_letter(record, "MSG_SIZE_TOO_LARGE")
    built = replay.rebuild(dead.value, dict(dead.headers))
    assert isinstance(built, SourceMessage)
    assert (built.content, built.nick, built.data_id) == (b'{"tid": 3}', "n", 11)


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({H_TOPIC: b"t", H_MESSAGE_ID: b"1"}, "not a dead letter"),
        ({H_DLQ_REASON: b"x", H_DLQ_TRUNCATED: b"true", H_MESSAGE_ID: b"1"}, "cut"),
        ({H_DLQ_REASON: b"gzip content is truncated", H_MESSAGE_ID: b"1"}, "could not decode"),
        ({H_DLQ_REASON: b"ONS body is not JSON: x", H_MESSAGE_ID: b"1"}, "could not decode"),
        ({H_DLQ_REASON: b"no route for topic t", H_GROUP: b"g"}, "no tmc.message_id"),
    ],
)
def test_what_is_not_replayed(headers: dict[str, bytes], why: str) -> None:
    built = replay.rebuild(b"{}", headers)
    assert isinstance(built, str) and built.startswith("skipped:") and why in built


def test_marker_round_trip() -> None:
    done = [(0, 5), (0, 6), (0, 7), (1, 3), (0, 9)]
    marker = replay.marker_record("dlq", done)
    assert json.loads(marker.value) == {"replayed": {"0": [[5, 7], [9, 9]], "1": [[3, 3]]}}
    assert replay.marker_offsets(marker.value) == set(done)
    assert replay.marker_offsets(b"not json") == set()


def test_selection() -> None:
    pick = replay.Selection(since_ms=100, until_ms=200, reason="No Route")
    assert pick.wants(150, "no route for topic x")
    assert not pick.wants(200, "no route for topic x")
    assert not pick.wants(99, "no route for topic x")
    assert not pick.wants(150, "content is not JSON")


# -- RocketMQ route lookup ---------------------------------------------------------------


class _NameServer:
    """Answers GET_ROUTEINFO_BY_TOPIC: a route (fastjson's unquoted broker ids) for the
    known topics, TOPIC_NOT_EXIST for the others."""

    def __init__(self, known: dict[str, str]) -> None:
        self.known = known
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                _length, header_len = struct.unpack(">II", conn.recv(8))
                header = json.loads(conn.recv(header_len))
                topic = header["extFields"]["topic"]
                broker = self.known.get(topic)
                body = b""
                if broker is None:
                    reply = {"code": 17, "remark": f"No topic route info for {topic}"}
                else:
                    reply = {"code": 0}
                    addrs = '{0:"' + broker + '",1:"10.0.0.9:1"}'
                    body = (
                        '{"brokerDatas":[{"brokerAddrs":' + addrs + ',"brokerName":"b"}],'
                        '"queueDatas":[]}'
                    ).encode()
                reply["opaque"] = header["opaque"]
                raw = json.dumps(reply).encode()
                conn.sendall(struct.pack(">II", 4 + len(raw) + len(body), len(raw)) + raw + body)

    def close(self) -> None:
        self.sock.close()


def test_route_check_finds_routes_and_reaches_the_master() -> None:
    broker = socket.create_server(("127.0.0.1", 0))
    master = f"127.0.0.1:{broker.getsockname()[1]}"
    names = _NameServer({"orders": master, "tmc_dlq": master})
    try:
        config = RocketMQSinkConfig(name_server=f"127.0.0.1:1;{names.address}", producer_group="pg")
        [line] = route_check.check(config, "sink rocketmq", ["orders", "tmc_dlq"], 2.0)
        assert line.ok, line
        assert master in line.detail and "10.0.0.9" not in line.detail  # the master only
        [line] = route_check.check(config, "sink rocketmq", ["orders", "nope"], 2.0)
        assert not line.ok and "no route for: nope" in line.detail
        broker.close()
        [line] = route_check.check(config, "sink rocketmq", ["orders"], 2.0)
        assert not line.ok and "brokers unreachable" in line.detail
    finally:
        names.close()
        broker.close()


def test_route_check_without_a_name_server() -> None:
    config = RocketMQSinkConfig(name_server="127.0.0.1:1", producer_group="pg")
    [line] = route_check.check(config, "sink rocketmq", ["orders"], 1.0)
    assert not line.ok and line.detail.startswith("no name server answered")
