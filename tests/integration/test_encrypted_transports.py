"""Encrypted transports against reality: the simulator on ``wss://`` (and its gateway on
``https://``) with a certificate from a CA made here, and Kafka over SASL_SSL (a local
listener with its own CA, PLAIN and SCRAM users). Each delivers exactly once; a wrong CA
or password is one clear line in /readyz's wording and in the log, with no traceback
and no secret."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from bridge.observability.metrics import Metrics
from bridge.sinks.kafka import KafkaSink
from devtools import harness
from devtools.brokers.certs import make_ca
from devtools.brokers.kafka import KafkaBroker, SaslSsl
from tests.integration import test_kafka_errors
from tests.integration.conftest import (
    Topics,
    bridge_config,
    read_back,
    running_bridge,
    simulator,
    verdict,
    wait_for,
)
from tests.integration.test_http_source import http_config
from tests.integration.test_kafka_errors import (
    Captured,
    assert_nothing_raw_on_stderr,
    client_errors,
    sink_config,
    start_failing,
)

pytestmark = pytest.mark.integration

#: The bridge's JSON log on the captured stdout (that module's fixture, used here too).
captured = test_kafka_errors.captured

SASL_USER = "bridge"
SASL_PASSWORD = "sasl-ssl-password-4b1d"
WRONG_PASSWORD = "not-the-password-77e0"


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path  # trusted by nobody here: the "wrong CA"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("certs")
    ca = make_ca(directory, "ca")
    server = ca.server_cert("simulator")
    other = make_ca(directory, "other-ca")
    return Certs(ca.cert_pem, server.chain_pem, server.key_pem, other.cert_pem)


@pytest.fixture(scope="session")
def kafka_sasl_ssl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A broker of its own with a SASL_SSL listener: only the tests here start it."""
    broker = KafkaBroker(
        tmp_path_factory.mktemp("kafka-sasl-ssl"),
        heap_mb=384,
        sasl_ssl=SaslSsl({SASL_USER: SASL_PASSWORD}),
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def sasl_ssl_extra(
    broker: KafkaBroker, mechanism: str, *, password: str = SASL_PASSWORD, ca: Path | None = None
) -> dict[str, Any]:
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": mechanism,
        "sasl.username": SASL_USER,
        "sasl.password": password,
        "ssl.ca.location": str(ca or broker.ca_file),
    }


def new_topics(broker: KafkaBroker) -> Topics:
    tag = uuid.uuid4().hex[:8]
    t = Topics(f"trade-{tag}", f"refund-{tag}", f"other-{tag}", f"dlq-{tag}")
    for name in t.all:
        broker.create_topic(name, partitions=1 if name == t.dlq else 3)
    return t


def no_tracebacks(logs: list[dict[str, Any]]) -> None:
    assert not [e for e in logs if "exc_info" in e or e.get("log_level") == "critical"], logs
    assert not [e for e in logs if "internal error" in json.dumps(e, default=str)]


# -- wss:// -------------------------------------------------------------------------------


async def test_wss_with_a_private_ca_delivers_exactly_once(
    kafka: KafkaBroker, topics: Topics, certs: Certs
) -> None:
    async with simulator(tls_cert=str(certs.cert), tls_key=str(certs.key)) as sim:
        assert sim.url.startswith("wss://")
        sim.publish(500)
        cfg = bridge_config(sim.url, kafka.bootstrap, topics, tmc={"tls_ca_file": str(certs.ca)})
        async with running_bridge(cfg) as bridge:
            await wait_for(lambda: sim.stats.confirmed == 500, 60, "all confirmed")
            assert bridge.problems() == []
    v = verdict(sim, await read_back(kafka.bootstrap, topics.all))
    assert v.ok, v.problems
    assert (v.delivered, v.duplicates, v.lost, v.order_violations) == (500, 0, 0, 0)


async def test_wss_with_the_wrong_ca_is_one_clear_line_in_readyz(
    kafka: KafkaBroker, topics: Topics, certs: Certs
) -> None:
    """The server's certificate does not chain to tls_ca_file: /readyz says "certificate
    verify failed", the log has one warning a try (no traceback), nothing is confirmed.
    Trusting the right CA, the same simulator is then read through."""
    async with simulator(tls_cert=str(certs.cert), tls_key=str(certs.key)) as sim:
        sim.publish(20)
        cfg = bridge_config(
            sim.url, kafka.bootstrap, topics, tmc={"tls_ca_file": str(certs.other_ca)}
        )
        with structlog.testing.capture_logs() as logs:
            async with running_bridge(cfg) as bridge:
                await wait_for(lambda: bridge.http is not None, 10, "http server")
                assert bridge.http is not None
                await wait_for(
                    lambda: any("CERTIFICATE_VERIFY_FAILED" in p for p in bridge.problems()),
                    20,
                    "the verify failure in /readyz",
                )
                status, body = await asyncio.to_thread(
                    harness.http_get, bridge.http.port, "/readyz"
                )
        assert status == 503
        (line,) = [x for x in body.splitlines() if "CERTIFICATE_VERIFY_FAILED" in x]
        assert "certificate verify failed" in line and "Traceback" not in body
        lost = [e for e in logs if e["event"] == "tmc connection lost"]
        assert lost and all(e["log_level"] == "warning" for e in lost)
        assert "SSLCertVerificationError" in lost[0]["error"]
        no_tracebacks(logs)
        assert sim.stats.confirmed == 0


