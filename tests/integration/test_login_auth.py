"""Logins as production wants them (simulator + real Kafka): the auth token fetched from
the TOP gateway before every CONNECT, and a refused login that tells the operator what to
do in /readyz while the bridge keeps trying."""

from __future__ import annotations

import json

import pytest
import structlog

from bridge.sources.tmc.platform_errors import SWITCH_OFF
from bridge.sources.tmc.simulator import Simulator
from devtools.brokers.kafka import KafkaBroker
from tests.integration.conftest import (
    SECRET,
    Topics,
    bridge_config,
    read_back,
    running_bridge,
    simulator,
    verdict,
    wait_for,
)

pytestmark = pytest.mark.integration


def _gateway(sim: Simulator) -> str:
    return f"http://127.0.0.1:{sim.port}/router/rest"


async def test_auth_token_on_logs_in_delivers_and_fetches_a_new_token_per_login(
    kafka: KafkaBroker, topics: Topics
) -> None:
    async with simulator(require_auth_token=True) as sim:
        sim.publish(300)
        tmc = {"auth_token": "on", "api_url": _gateway(sim)}
        cfg = bridge_config(sim.url, kafka.bootstrap, topics, tmc=tmc)
        with structlog.testing.capture_logs() as logs:
            async with running_bridge(cfg) as bridge:
                await wait_for(lambda: sim.stats.confirmed == 300, 60, "first 300 confirmed")
                assert sim.stats.auth_tokens_accepted == 1
                # A reconnect: the old token is used up, a new one is fetched for it.
                assert sim.inject("drop_connection")
                await wait_for(lambda: sim.stats.logins_ok >= 2, 30, "the second login")
                sim.publish(200)
                await wait_for(lambda: sim.stats.confirmed == 500, 60, "all confirmed")
                assert bridge.problems() == []
        stats = sim.stats
        assert stats.auth_tokens_issued >= 2 and stats.auth_tokens_accepted >= 2
        assert stats.auth_tokens_refused == 0 and stats.logins_failed == 0
        connecting = [e for e in logs if e["event"] == "tmc connecting"]
        assert len(connecting) >= 2 and all(e["auth_token"] for e in connecting)
        assert not any(SECRET in json.dumps(e, default=str) for e in logs)
    v = verdict(sim, await read_back(kafka.bootstrap, topics.all))
    assert (v.delivered, v.lost) == (500, 0), v.problems


async def test_auth_token_off_is_refused_with_the_reason(
    kafka: KafkaBroker, topics: Topics
) -> None:
    async with simulator(require_auth_token=True) as sim:
        sim.publish(10)
        cfg = bridge_config(sim.url, kafka.bootstrap, topics, tmc={"auth_token": "off"})
        with structlog.testing.capture_logs() as logs:
            async with running_bridge(cfg) as bridge:
                await wait_for(lambda: sim.stats.auth_tokens_refused >= 2, 20, "two refusals")
                problems = bridge.problems()
                assert bridge.source.logged_in == 0
        assert sim.stats.pushes == 0 and sim.stats.auth_tokens_issued == 0
        assert any("auth token required" in p and "auth_token" in p for p in problems), problems
        refused = [e for e in logs if e["event"] == "tmc login refused"]
        assert refused and "auth_token" in refused[0]["hint"]


async def test_a_failed_token_call_is_a_failed_login_not_the_end(
    kafka: KafkaBroker, topics: Topics
) -> None:
    """The gateway refuses the token call (wrong secret there): every attempt is logged
    with its reason and hint, /readyz says so, and the bridge keeps trying."""
    async with simulator(require_auth_token=True) as sim:
        tmc = {"auth_token": "on", "api_url": _gateway(sim)}
        cfg = bridge_config(sim.url, kafka.bootstrap, topics, secret="not-the-secret", tmc=tmc)
        with structlog.testing.capture_logs() as logs:
            async with running_bridge(cfg) as bridge:
                await wait_for(
                    lambda: (
                        len([e for e in logs if e["event"] == "tmc auth token not obtained"]) >= 2
                    ),
                    20,
                    "two failed token calls",
                )
                problems = bridge.problems()
        assert sim.stats.logins_ok == sim.stats.logins_failed == 0  # no CONNECT was sent
        assert any("auth token not obtained" in p and "app_secret" in p for p in problems)
        assert not any("not-the-secret" in json.dumps(e, default=str) for e in logs)


async def test_message_service_off_is_named_in_readyz_and_the_bridge_logs_in_later(
    kafka: KafkaBroker, topics: Topics
) -> None:
    """The platform refuses the app's logins (message service not enabled): /readyz names
    the console action; once the app is switched on, the bridge logs in and delivers."""
    phrase = "isv.tmc-switch-off: the app do not enable messaging-channel feature"
    async with simulator(refuse_logins=True, login_error_phrase=phrase) as sim:
        sim.publish(50)
        cfg = bridge_config(sim.url, kafka.bootstrap, topics)
        with structlog.testing.capture_logs() as logs:
            async with running_bridge(cfg) as bridge:
                await wait_for(lambda: sim.stats.logins_refused >= 2, 20, "two refusals")
                problems = bridge.problems()
                # The source wraps last_error, which ends with the hint.
                assert any(SWITCH_OFF in p for p in problems), problems
                assert bridge.source.last_errors[0].endswith(SWITCH_OFF)
                sim.config.refuse_logins = False  # the operator subscribes the app
                await wait_for(lambda: sim.stats.confirmed == 50, 60, "all confirmed")
                assert bridge.problems() == []
        refused = [e for e in logs if e["event"] == "tmc login refused"]
        assert refused[0]["status_phrase"] == phrase and refused[0]["hint"] == SWITCH_OFF
    v = verdict(sim, await read_back(kafka.bootstrap, topics.all))
    assert (v.delivered, v.lost, v.duplicates) == (50, 0, 0), v.problems
