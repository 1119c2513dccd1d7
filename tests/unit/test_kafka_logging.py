"""librdkafka's log lines and client errors in the bridge's JSON log, the sink's last
error, and how /readyz words it; with a scripted producer (no broker). The same against
a real broker: tests/integration/test_kafka_errors.py."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from confluent_kafka import KafkaError, KafkaException

from bridge.config import KafkaSinkConfig, PipelineConfig, RoutingConfig
from bridge.errors import SinkStopped
from bridge.observability import logging as obs_logging
from bridge.observability.metrics import Metrics
from bridge.pipeline.engine import Pipeline
from bridge.pipeline.ports import Batch, Refused
from bridge.pipeline.routing import Router
from bridge.sinks.kafka import (
    KafkaSink,
    LibrdkafkaLogger,
    Redactor,
    Throttle,
    sensitive_values,
)

JsonLines = Callable[[], list[dict[str, Any]]]
REFUSED = (
    "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused"
    " (after 0ms in state CONNECT)"
)


def json_log(capsys: pytest.CaptureFixture[str], level: str) -> Iterator[JsonLines]:
    """The bridge's JSON logging on the captured stdout; undone afterwards."""
    root, websockets = logging.getLogger(), logging.getLogger("websockets")
    handlers, root_level, ws_level = root.handlers[:], root.level, websockets.level
    obs_logging.configure(level, "json")
    # Loggers bound while cached would keep writing to this test's (then closed) stdout.
    structlog.configure(cache_logger_on_first_use=False)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    try:
        yield lines
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(root_level)
        websockets.setLevel(ws_level)


