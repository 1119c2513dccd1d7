"""Kafka client errors against reality: an unreachable broker and a wrong SASL password
show as JSON log lines on stdout (not raw librdkafka lines on stderr), as the sink's
last_error and in /readyz's wording, without the password anywhere."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from bridge.config import KafkaSinkConfig, PipelineConfig, RoutingConfig
from bridge.errors import SinkStopped
from bridge.observability import logging as obs_logging
from bridge.observability.metrics import Metrics
from bridge.pipeline.engine import Pipeline
from bridge.pipeline.routing import Router
from bridge.sinks.kafka import KafkaSink
from devtools.brokers.kafka import KafkaBroker
from devtools.brokers.processes import pick_ports
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

SASL_USER = "bridge"
SASL_PASSWORD = "right-password-7f3a"
WRONG_PASSWORD = "wrong-password-9c1e"


class SaslKafkaBroker(KafkaBroker):
    """The suite's broker plus a SASL_PLAINTEXT listener with one PLAIN user.

    The PLAINTEXT listener stays (the readiness check and admin calls use it).
    """

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, heap_mb=384)
        self.sasl_port = pick_ports(1, exclude={self.port, self.controller_port})[0]
        self.sasl_bootstrap = f"127.0.0.1:{self.sasl_port}"

    def _server_properties(self) -> str:
        sasl = f"SASL_PLAINTEXT://{self.sasl_bootstrap}"
        add = {
            "listeners": f",{sasl}",
            "advertised.listeners": f",{sasl}",
            "listener.security.protocol.map": ",SASL_PLAINTEXT:SASL_PLAINTEXT",
        }
        lines = []
        for line in super()._server_properties().splitlines():
            key = line.partition("=")[0]
            lines.append(line + add.get(key, ""))
        jaas = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{SASL_USER}="{SASL_PASSWORD}";'
        )
        lines += [
            "listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN",
            f"listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas}",
        ]
        return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslKafkaBroker]:
    broker = SaslKafkaBroker(tmp_path_factory.mktemp("kafka-sasl"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class Captured:
    """The bridge's JSON log as configured in production, on the captured stdout."""

    def __init__(self, capfd: pytest.CaptureFixture[str]) -> None:
        self._capfd = capfd
        self.out = ""
        self.err = ""

    def read(self) -> list[dict[str, Any]]:
        out, err = self._capfd.readouterr()
        self.out += out
        self.err += err
        return [json.loads(line) for line in self.out.splitlines() if line.startswith("{")]


@pytest.fixture
def captured(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Captured]:
    monkeypatch.delenv(obs_logging.LEVEL_ENV, raising=False)
    monkeypatch.delenv(obs_logging.FORMAT_ENV, raising=False)
    root, websockets = logging.getLogger(), logging.getLogger("websockets")
    handlers, level, ws_level = root.handlers[:], root.level, websockets.level
    # Debug, to see librdkafka's own FAIL lines too (at info only error_cb's line shows).
    obs_logging.configure("debug", "json")
    # Loggers bound while cached would keep writing to this test's (then closed) stdout.
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield Captured(capfd)
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)
        websockets.setLevel(ws_level)


def sink_config(bootstrap: str, **extra: Any) -> KafkaSinkConfig:
    # The default commit_timeout_s (30 s): errors must show long before it runs out.
    return KafkaSinkConfig(
        bootstrap_servers=bootstrap, transactional_id=f"it-{uuid.uuid4().hex[:8]}", extra=extra
    )


async def start_failing(sink: KafkaSink, expected: str, timeout_s: float = 10) -> str:
    """Start the sink (it keeps retrying), wait until /readyz's wording names ``expected``,
    stop it; returns that wording."""
    pipeline = Pipeline(PipelineConfig(), Router(RoutingConfig()), sink, metrics=Metrics())
    starting = asyncio.create_task(pipeline.start_sink())
    try:
        await wait_for(
            lambda: expected in (pipeline.sink_problem() or ""), timeout_s, f"{expected} shown"
        )
        problem = pipeline.sink_problem()
        assert problem is not None
        return problem
    finally:
        sink.stop()
        with pytest.raises(SinkStopped):
            await asyncio.wait_for(starting, 10)
        await pipeline.shutdown()


def client_errors(lines: list[dict[str, Any]], error_class: str) -> list[dict[str, Any]]:
    return [
        x
        for x in lines
        if x["logger"] == "bridge.sink.kafka"
        and x["event"] == "kafka client error"
        and x["error_class"] == error_class
    ]


def librdkafka_fail_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x for x in lines if x["logger"] == "bridge.sink.librdkafka" and x["facility"] == "FAIL"]


def assert_nothing_raw_on_stderr(captured: Captured) -> None:
    # Without the logger setting librdkafka prints "%3|<time>|FAIL|rdkafka#producer-1|...".
    assert "|FAIL|" not in captured.err and "%3|" not in captured.err, captured.err


async def test_unreachable_broker_is_named_within_seconds(captured: Captured) -> None:
    closed_port = pick_ports(1, exclude=set())[0]  # free: nothing listens there
    sink = KafkaSink(sink_config(f"127.0.0.1:{closed_port}"), metrics=Metrics())
    problem = await start_failing(sink, "Connection refused")
    assert problem.startswith(
        f"kafka sink starting: last error _TRANSPORT: 127.0.0.1:{closed_port}"
    )
    assert sink.last_error is not None and sink.last_error.startswith("_TRANSPORT: ")

    lines = captured.read()
    (error,) = client_errors(lines, "_TRANSPORT")  # once, though librdkafka repeats it
    assert error["level"] == "warning" and "Connection refused" in error["error"]
    fail = librdkafka_fail_lines(lines)
    assert fail and fail[0]["level"] == "debug" and "Connection refused" in fail[0]["event"]
    assert fail[0]["client"].startswith("rdkafka#producer-")
    assert_nothing_raw_on_stderr(captured)


async def test_wrong_sasl_password_is_named_and_never_printed(
    sasl_kafka: SaslKafkaBroker, captured: Captured
) -> None:
    sasl = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": SASL_USER,
    }
    sink = KafkaSink(
        sink_config(sasl_kafka.sasl_bootstrap, **sasl, **{"sasl.password": WRONG_PASSWORD}),
        metrics=Metrics(),
    )
    problem = await start_failing(sink, "_AUTHENTICATION")
    assert problem.startswith("kafka sink starting: last error _AUTHENTICATION: ")
    assert "Authentication failed" in problem

    lines = captured.read()
    (error,) = client_errors(lines, "_AUTHENTICATION")
    assert "Invalid username or password" in error["error"]
    assert librdkafka_fail_lines(lines)
    assert_nothing_raw_on_stderr(captured)
    for text in (captured.out, captured.err, problem):
        assert WRONG_PASSWORD not in text

    # The same listener with the right password: started, no error left.
    sink = KafkaSink(
        sink_config(sasl_kafka.sasl_bootstrap, **sasl, **{"sasl.password": SASL_PASSWORD}),
        metrics=Metrics(),
    )
    pipeline = Pipeline(PipelineConfig(), Router(RoutingConfig()), sink, metrics=Metrics())
    try:
        await asyncio.wait_for(pipeline.start_sink(), 60)
        assert pipeline.sink_problem() is None
        assert sink.last_error is None
    finally:
        await pipeline.shutdown()
    assert SASL_PASSWORD not in captured.out + captured.err
