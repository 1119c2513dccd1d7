"""``tmc-bridge run`` that dies inside a RocketMQ local transaction, for the crash tests.

    python -m devtools.crash_bridge --crash before_journal:150 --config bridge.yaml

Runs exactly what ``tmc-bridge run --config ...`` runs (same checks, logging, signals and
exit codes), except that the transactional RocketMQ sink is built with a
:data:`~bridge.sinks.rocketmq.LocalTransactionHook` that ends the process with exit code
86 (``os._exit``: no drain, no confirm, no flush of the client) inside the N-th local
transaction, before or after its journal entry. The half message of that transaction is
then left to the broker's check-back, which the next bridge answers from the journal.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Callable
from typing import get_args
from unittest import mock

import structlog

from bridge import app, cli
from bridge.config import BridgeConfig
from bridge.errors import ConfigError
from bridge.observability.metrics import Metrics
from bridge.pipeline.ports import BatchSink
from bridge.sinks.rocketmq import JournalPoint, RocketMQSink
from bridge.sinks.rocketmq_config import RocketMQSinkConfig

#: The exit code of a crash, for the test to tell it from any other end.
CRASH_EXIT_CODE = 86

log = structlog.get_logger("devtools.crash_bridge")


class CrashAt:
    """A local transaction hook: ends the process at ``point`` of the ``nth`` local
    transaction (counted from 1 in this process)."""

    def __init__(self, point: JournalPoint, nth: int) -> None:
        self.point = point
        self.nth = nth
        self._count = itertools.count(1)

    def __call__(self, point: JournalPoint, transaction_id: str) -> None:
        if point != self.point or next(self._count) != self.nth:
            return
        log.warning("test crash inside a local transaction", point=point, txn=transaction_id)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)


def crash_point(spec: str) -> CrashAt:
    """``before_journal:N`` or ``after_journal:N`` (N >= 1), for argparse."""
    point, _, count = spec.partition(":")
    points: tuple[JournalPoint, ...] = get_args(JournalPoint)
    for known in points:
        if point == known and count.isdigit() and int(count) >= 1:
            return CrashAt(known, int(count))
    raise argparse.ArgumentTypeError(
        f"{spec!r}: expected one of {', '.join(p + ':N' for p in points)} with N >= 1"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.crash_bridge", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--crash", type=crash_point, required=True, metavar="POINT:N")
    parser.add_argument("--config", default="bridge.yaml", help="YAML config (default bridge.yaml)")
    args = parser.parse_args(argv)
    hook: CrashAt = args.crash

    def build_sink(config: BridgeConfig, metrics: Metrics) -> BatchSink:
        """The composition root's sink factory, with the hook in the RocketMQ sink."""
        rocketmq = config.sink.get(RocketMQSinkConfig)
        if rocketmq is None or rocketmq.mode != "transactional":
            raise ConfigError("crash_bridge: needs sink.type rocketmq, mode transactional")
        return RocketMQSink(rocketmq, metrics=metrics, local_transaction_hook=hook)

    # Typed: a renamed or re-shaped factory fails the type check, not only a test run.
    factory: Callable[[BridgeConfig, Metrics], BatchSink] = app.build_sink
    # `tmc-bridge run` itself (checks, logging, signals, exit codes) with that factory.
    with mock.patch.object(app, factory.__name__, build_sink):
        return cli.main(["run", "--config", args.config])


if __name__ == "__main__":
    sys.exit(main())
