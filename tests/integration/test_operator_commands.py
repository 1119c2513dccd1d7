"""Operator commands against the simulator and a real Kafka: ``check-config --connect``
(logs in, reaches the broker, consumes and writes nothing) and ``dead-letters replay``
(dead letters through the current routing, transactionally, once)."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import cli
from bridge import config as cfgmod
from bridge.errors import ConfigError
from bridge.headers import H_DLQ_REASON, H_MESSAGE_ID
from bridge.model import SourceMessage
from bridge.observability import logging as obs_logging
from bridge.observability.metrics import Metrics
from bridge.ops import replay
from bridge.pipeline.ports import Batch
from bridge.pipeline.routing import Router
from bridge.rocketmq import route_check
from bridge.sinks.kafka import KafkaSink
from bridge.sinks.rocketmq_config import RocketMQSinkConfig
from bridge.sources.tmc.server import PullRequest
from bridge.sources.tmc.simulator import Simulator
from devtools import harness
from devtools.brokers.kafka import KafkaBroker
from devtools.brokers.rocketmq import RocketMQBroker
from tests.integration.conftest import APP_KEY, SECRET, Topics, read_back, simulator

pytestmark = pytest.mark.integration

_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d[ T]|\{")


@pytest.fixture(autouse=True)
def _no_global_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """cli.main configures structlog for the process (levels, cached loggers): inside the
    test process that would silence the debug lines later tests capture."""
    monkeypatch.setattr(obs_logging, "configure", lambda *_a, **_k: None)


def _doc(source: dict[str, Any], bootstrap: str, topics: Topics, **routing: Any) -> dict[str, Any]:
    return {
        "source": source,
        "sink": {
            "type": "kafka",
            "kafka": {
                "bootstrap_servers": bootstrap,
                "transactional_id": f"it-{uuid.uuid4().hex[:8]}",
                "commit_timeout_s": 2.0,
                "dedup": {"topic": f"committed-{topics.trade}"},
            },
        },
        "routing": {
            "topics": {"taobao_trade_*": topics.trade, "*": topics.other},
            "dead_letter_topic": topics.dlq,
            **routing,
        },
    }


def _tmc(sim: Simulator, secret: str = SECRET) -> dict[str, Any]:
    return {"type": "tmc", "tmc": {"url": sim.url, "app_key": APP_KEY, "app_secret": secret}}


def _write(tmp_path: Path, doc: dict[str, Any]) -> str:
    path = tmp_path / f"bridge-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


async def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """The command in a thread (it runs its own event loop; the simulator runs on ours)."""
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, args)
    # The simulator's log lines go to the same stdout: leave them out.
    lines = capsys.readouterr().out.splitlines()
    return code, [line for line in lines if not _LOG_LINE.match(line)]


def _watch_requests(sim: Simulator) -> list[object]:
    """Every request frame the simulator takes after login (pull, confirm, failed)."""
    seen: list[object] = []
    original = sim._on_request

    def spy(conn: Any, event: Any) -> None:
        seen.append(event)
        original(conn, event)

    sim._on_request = spy  # type: ignore[method-assign]
    return seen


# -- check-config --connect ----------------------------------------------------------------


async def test_connect_check_logs_in_and_reaches_kafka_consuming_nothing(
    kafka: KafkaBroker, topics: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with simulator() as sim:
        requests = _watch_requests(sim)
        path = _write(tmp_path, _doc(_tmc(sim), kafka.bootstrap, topics))
        code, out = await _cli(["check-config", "--config", path, "--connect"], capsys)
        assert code == 0, out
        assert out[0].startswith("config ok:")
        assert out[1].startswith("source tmc ") and ": ok (logged in" in out[1], out
        assert "closed at once: no pull, nothing confirmed" in out[1]
        assert out[2].startswith(f"sink kafka {kafka.bootstrap}: ok (metadata"), out
        assert len(out) == 3
        await asyncio.sleep(0.2)  # anything the client sent has reached the simulator
        assert sim.stats.logins_ok == 1
        assert requests == []  # no pull, no confirm, no failed
        assert sim.stats.pushes == 0 and sim.stats.confirmed == 0


async def test_connect_check_with_queued_messages_confirms_none(
    kafka: KafkaBroker, topics: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TMC pushes by itself after a login: whatever came before the close is left
    unconfirmed (it comes back after the confirm timeout); nothing is pulled or
    confirmed."""
    async with simulator(redeliver_on_disconnect=True) as sim:
        sim.publish(50)
        requests = _watch_requests(sim)
        path = _write(tmp_path, _doc(_tmc(sim), kafka.bootstrap, topics))
        code, out = await _cli(["check-config", "--config", path, "--connect"], capsys)
        assert code == 0, out
        await asyncio.sleep(0.2)
        assert not any(isinstance(r, PullRequest) for r in requests)
        assert requests == []
        assert sim.stats.confirmed == 0
        assert sim.stats.outstanding == 50  # all of them still the server's
        assert ": ok (logged in" in out[1], out


