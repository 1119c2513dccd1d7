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
from bridge.observability.metrics import PREFIX, Metrics, metric_names
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
        assert 'tmc_bridge_source_received_messages_total{source="tmc",topic=' in body
        assert "_created" not in body  # no creation-time series beside the counters
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
    """tmc_bridge_<component>_..., beside the client library's process_/python_ families
    only, and no _created series (they would double the samples of every counter)."""
    metrics = Metrics()
    metrics.received("tmc", "taobao_trade_TradeCreate", int(time.time() * 1000))
    metrics.transaction("kafka", "retried")
    families = list(metrics.registry.collect())
    for family in families:
        assert family.name.startswith((PREFIX, "process_", "python_")), family.name
        for sample in family.samples:
            assert not sample.name.endswith("_created"), sample.name
    names = metric_names(metrics)
    assert len(names) > 20
    for name in names:
        assert name.startswith(PREFIX), name
        component = name.removeprefix(PREFIX).split("_")[0]
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
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    rules = (CHART / "templates" / "prometheusrule.yaml").read_text()
    used_in_dashboard = set(re.findall(rf"\b{PREFIX}[a-z_]+", " ".join(exprs)))
    used_in_rules = set(re.findall(rf"\b{PREFIX}[a-z_]+", rules))
    assert used_in_dashboard - exposed == set()
    assert used_in_rules - exposed == set()
    # No name left over from before the prefix (\b: not the tail of tmc_bridge_...).
    old = re.compile(r"\bbridge_(app|source|pipeline|filter|sink|dedup)_")
    assert not old.search(" ".join(exprs)) and not old.search(rules)
    # Grafana picks the step: no fixed rate window in the panels.
    assert not [e for e in exprs if re.search(r"\[\d+[smh]\]", e)]
    # Every alert the issues ask for is there.
    for alert in (
        "PodDown", "SourceNotLoggedIn", "SteppedBack", "NoMessages", "NotConfirming",
        "SinkFailing", "SinkErrors", "DeadLetters", "SkippedFrames", "PublishLagHigh",
        "ReconnectStorm", "NotReady",
    ):  # fmt: skip
        assert f"alert: TmcBridge{alert}" in rules
    assert "service=" not in rules  # the rules must work without the ServiceMonitor
    assert {f"{PREFIX}source_publish_lag_seconds_bucket", f"{PREFIX}sink_errors_total"} <= (
        used_in_dashboard & used_in_rules
    )