async def test_a_missing_ca_file_names_the_key(
    kafka: KafkaBroker, topics: Topics, certs: Certs, tmp_path: Path
) -> None:
    async with simulator(tls_cert=str(certs.cert), tls_key=str(certs.key)) as sim:
        missing = tmp_path / "nope.pem"
        cfg = bridge_config(sim.url, kafka.bootstrap, topics, tmc={"tls_ca_file": str(missing)})
        with structlog.testing.capture_logs() as logs:
            async with running_bridge(cfg) as bridge:
                want = f"source.tmc.tls_ca_file {missing}: no such file"
                await wait_for(
                    lambda: any(want in p for p in bridge.problems()), 20, "the missing file"
                )
        no_tracebacks(logs)


async def test_https_gateway_with_a_private_ca(
    kafka: KafkaBroker, topics: Topics, certs: Certs
) -> None:
    """The HTTP API source against the simulator's gateway on https://."""
    async with simulator(tls_cert=str(certs.cert), tls_key=str(certs.key)) as sim:
        sim.publish(100)
        cfg = http_config(
            sim, kafka.bootstrap, topics, url=sim.gateway_url, tls_ca_file=str(certs.ca)
        )
        assert sim.gateway_url.startswith("https://")
        async with running_bridge(cfg):
            await wait_for(lambda: sim.stats.confirmed == 100, 60, "all confirmed")
    v = verdict(sim, await read_back(kafka.bootstrap, topics.all))
    assert (v.delivered, v.duplicates, v.lost) == (100, 0, 0), v.problems


# -- Kafka over SASL_SSL --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mechanism", "wss"), [("SCRAM-SHA-256", True), ("PLAIN", False)], ids=["scram-wss", "plain"]
)
async def test_sasl_ssl_delivers_exactly_once(
    kafka_sasl_ssl: KafkaBroker, certs: Certs, mechanism: str, wss: bool
) -> None:
    """The bridge writes through the SASL_SSL listener (its dedup reader too); a
    read_committed reader on the plain listener finds every message once, in order."""
    broker = kafka_sasl_ssl
    topics = new_topics(broker)
    tls = {"tls_cert": str(certs.cert), "tls_key": str(certs.key)} if wss else {}
    async with simulator(**tls) as sim:
        sim.publish(1000)
        cfg = bridge_config(
            sim.url,
            broker.sasl_ssl_bootstrap,
            topics,
            tmc={"tls_ca_file": str(certs.ca)} if wss else None,
            kafka={"extra": sasl_ssl_extra(broker, mechanism)},
        )
        with structlog.testing.capture_logs() as logs:
            async with running_bridge(cfg) as bridge:
                await wait_for(lambda: sim.stats.confirmed == 1000, 60, "all confirmed")
                assert bridge.problems() == []
    assert SASL_PASSWORD not in json.dumps(logs, default=str)
    v = verdict(sim, await read_back(broker.bootstrap, topics.all))
    assert v.ok, v.problems
    assert (v.delivered, v.duplicates, v.lost, v.order_violations) == (1000, 0, 0, 0)


async def test_sasl_ssl_wrong_password_is_one_clear_line_without_the_password(
    kafka_sasl_ssl: KafkaBroker, captured: Captured
) -> None:
    extra = sasl_ssl_extra(kafka_sasl_ssl, "SCRAM-SHA-256", password=WRONG_PASSWORD)
    sink = KafkaSink(sink_config(kafka_sasl_ssl.sasl_ssl_bootstrap, **extra), metrics=Metrics())
    problem = await start_failing(sink, "_AUTHENTICATION", timeout_s=20)
    assert problem.startswith("kafka sink starting: last error _AUTHENTICATION: ")
    assert "Authentication failed" in problem and "\n" not in problem

    lines = captured.read()
    (error,) = client_errors(lines, "_AUTHENTICATION")  # once, though librdkafka repeats it
    assert "SCRAM-SHA-256" in error["error"] or "Authentication failed" in error["error"]
    assert_nothing_raw_on_stderr(captured)
    for text in (captured.out, captured.err, problem):
        assert WRONG_PASSWORD not in text


async def test_sasl_ssl_wrong_ca_is_one_clear_line(
    kafka_sasl_ssl: KafkaBroker, certs: Certs, captured: Captured
) -> None:
    extra = sasl_ssl_extra(kafka_sasl_ssl, "PLAIN", ca=certs.other_ca)
    sink = KafkaSink(sink_config(kafka_sasl_ssl.sasl_ssl_bootstrap, **extra), metrics=Metrics())
    problem = await start_failing(sink, "certificate verify failed", timeout_s=20)
    # librdkafka reports the handshake as _SSL, then the dropped connection as _TRANSPORT.
    assert problem.startswith(
        ("kafka sink starting: last error _SSL: ", "kafka sink starting: last error _TRANSPORT: ")
    )
    assert "\n" not in problem

    lines = captured.read()
    (error,) = client_errors(lines, "_SSL")
    assert "certificate verify failed" in error["error"]
    assert_nothing_raw_on_stderr(captured)
    for text in (captured.out, captured.err, problem):
        assert SASL_PASSWORD not in text
