"""The sinks under test for the conformance suite, each with its real broker behind it.

A :class:`Target` builds sinks the way the bridge does (the sink's config model and
constructor, nothing mocked), creates fresh topics, reads them back through the broker and
knows how to make one topic unwritable for a while. Each sink's way of doing that:

* **Kafka**: the topic does not exist yet and the producer may not create it
  (``allow.auto.create.topics=false``); librdkafka fails its records once
  ``topic.metadata.propagation.max.ms`` passed. Unblocked by creating the topic.
* **RocketMQ**: the sink signs in with an ACL account of its own whose permission on that
  topic is ``DENY`` (``mqadmin updateAclConfig``); the broker refuses the sends, everything
  else goes through. Unblocked by granting ``PUB`` (in plain_acl.yml, see ``_grant``), so
  nothing may call mqadmin (e.g. create a topic) between blocking and unblocking.

The brokers are the integration suite's (one of each per session, see
``tests/integration/conftest.py``), started only when a test asks for that sink.
"""

from __future__ import annotations

import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from bridge.config import KafkaSinkConfig, RocketMQSinkConfig
from bridge.observability.metrics import Metrics
from bridge.pipeline.ports import BatchSink
from bridge.sinks.kafka import KafkaSink
from bridge.sinks.rocketmq import RocketMQSink
from devtools import harness
from devtools.brokers.kafka import KafkaBroker
from devtools.brokers.rocketmq import CLUSTER, RocketMQBroker
from devtools.rocketmq_io import read_topics
from tests.integration.conftest import (  # the fixtures: the session's shared brokers
    ACCESS_KEY,
    SECRET_KEY,
    kafka,
    rocketmq,
)

__all__ = ["kafka", "rocketmq"]

CREDENTIALS = (ACCESS_KEY, SECRET_KEY, "CLOUD")

#: The sinks every contract test runs against.
SINKS = ["kafka", "rocketmq-ordered", "rocketmq-transactional"]

#: The longest single blocking call of a sink in this suite: Kafka's commit_transaction
#: (commit_timeout_s) and a RocketMQ send (send_timeout_ms). stop() is honoured at the
#: sink's next retry point, so this bounds how late it can be.
BLOCKING_CALL_S = 2.0

#: Where a too-large record is refused: by the client library, or only by the broker.
Limit = Literal["client", "broker"]


