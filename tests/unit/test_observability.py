"""The HTTP port (/metrics, /livez, /readyz) and the log format, without brokers."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from bridge.observability import logging as obs_logging
from bridge.observability.http import HealthServer
from bridge.observability.metrics import Metrics, metric_names
from devtools.harness import http_get as get


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure() binds loggers to the captured stdout; undo that for later tests."""
    handlers = logging.getLogger().handlers[:]
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = handlers


async def test_endpoints_answer_from_their_own_thread() -> None:
    metrics = Metrics()
    metrics.received("tmc", "taobao_trade_TradeCreate", None)
    problems = ["tmc not logged in"]
    server = HealthServer(
        "127.0.0.1", 0, metrics.registry, lambda: list(problems), loop=asyncio.get_running_loop()
    )
    server.start()
    try:
        status, body = await asyncio.to_thread(get, server.port, "/metrics")
        assert status == 200
        assert 'bridge_source_received_messages_total{source="tmc",topic=' in body
        assert "process_cpu_seconds_total" in body
        assert await asyncio.to_thread(get, server.port, "/readyz") == (
            503,
            "not ready: tmc not logged in\n",
        )
        problems.clear()
        assert await asyncio.to_thread(get, server.port, "/readyz") == (200, "ready\n")
        assert await asyncio.to_thread(get, server.port, "/livez") == (200, "alive\n")
        status, _ = await asyncio.to_thread(get, server.port, "/")
        assert status == 404
    finally:
        server.stop()


async def test_livez_fails_while_the_event_loop_is_blocked() -> None:
    server = HealthServer(
        "127.0.0.1",
        0,
        Metrics().registry,
        list,
        loop=asyncio.get_running_loop(),
        live_timeout_s=0.2,
    )
    server.start()
    try:
        answer = asyncio.get_running_loop().run_in_executor(None, get, server.port, "/livez")
        time.sleep(1.0)  # noqa: ASYNC251 - blocks the loop on purpose, like a hung callback
        status, body = await answer
        assert status == 503
        assert "did not answer" in body
    finally:
        server.stop()


def test_metric_names_follow_the_naming_rule() -> None:
    names = metric_names(Metrics())
    assert len(names) > 20
    for name in names:
        component = name.split("_")[1]
        assert component in {"app", "source", "pipeline", "filter", "sink", "dedup"}, name


def test_logs_are_json_lines_with_the_logger_name(capsys: pytest.CaptureFixture[str]) -> None:
    obs_logging.configure("info", "json")
    structlog.get_logger("bridge.test").info("batch committed", messages=3)
    structlog.get_logger("bridge.test").debug("not shown at info")
    logging.getLogger("asyncio").warning("from the stdlib %s", "logger")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["logger"], x["level"], x["event"]) for x in lines] == [
        ("bridge.test", "info", "batch committed"),
        ("asyncio", "warning", "from the stdlib logger"),
    ]
    assert lines[0]["messages"] == 3 and lines[0]["timestamp"].endswith("Z")


def test_environment_overrides_level_and_format(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(obs_logging.LEVEL_ENV, "debug")
    monkeypatch.setenv(obs_logging.FORMAT_ENV, "console")
    obs_logging.configure("warning", "json")
    structlog.get_logger("bridge.test").debug("shown at debug", x=1)
    out = capsys.readouterr().out
    assert "shown at debug" in out
    assert not out.lstrip().startswith("{")


CHART = Path(__file__).resolve().parents[2] / "helm" / "tmc-bridge"


def test_dashboard_and_alerts_use_only_metrics_the_bridge_exposes() -> None:
    """A renamed metric must not leave a silent panel or an alert that never fires."""
    exposed = metric_names(Metrics())
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = (CHART / "templates" / "prometheusrule.yaml").read_text()
    used_in_dashboard = set(re.findall(r"\bbridge_[a-z_]+", " ".join(exprs)))
    used_in_rules = set(re.findall(r"\bbridge_[a-z_]+", rules))
    assert used_in_dashboard - exposed == set()
    assert used_in_rules - exposed == set()
    # Every alert the issue asks for is there.
    for alert in ("NotConfirming", "PublishLagHigh", "ReconnectStorm", "DeadLetters", "SinkErrors"):
        assert f"alert: TmcBridge{alert}" in rules
    assert {"bridge_source_publish_lag_seconds_bucket", "bridge_sink_errors_total"} <= (
        used_in_dashboard & used_in_rules
    )