@pytest.fixture
def info_log(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[JsonLines]:
    monkeypatch.delenv(obs_logging.LEVEL_ENV, raising=False)
    monkeypatch.delenv(obs_logging.FORMAT_ENV, raising=False)
    yield from json_log(capsys, "info")


@pytest.fixture
def debug_log(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[JsonLines]:
    monkeypatch.delenv(obs_logging.LEVEL_ENV, raising=False)
    monkeypatch.delenv(obs_logging.FORMAT_ENV, raising=False)
    yield from json_log(capsys, "debug")


def rd(
    logger: LibrdkafkaLogger, level: int, facility: str, text: str, thread: str = "main"
) -> None:
    """Call the logger exactly as confluent-kafka's log_cb does."""
    logger.log(level, "%s [%s] %s", facility, "rdkafka#producer-1", f"[thrd:{thread}]: {text}")


# -- librdkafka's log lines -------------------------------------------------------------


def test_librdkafka_lines_become_json_lines_with_their_level_and_fields(
    debug_log: JsonLines,
) -> None:
    logger = LibrdkafkaLogger()
    # The levels confluent-kafka passes (librdkafka's syslog levels already mapped).
    rd(logger, logging.CRITICAL, "TXNERR", "Fatal transaction error: fenced")
    rd(logger, logging.ERROR, "TXNERR", "Current transaction failed")
    rd(logger, logging.WARNING, "GETPID", "Failed to acquire transactional PID: retrying")
    rd(logger, logging.INFO, "CONFWARN", "Configuration property x is deprecated")
    rd(logger, logging.DEBUG, "BROKER", "Added new broker", thread="app")
    lines = debug_log()
    assert [(x["logger"], x["level"], x["facility"], x["event"]) for x in lines] == [
        ("bridge.sink.librdkafka", "critical", "TXNERR", "Fatal transaction error: fenced"),
        ("bridge.sink.librdkafka", "error", "TXNERR", "Current transaction failed"),
        (
            "bridge.sink.librdkafka",
            "warning",
            "GETPID",
            "Failed to acquire transactional PID: retrying",
        ),
        ("bridge.sink.librdkafka", "info", "CONFWARN", "Configuration property x is deprecated"),
        ("bridge.sink.librdkafka", "debug", "BROKER", "Added new broker"),
    ]
    assert lines[0]["client"] == "rdkafka#producer-1"
    assert lines[0]["thread"] == "main" and lines[-1]["thread"] == "app"
    assert lines[0]["timestamp"].endswith("Z")


def test_broker_failures_are_left_to_error_cb_and_debug_is_filtered(info_log: JsonLines) -> None:
    logger = LibrdkafkaLogger()
    # A FAIL line at error level is also an error_cb call (logged there, with the error
    # name), so it goes out at debug only, which an info log leaves out.
    rd(logger, logging.ERROR, "FAIL", REFUSED, thread="127.0.0.1:1/bootstrap")
    rd(logger, logging.DEBUG, "BROKER", "Added new broker")
    # A FAIL line below error level (e.g. an idle connection closed) has no error_cb.
    rd(logger, logging.INFO, "FAIL", "127.0.0.1:1/1: Disconnected (after 600000ms in state UP)")
    lines = info_log()
    assert [(x["level"], x["facility"]) for x in lines] == [("info", "FAIL")]


def test_identical_lines_are_throttled_and_counted() -> None:
    now = [0.0]
    throttle = Throttle(30.0, max_keys=2, clock=lambda: now[0])
    assert throttle.admit("a") == 0
    assert throttle.admit("a") is None
    assert throttle.admit("b") == 0
    now[0] = 29.0
    assert throttle.admit("a") is None
    now[0] = 30.0
    assert throttle.admit("a") == 2  # two left out since the last one let through
    assert throttle.admit("c") == 0  # only two keys are kept: "b" is forgotten
    assert throttle.admit("b") == 0


def test_a_flood_of_one_failure_gives_one_line_per_window(debug_log: JsonLines) -> None:
    now = [0.0]
    logger = LibrdkafkaLogger(throttle=Throttle(30.0, clock=lambda: now[0]))
    for i in range(50):  # librdkafka reconnects several times a second
        now[0] = i * 0.3
        rd(logger, logging.ERROR, "FAIL", REFUSED.replace("0ms", f"{i}ms"))
    now[0] = 31.0
    rd(logger, logging.ERROR, "FAIL", REFUSED)
    lines = debug_log()
    assert len(lines) == 2
    assert "repeated" not in lines[0] and lines[1]["repeated"] == 49


def test_secret_values_are_redacted(info_log: JsonLines) -> None:
    extra = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "bridge",
        "sasl.password": "hunter2-pw",
        "ssl.key.password": "key-pw",
        "sasl.oauthbearer.client.secret": "oauth-secret",
        "ssl.keystore.password": "",
    }
    assert sorted(sensitive_values(extra)) == ["hunter2-pw", "key-pw", "oauth-secret"]
    logger = LibrdkafkaLogger(Redactor(sensitive_values(extra)))
    rd(logger, logging.WARNING, "SASL", "login with hunter2-pw and key-pw failed")
    (line,) = info_log()
    assert line["event"] == "login with [redacted] and [redacted] failed"


def test_the_logger_never_raises(info_log: JsonLines) -> None:
    logger = LibrdkafkaLogger()
    logger.log(logging.WARNING, "%s %s", "only one argument")  # bad format: no exception
    logger.log(logging.WARNING, "plain text")
    assert [x["event"] for x in info_log()] == ["unreadable librdkafka log line", "plain text"]


# -- the sink's last error ----------------------------------------------------------------


class FakeProducer:
    """Never reaches a broker: init_transactions times out, poll serves queued errors."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.queued: list[KafkaError] = []
        self.init_calls = 0

    def init_transactions(self, timeout: float) -> None:
        self.init_calls += 1
        self.queued += [KafkaError(KafkaError._TRANSPORT, REFUSED), all_down()]
        raise KafkaException(
            KafkaError(
                KafkaError._TIMED_OUT,
                "Timed out waiting for operation to finish, retry call to resume",
                retriable=True,
            )
        )

    def poll(self, timeout: float = 0) -> int:
        served, self.queued = self.queued, []
        for err in served:
            self.config["error_cb"](err)
        return len(served)

    def abort_transaction(self, timeout: float) -> None:
        pass


def all_down() -> KafkaError:
    return KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")


def fake_sink(**extra: Any) -> tuple[KafkaSink, list[FakeProducer]]:
    made: list[FakeProducer] = []

    def factory(config: dict[str, Any]) -> Any:
        made.append(FakeProducer(config))
        return made[-1]

    config = KafkaSinkConfig(
        bootstrap_servers="127.0.0.1:1", transactional_id="t-1", commit_timeout_s=5, extra=extra
    )
    return KafkaSink(config, producer_factory=factory, metrics=Metrics()), made


def test_producer_config_routes_librdkafka_logs_to_the_bridge_logger() -> None:
    sink, _ = fake_sink()
    cfg = sink.producer_config()
    assert isinstance(cfg["logger"], LibrdkafkaLogger)
    assert cfg["logger"].name == "bridge.sink.librdkafka"


async def test_sink_problem_names_the_last_error_before_the_sink_started(
    info_log: JsonLines,
) -> None:
    sink, made = fake_sink()
    pipeline = Pipeline(PipelineConfig(), Router(RoutingConfig()), sink, metrics=Metrics())
    assert pipeline.sink_problem() == "sink starting"
    starting = asyncio.create_task(pipeline.start_sink())
    for _ in range(200):
        if sink.last_error is not None and made[0].init_calls >= 3:
            break
        await asyncio.sleep(0.01)
    # Neither the init timeout nor "all brokers down" hides the cause.
    assert pipeline.sink_problem() == f"kafka sink starting: last error _TRANSPORT: {REFUSED}"
    sink.stop()
    with pytest.raises(SinkStopped):
        await asyncio.wait_for(starting, 5)
    await pipeline.shutdown()
    lines = [x for x in info_log() if x["logger"] == "bridge.sink.kafka"]
    # Each error once (throttled), however often librdkafka repeated it.
    errors = [(x["event"], x["error_class"], x["level"]) for x in lines if "error_class" in x]
    assert errors == [
        ("kafka client error", "_TRANSPORT", "warning"),
        ("kafka client error", "_ALL_BROKERS_DOWN", "warning"),
    ]
    assert lines[0]["error"] == f"_TRANSPORT: {REFUSED}" and lines[0]["fatal"] is False
    retrying = [x for x in lines if x["event"] == "kafka init not acknowledged yet, retrying"]
    assert len(retrying) == 1 and retrying[0]["error"] == f"_TRANSPORT: {REFUSED}"


def test_last_error_is_redacted_and_cleared_by_a_successful_probe() -> None:
    sink, made = fake_sink(**{"sasl.password": "pw-123456"})
    with pytest.raises(SinkStopped):
        sink.stop()
        sink.start()
    producer = made[0]
    producer.queued.append(
        KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: pw-123456 refused")
    )
    producer.poll()
    assert sink.last_error == "_AUTHENTICATION: SASL authentication error: [redacted] refused"
    producer.queued.append(all_down())
    producer.poll()
    assert sink.last_error is not None and sink.last_error.startswith("_AUTHENTICATION")

    def list_topics(topic: str | None, timeout: float) -> None:
        pass

    producer.list_topics = list_topics  # type: ignore[attr-defined]
    assert sink.probe() is True
    assert sink.last_error is None and sink.ready


class StubSink:
    """A BatchSink that starts at once and writes nothing."""

    name = "stub"

    def __init__(self) -> None:
        self.ready = True
        self.last_error: str | None = None

    def start(self) -> None:
        pass

    def probe(self) -> bool:
        return False

    def write_batch(self, batch: Batch) -> list[Refused]:
        return []

    def rebuild(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


async def test_not_connected_names_the_last_error_too() -> None:
    sink = StubSink()
    pipeline = Pipeline(PipelineConfig(), Router(RoutingConfig()), sink, metrics=Metrics())
    await pipeline.start_sink()
    assert pipeline.sink_problem() is None
    sink.last_error = "_TRANSPORT: broker gone"
    assert pipeline.sink_problem() is None  # ready: an old error is no problem
    sink.ready = False
    assert pipeline.sink_problem() == "stub sink not connected: last error _TRANSPORT: broker gone"
    await pipeline.shutdown()