async def test_connect_check_wrong_secret_and_dead_broker(
    topics: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with simulator() as sim:
        doc = _doc(_tmc(sim, secret="wrong-secret-0123"), "127.0.0.1:1", topics)
        path = _write(tmp_path, doc)
        code, out = await _cli(
            ["check-config", "--config", path, "--connect", "--timeout-s", "3"], capsys
        )
        assert code == 1
        source, sink = out[1], out[2]
        assert source.startswith("source tmc ") and ": FAILED: TMC login refused" in source
        assert "invalid sign" in source
        assert sink.startswith("sink kafka 127.0.0.1:1: FAILED: no metadata within 3 s:")
        assert "Connection refused" in sink, sink
        assert "wrong-secret-0123" not in "\n".join(out)
        assert sim.stats.logins_failed == 1


async def test_connect_check_names_missing_topics(
    kafka: KafkaBroker, topics: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with simulator() as sim:
        doc = _doc(_tmc(sim), kafka.bootstrap, topics, dead_letter_topic="no-such-dlq")
        code, out = await _cli(
            ["check-config", "--config", _write(tmp_path, doc), "--connect"], capsys
        )
        assert code == 1
        assert ": ok (" in out[1]
        assert "FAILED: reached" in out[2] and "missing topics: no-such-dlq" in out[2], out


async def test_connect_check_http_source_makes_one_harmless_call(
    kafka: KafkaBroker, topics: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with simulator() as sim:
        sim.publish(10)
        gateway = f"http://127.0.0.1:{sim.port}/router/rest"

        def source(secret: str) -> dict[str, Any]:
            return {
                "type": "tmc_http",
                "tmc_http": {"url": gateway, "app_key": APP_KEY, "app_secret": secret},
            }

        path = _write(tmp_path, _doc(source(SECRET), kafka.bootstrap, topics))
        code, out = await _cli(["check-config", "--config", path, "--connect"], capsys)
        assert code == 0, out
        assert "source tmc_http" in out[1] and ": ok (signed call taobao.tmc.auth.get" in out[1]
        assert sim.stats.top_consume_calls == {}
        assert sim.stats.pushes == 0 and sim.stats.outstanding == 10

        path = _write(tmp_path, _doc(source("wrong-secret-0123"), kafka.bootstrap, topics))
        code, out = await _cli(["check-config", "--config", path, "--connect"], capsys)
        assert code == 1
        assert ": FAILED: TOP call taobao.tmc.auth.get refused" in out[1], out
        assert "app_secret" in out[1]  # what to check
        assert "wrong-secret-0123" not in out[1]


# -- dead-letters replay -----------------------------------------------------------------


def _message(i: int, topic: str, content: bytes) -> SourceMessage:
    return SourceMessage(
        source="tmc",
        message_id=(1 << 60) + i,  # above 2^53: must come back exact
        topic=topic,
        content=content,
        publish_time_ms=1_700_000_000_000 + i,
        user_id=42,
        group="default",
    )


def _dead_letter_some(kafka: KafkaBroker, topics: Topics, doc: dict[str, Any]) -> None:
    """Dead letters as a bridge with ``doc``'s routing writes them: 3 without a route,
    2 without their key field, 1 the source could not decode."""
    cfg = cfgmod.parse(doc, env={})
    router = Router(cfg.routing)
    messages = [_message(i, "taobao_item_ItemAdd", b'{"num_iid": %d}' % i) for i in range(3)]
    messages += [_message(10 + i, "taobao_trade_TradeCreate", b'{"x": 1}') for i in range(2)]
    bad = _message(20, "taobao_trade_TradeCreate", b"\x1f\x8b garbage")
    bad.malformed = "gzip content is truncated"
    messages.append(bad)
    records = [router.route(m) for m in messages]
    assert all(r.topic == topics.dlq for r in records)
    sink = KafkaSink(cfg.sink.selected, metrics=Metrics())  # type: ignore[arg-type]
    sink.start()
    try:
        assert sink.write_batch(Batch(records)) == []
    finally:
        sink.close()


async def test_replay_routes_dead_letters_once(
    kafka: KafkaBroker, topics: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = {"type": "tmc", "tmc": {"app_key": APP_KEY, "app_secret": SECRET}}
    before = _doc(source, kafka.bootstrap, topics)
    before["routing"]["topics"] = {"taobao_trade_*": topics.trade}
    await asyncio.to_thread(_dead_letter_some, kafka, topics, before)
    # The fix: a route for items. Trade events still lack their key field.
    after = _doc(source, kafka.bootstrap, topics)
    after["sink"] = before["sink"]
    path = _write(tmp_path, after)

    code, out = await _cli(["dead-letters", "replay", "--config", path, "--list"], capsys)
    assert code == 0, out
    text = "\n".join(out)
    assert text.count(f"routed to {topics.other}") == 4  # 3 listed + the count line
    assert "dry run: 5 records would be written" in text
    assert "skipped: the source could not decode it" in text
    assert await read_back(kafka.bootstrap, [topics.other]) == []

    code, out = await _cli(
        ["dead-letters", "replay", "--config", path, "--apply", "--since", "1h"], capsys
    )
    assert code == 0, out
    assert "written: 5 records in 1 transactions" in "\n".join(out)
    routed = await asyncio.to_thread(
        harness.read_messages, kafka.bootstrap, [topics.other], lambda m: m
    )
    assert len(routed) == 3
    ids = sorted(int(dict(m.headers())[H_MESSAGE_ID]) for m in routed)
    assert ids == [(1 << 60) + i for i in range(3)]
    assert all(
        dict(m.headers())[replay.H_REPLAY_OF].startswith(topics.dlq.encode()) for m in routed
    )
    dlq = await asyncio.to_thread(harness.read_messages, kafka.bootstrap, [topics.dlq], lambda m: m)
    again = [m for m in dlq if replay.H_REPLAY_OF in dict(m.headers())]
    assert len(again) == 2  # the trade events, dead again with today's reason
    assert all(b"none of the key fields" in dict(m.headers())[H_DLQ_REASON] for m in again)
    markers = [m for m in dlq if replay.H_REPLAYED in dict(m.headers())]
    assert len(markers) == 1

    # A second run writes nothing again: the marker names what was replayed. Only the
    # two new dead letters (dead again) are left, and --reason picks by reason.
    code, out = await _cli(
        ["dead-letters", "replay", "--config", path, "--reason", "NO ROUTE", "--apply"], capsys
    )
    assert code == 0, out
    text = "\n".join(out)
    assert "3 dead letters replayed before" in text, text
    assert "written: 0 records in 0 transactions" in text
    assert len(await read_back(kafka.bootstrap, [topics.other])) == 3
    # Without a filter: the five replayed are left out, the two dead again are new.
    code, out = await _cli(["dead-letters", "replay", "--config", path], capsys)
    text = "\n".join(out)
    assert "5 dead letters replayed before" in text, text
    assert "dry run: 2 records would be written" in text


def test_parse_time() -> None:
    now = 1_700_000_000.0
    assert replay.parse_time("now", now=now) == 1_700_000_000_000
    assert replay.parse_time("2h", now=now) == 1_700_000_000_000 - 7_200_000
    assert replay.parse_time("1h30m", now=now) == 1_700_000_000_000 - 5_400_000
    assert replay.parse_time("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert replay.parse_time("2023-11-15T06:13:20+08:00") == 1_700_000_000_000
    with pytest.raises(ConfigError):
        replay.parse_time("yesterday")


def test_route_check_against_a_real_name_server(rocketmq: RocketMQBroker) -> None:
    topic = f"check_{uuid.uuid4().hex[:8]}"
    rocketmq.create_topic(topic)
    config = RocketMQSinkConfig(name_server=rocketmq.namesrv_addr, producer_group="pg")
    [line] = route_check.check(config, "sink rocketmq", [topic], 5.0)
    assert line.ok, line
    assert rocketmq.broker_addr.rpartition(":")[2] in line.detail
    [line] = route_check.check(config, "sink rocketmq", [topic, "no_such_topic"], 5.0)
    assert not line.ok and "no route for: no_such_topic" in line.detail