class Call:
    """``fn(*args)`` on a thread of its own. Sink methods block (the bridge runs them on
    its sink thread), and the test must stay free to call ``stop()`` meanwhile, as the
    engine does from the event loop."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self.finished_at = 0.0
        name = f"contract-{getattr(fn, '__name__', 'call')}"
        threading.Thread(target=self._run, args=(fn, args), name=name, daemon=True).start()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._value = fn(*args)
        except BaseException as exc:
            self._error = exc
        finally:
            self.finished_at = time.monotonic()
            self._done.set()

    def wait(self, timeout_s: float) -> bool:
        """True once the call finished (returned or raised)."""
        return self._done.wait(timeout_s)

    def outcome(self, timeout_s: float) -> Any:
        """What the call returned, or the exception it raised (not re-raised)."""
        if not self._done.wait(timeout_s):
            raise AssertionError(f"the call is still blocked after {timeout_s:.0f} s")
        return self._error if self._error is not None else self._value

    def result(self, timeout_s: float) -> Any:
        """What the call returned; re-raises what it raised."""
        outcome = self.outcome(timeout_s)
        if self._error is not None:
            raise self._error
        return outcome


def blocking(fn: Callable[..., Any], *args: Any, timeout_s: float = 60.0) -> Any:
    """Run a blocking sink method off the test thread and return its result."""
    return Call(fn, *args).result(timeout_s)


@dataclass
class Blocked:
    """A topic the sink built with ``sink_overrides`` cannot write to until ``unblock()``."""

    topic: str
    sink_overrides: dict[str, Any]
    unblock: Callable[[], None]


class Target(ABC):
    """One sink under test and the broker behind it."""

    #: The test id: kafka, rocketmq-ordered, rocketmq-transactional.
    name: str
    #: Each key's records land in one partition/queue, in batch order.
    keeps_key_order: bool
    #: A batch that raised or came back refused left nothing visible (Kafka: the
    #: transaction was aborted). RocketMQ sends record by record: what was acknowledged
    #: before the failure stays, and the retry of the same batch sends only the rest.
    all_or_nothing: bool

    def __init__(self) -> None:
        self._sinks: list[BatchSink] = []
        self._closed: set[int] = set()

    @abstractmethod
    def topic(self, *, dead_letters: bool = False) -> str:
        """A fresh topic (several partitions/queues; one for dead letters)."""

    @abstractmethod
    def _build(self, overrides: dict[str, Any]) -> BatchSink: ...

    @abstractmethod
    def read(self, topics: list[str], expected: int) -> list[harness.Arrived]:
        """Everything the broker lets a consumer see in ``topics`` (``expected``: how many
        records to wait for where the consumer cannot tell it reached the end)."""

    @abstractmethod
    def too_large(self, limit: Limit) -> tuple[dict[str, Any], int]:
        """Sink overrides and a value size the ``limit`` side refuses for good."""

    @abstractmethod
    def blocked_topic(self, *, keep_retrying: bool) -> Blocked:
        """A topic this sink cannot write to for now; ``keep_retrying``: the sink keeps
        trying (write_batch blocks) instead of failing the batch after a second or so."""

    @abstractmethod
    def unreachable(self) -> BatchSink:
        """A sink pointed at a port nothing listens on, retrying for as long as it takes."""

    def sink(self, **overrides: Any) -> BatchSink:
        """A new sink (not started); closed at teardown unless the test closed it."""
        sink = self._build(overrides)
        self._sinks.append(sink)
        return sink

    def close(self, sink: BatchSink, timeout_s: float = 30.0) -> float:
        """``sink.close()`` off the test thread; how long it took."""
        self._closed.add(id(sink))
        started = time.monotonic()
        blocking(sink.close, timeout_s=timeout_s)
        return time.monotonic() - started

    def close_all(self) -> None:
        for sink in self._sinks:
            if id(sink) not in self._closed:
                sink.stop()
                self.close(sink)


def _tag() -> str:
    return uuid.uuid4().hex[:10]


class KafkaTarget(Target):
    name = "kafka"
    keeps_key_order = True
    all_or_nothing = True

    def __init__(self, broker: KafkaBroker) -> None:
        super().__init__()
        self._broker = broker

    def topic(self, *, dead_letters: bool = False) -> str:
        name = f"contract-{_tag()}"
        self._broker.create_topic(name, partitions=1 if dead_letters else 3)
        return name

    def _build(self, overrides: dict[str, Any]) -> BatchSink:
        doc: dict[str, Any] = {
            "bootstrap_servers": self._broker.bootstrap,
            "transactional_id": f"contract-{_tag()}",
            "commit_timeout_s": BLOCKING_CALL_S,
            **overrides,
        }
        return KafkaSink(KafkaSinkConfig(**doc), metrics=Metrics())

    def read(self, topics: list[str], expected: int) -> list[harness.Arrived]:
        # read_committed, up to each partition's end: aborted records never show.
        return harness.read_topics(self._broker.bootstrap, topics)

    def too_large(self, limit: Limit) -> tuple[dict[str, Any], int]:
        # 2 MB: above librdkafka's message.max.bytes (1,000,000) and the broker's
        # (1 MiB). "broker": the client lets it through, so the broker refuses it.
        if limit == "client":
            return {}, 2_000_000
        return {"extra": {"message.max.bytes": 4_000_000}}, 2_000_000

    def blocked_topic(self, *, keep_retrying: bool) -> Blocked:
        name = f"contract-{_tag()}"
        extra = {
            "allow.auto.create.topics": False,
            # How long librdkafka waits for an unknown topic to appear before it fails
            # the topic's records (and with them the transaction).
            "topic.metadata.propagation.max.ms": 120_000 if keep_retrying else 1_000,
        }
        return Blocked(name, {"extra": extra}, lambda: self._broker.create_topic(name, 3))

    def unreachable(self) -> BatchSink:
        return self.sink(bootstrap_servers=f"127.0.0.1:{harness.free_port()}")


class RocketMQTarget(Target):
    all_or_nothing = False

    def __init__(
        self, broker: RocketMQBroker, mode: Literal["ordered", "transactional"], journals: Path
    ) -> None:
        super().__init__()
        self._broker = broker
        self.mode = mode
        self.name = f"rocketmq-{mode}"
        # RocketMQ clients cannot choose the queue of a transactional send (README).
        self.keeps_key_order = mode == "ordered"
        self._journals = journals

    def topic(self, *, dead_letters: bool = False) -> str:
        name = f"contract_{_tag()}"
        if dead_letters:
            self._broker.create_topic(name, queues=1)
        else:
            self._broker.create_topic(name, queues=4, order=self.mode == "ordered")
        return name

    def _build(self, overrides: dict[str, Any]) -> BatchSink:
        doc: dict[str, Any] = {
            "name_server": self._broker.namesrv_addr,
            "producer_group": f"contract_{_tag()}",
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "channel": "CLOUD",
            "mode": self.mode,
            "send_timeout_ms": int(BLOCKING_CALL_S * 1000),
            **overrides,
        }
        if self.mode == "transactional":
            doc.setdefault("journal_dir", self._journals / f"journal-{len(self._sinks)}")
        return RocketMQSink(RocketMQSinkConfig(**doc), metrics=Metrics())

    def read(self, topics: list[str], expected: int) -> list[harness.Arrived]:
        # A push consumer cannot tell it reached the end: it waits for `expected` records,
        # then for a quiet moment, in which a duplicate would still show up.
        return read_topics(
            self._broker.namesrv_addr,
            topics,
            expected=expected,
            timeout_s=30,
            settle_s=1.5,
            credentials=CREDENTIALS,
        )

    def too_large(self, limit: Limit) -> tuple[dict[str, Any], int]:
        if limit == "client":
            return {"max_message_bytes": 64 * 1024}, 100_000
        # At the defaults (max_message_bytes = the broker's maxMessageSize, 4 MiB): under
        # the limit raw, over it once librocketmq has compressed it (random bytes grow
        # by a few hundred), which only the broker would notice. The README asks for
        # max_message_bytes <= the broker's maxMessageSize; above it no client can tell.
        return {}, 4 * 1024 * 1024 - 300

    def _deny(self, key: str, secret: str, topic: str) -> None:
        """A new ACL account that may do anything but publish to ``topic``. The broker
        adds a new account to its tables at once (and to plain_acl.yml)."""
        out = self._broker.mqadmin(
            "updateAclConfig",
            *("-c", CLUSTER, "-a", key, "-s", secret, "-m", "false"),
            *("-i", "PUB|SUB", "-u", "PUB|SUB", "-t", f"{topic}=DENY"),
        )
        assert "success" in out, out

    def _grant(self, key: str, topic: str) -> None:
        """Let account ``key`` publish to ``topic``, by editing plain_acl.yml, which the
        broker's file watcher reloads within seconds (callers retry, as the engine does).
        Not with mqadmin: every mqadmin call first rewrites
        plain_acl.yml with the fixture's own accounts (devtools' RocketMQBroker._prepare),
        and the broker's update of an account it knows but no longer finds in the file
        drops the account."""
        path = self._broker.home / "conf" / "plain_acl.yml"
        doc = yaml.safe_load(path.read_text())
        accounts = [a for a in doc.get("accounts") or [] if a.get("accessKey") == key]
        assert len(accounts) == 1, f"account {key} is gone from {path} (an mqadmin call?)"
        accounts[0]["topicPerms"] = [f"{topic}=PUB"]
        scratch = path.with_name(f".{path.name}.contract")
        scratch.write_text(yaml.safe_dump(doc, sort_keys=False))
        scratch.replace(path)

    def blocked_topic(self, *, keep_retrying: bool) -> Blocked:
        name = self.topic()
        key, secret = f"contract-{_tag()}", f"contract-secret-{_tag()}"
        self._deny(key, secret, name)
        overrides: dict[str, Any] = {"access_key": key, "secret_key": secret}
        if keep_retrying:
            overrides["retries"] = 1_000_000
        return Blocked(name, overrides, lambda: self._grant(key, name))

    def unreachable(self) -> BatchSink:
        return self.sink(name_server=f"127.0.0.1:{harness.free_port()}", retries=1_000_000)


@pytest.fixture(params=SINKS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """Each contract test runs once per sink; only that sink's broker is started."""
    made: Target
    if request.param == "kafka":
        made = KafkaTarget(request.getfixturevalue("kafka"))
    else:
        mode = "transactional" if request.param == "rocketmq-transactional" else "ordered"
        made = RocketMQTarget(request.getfixturevalue("rocketmq"), mode, tmp_path)
    assert made.name == request.param
    try:
        yield made
    finally:
        made.close_all()
