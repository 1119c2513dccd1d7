"""``tmc-bridge run`` that dies at a chosen point of its sink, for the crash tests.

    python -m devtools.crash_bridge --crash before_journal:150 --config bridge.yaml
    python -m devtools.crash_bridge --crash after_commit:3 --config bridge.yaml

Runs exactly what ``tmc-bridge run --config ...`` runs (same checks, logging, signals and
exit codes), except that the sink is built with a hook that ends the process with exit
code 86 (``os._exit``: no drain, no confirm, no flush of the client) at the N-th time the
point is reached in this process:

* ``before_journal:N`` / ``after_journal:N`` (RocketMQ, ``mode: transactional``): inside
  the N-th local transaction, before or after its journal entry
  (:data:`~bridge.sinks.rocketmq.LocalTransactionHook`). The half message of that
  transaction is then left to the broker's check-back, which the next bridge answers
  from the journal.
* ``after_commit:N`` (Kafka): on the sink thread right after the N-th
  ``commit_transaction()`` returned, before the pipeline confirms anything of that batch
  (``KafkaSink(after_commit_hook=...)``). The batch is in Kafka, its source messages are
  not confirmed: the source redelivers them (to another replica, or to the next run).

The hook is put into the sink class the registry's factory builds (the factory imports the
class when it is called), so the rest of the composition root, e.g. the committed-ids
store, is built as ``tmc-bridge run`` builds it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, get_args
from unittest import mock

import structlog

from bridge import cli
from bridge.config import load
from bridge.errors import ConfigError
from bridge.sinks.kafka_config import KafkaSinkConfig
from bridge.sinks.rocketmq import JournalPoint
from bridge.sinks.rocketmq_config import RocketMQSinkConfig

#: The exit code of a crash, for the test to tell it from any other end.
CRASH_EXIT_CODE = 86

#: The Kafka sink's crash point.
KafkaPoint = Literal["after_commit"]
CrashPoint = JournalPoint | KafkaPoint
POINTS: tuple[str, ...] = (*get_args(JournalPoint), *get_args(KafkaPoint))

log = structlog.get_logger("devtools.crash_bridge")


class CrashAt:
    """Ends the process at ``point`` the ``nth`` time it is reached (counted from 1 in
    this process). Called as a RocketMQ local transaction hook ``(point, txn id)`` or as
    the Kafka sink's after-commit hook ``()``."""

    def __init__(self, point: CrashPoint, nth: int) -> None:
        self.point = point
        self.nth = nth
        self._count = itertools.count(1)

    @property
    def sink(self) -> str:
        return "kafka" if self.point in get_args(KafkaPoint) else "rocketmq"

    def __call__(self, point: JournalPoint | None = None, transaction_id: str = "") -> None:
        reached = point if point is not None else "after_commit"
        if reached != self.point or next(self._count) != self.nth:
            return
        log.warning("test crash", point=reached, nth=self.nth, txn=transaction_id or None)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)


def crash_point(spec: str) -> CrashAt:
    """``before_journal:N``, ``after_journal:N`` or ``after_commit:N`` (N >= 1)."""
    point, _, count = spec.partition(":")
    if point in POINTS and count.isdigit() and int(count) >= 1:
        known: CrashPoint = point  # type: ignore[assignment]  # checked against POINTS
        return CrashAt(known, int(count))
    raise argparse.ArgumentTypeError(
        f"{spec!r}: expected one of {', '.join(p + ':N' for p in POINTS)} with N >= 1"
    )


def check_sink(hook: CrashAt, config_path: str) -> None:
    """The crash point must belong to the configured sink (else it would never fire)."""
    config = load(Path(config_path))
    if hook.sink == "kafka":
        if config.sink.get(KafkaSinkConfig) is None:
            raise ConfigError(f"crash_bridge: {hook.point} needs sink.type kafka")
        return
    rocketmq = config.sink.get(RocketMQSinkConfig)
    if rocketmq is None or rocketmq.mode != "transactional":
        raise ConfigError(
            f"crash_bridge: {hook.point} needs sink.type rocketmq, mode transactional"
        )


@contextmanager
def hooked_sink(hook: CrashAt) -> Iterator[None]:
    """Make the registry's factory build the sink with ``hook`` in it."""
    if hook.sink == "kafka":
        from bridge.sinks import kafka

        class HookedKafkaSink(kafka.KafkaSink):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **{**kwargs, "after_commit_hook": hook})

        with mock.patch.object(kafka, "KafkaSink", HookedKafkaSink):
            yield
        return
    from bridge.sinks import rocketmq

    class HookedRocketMQSink(rocketmq.RocketMQSink):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "local_transaction_hook": hook})

    with mock.patch.object(rocketmq, "RocketMQSink", HookedRocketMQSink):
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.crash_bridge", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--crash", type=crash_point, required=True, metavar="POINT:N")
    parser.add_argument("--config", default="bridge.yaml", help="YAML config (default bridge.yaml)")
    args = parser.parse_args(argv)
    hook: CrashAt = args.crash
    try:
        check_sink(hook, args.config)
    except ConfigError as exc:
        print(f"tmc-bridge: {exc}", file=sys.stderr)
        return 2
    # `tmc-bridge run` itself (checks, logging, signals, exit codes) with the hook inside.
    with hooked_sink(hook):
        return cli.main(["run", "--config", args.config])


if __name__ == "__main__":
    sys.exit(main())
