"""Fixtures for tests against real brokers started by the suite (no fakes).

The TMC side is the project's own simulator, in-process; the bridge runs in-process too
(its ``Bridge`` composition root, exactly as ``tmc-bridge run`` builds it).

The brokers (``kafka``; ``rocketmq``, ACL on) are started once per session, and only when a
test asks for one. tests/contract imports these fixtures; pytest then holds one fixture
per conftest, so both go through :func:`_shared`, which keeps one broker of each kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from bridge import config as cfgmod
from bridge.app import Bridge
from bridge.config import BridgeConfig
from bridge.pipeline.engine import BatchSink
from bridge.sources.tmc.simulator import Simulator, SimulatorConfig
from devtools import harness
from devtools.brokers.kafka import KafkaBroker
from devtools.brokers.processes import ManagedBroker
from devtools.brokers.rocketmq import RocketMQBroker

APP_KEY = "12345678"
SECRET = "integration-secret-0123"

pytestmark = pytest.mark.integration


#: The RocketMQ broker's one ACL account (every request must be signed).
ACCESS_KEY = "bridge-access-key"
SECRET_KEY = "bridge-secret-key-0123"

#: The brokers of this session, by kind: see :func:`_shared`.
_BROKERS: dict[str, ManagedBroker] = {}
B = TypeVar("B", bound=ManagedBroker)


@contextlib.contextmanager
def _shared(kind: str, make: Callable[[], B]) -> Iterator[B]:
    """The session's broker of ``kind``: started by the first fixture instance that asks
    (and stopped when that one is torn down, at the end of the session), reused by the
    others (a fixture imported into another directory's conftest is a second instance)."""
    running = _BROKERS.get(kind)
    if running is not None:
        yield cast(B, running)  # the same kind, hence the same class
        return
    broker = make()
    broker.start()
    _BROKERS[kind] = broker
    try:
        yield broker
    finally:
        del _BROKERS[kind]
        broker.stop()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    with _shared("kafka", lambda: KafkaBroker(tmp_path_factory.mktemp("kafka"))) as broker:
        yield broker


@pytest.fixture(scope="session")
def rocketmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RocketMQBroker]:
    def make() -> RocketMQBroker:
        return RocketMQBroker(tmp_path_factory.mktemp("rocketmq"), acl={ACCESS_KEY: SECRET_KEY})

    with _shared("rocketmq", make) as broker:
        yield broker


@dataclass
class Topics:
    trade: str
    refund: str
    other: str
    dlq: str

    @property
    def all(self) -> list[str]:
        return [self.trade, self.refund, self.other, self.dlq]


@pytest.fixture
def topics(kafka: KafkaBroker) -> Topics:
    tag = uuid.uuid4().hex[:8]
    t = Topics(f"trade-{tag}", f"refund-{tag}", f"other-{tag}", f"dlq-{tag}")
    for name in t.all:
        kafka.create_topic(name, partitions=1 if name == t.dlq else 3)
    return t


def bridge_config(
    sim_url: str,
    bootstrap: str,
    topics: Topics,
    *,
    secret: str = SECRET,
    connections: int = 1,
    pipeline: dict[str, Any] | None = None,
    tmc: dict[str, Any] | None = None,
    kafka: dict[str, Any] | None = None,
    routing: dict[str, Any] | None = None,
) -> BridgeConfig:
    doc = {
        "source": {
            "type": "tmc",
            "tmc": {
                "url": sim_url,
                "app_key": APP_KEY,
                "app_secret": secret,
                "connections": connections,
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 1.0,
                "pull_interval_s": 1.0,
                **(tmc or {}),
            },
        },
        "sink": {
            "type": "kafka",
            "kafka": {
                "bootstrap_servers": bootstrap,
                "transactional_id": f"it-{uuid.uuid4().hex[:8]}",
                "commit_timeout_s": 2.0,
                # The data topics' own committed-ids topic: tests never share ids.
                "dedup": {"topic": f"committed-{topics.trade}"},
                **(kafka or {}),
            },
        },
        "routing": {
            "topics": {
                "taobao_trade_*": topics.trade,
                "taobao_refund_*": topics.refund,
                "*": topics.other,
            },
            "keys": {
                "taobao_trade_*": ["tid"],
                "taobao_refund_*": ["tid", "refund_id"],
                "taobao_item_*": ["num_iid"],
            },
            "dead_letter_topic": topics.dlq,
            **(routing or {}),
        },
        "pipeline": {
            "batch_linger_ms": 20,
            "retry_backoff_min_s": 0.2,
            "retry_backoff_max_s": 1.0,
            "drain_timeout_s": 10,
            **(pipeline or {}),
        },
        # Port 0: each in-process bridge gets a free port (bridge.http.port).
        "http": {"host": "127.0.0.1", "port": 0},
    }
    return cfgmod.parse(doc, env={})


@contextlib.asynccontextmanager
async def simulator(**overrides: Any) -> AsyncIterator[Simulator]:
    cfg = SimulatorConfig(apps={APP_KEY: SECRET}, **overrides)
    async with Simulator(cfg) as sim:
        yield sim


@contextlib.asynccontextmanager
async def running_bridge(cfg: BridgeConfig, sink: BatchSink | None = None) -> AsyncIterator[Bridge]:
    bridge = Bridge(cfg, sink=sink)
    task = asyncio.create_task(bridge.run())
    try:
        yield bridge
    finally:
        bridge.request_stop()
        await asyncio.wait_for(task, 60)


async def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


async def read_back(bootstrap: str, topics: list[str]) -> list[harness.Arrived]:
    return await asyncio.to_thread(harness.read_topics, bootstrap, topics)


def verdict(sim: Simulator, arrived: list[harness.Arrived]) -> harness.Verdict:
    return harness.verify(sim.ledger(), arrived, sim.stats.confirmed)


__all__ = ["Path"]
