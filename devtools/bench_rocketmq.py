"""RocketMQ parts of ``make bench`` (:mod:`devtools.bench`): what the raw transactional
client does one send at a time and with several threads, and the raw clients' CPU.

The transactional sink sends one record at a time
(:class:`bridge.rocketmq.client.TransactionalProducer`'s lock, see its docstring and
docs/rocketmq-performance.md). :func:`raw_transactional_rates` measures that path raw
(no bridge, the local transaction a no-op) once as the sink runs it and once with the
lock replaced by nothing, from several threads, to show what the serialisation costs.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bridge.sources.tmc.generator import OrderGenerator
from devtools.bench_report import Ceiling


@dataclass
class RawRate:
    """A raw client's rate and its process CPU per message (µs)."""

    rate: float
    cpu_us: float
    #: What else the run showed (duplicate transaction ids).
    note: str = ""


_CPU_NOTE = re.compile(r"process CPU (\d+(?:\.\d+)?) µs/msg")


def cpu_of(ceiling: Ceiling | None) -> float | None:
    """The process CPU per message (µs) a raw row noted, or None."""
    for note in ceiling.notes if ceiling is not None else ():
        match = _CPU_NOTE.search(note)
        if match:
            return float(match.group(1))
    return None


def raw_transactional_rates(
    name_server: str, topic: str, count: int, threads: int
) -> dict[str, RawRate]:
    """Raw transactional sends (half message, a local transaction that commits at once,
    end of transaction): from one thread, as the sink sends, and from ``threads`` threads
    without the producer's lock (not what the sink does)."""
    from bridge.errors import RocketMQSendError
    from bridge.rocketmq import client as sdk
    from devtools.demo import DEMO_ACCESS_KEY, DEMO_SECRET_KEY

    events = OrderGenerator(seed=11).events(count)
    messages = [
        sdk.OutMessage(topic, ev.content.encode(), ev.topic, [str(ev.key)], ()).wire()
        for ev in events
    ]
    out: dict[str, RawRate] = {}
    for label, workers, locked in (
        ("1 thread (as the sink)", 1, True),
        (f"{threads} threads, no lock (not what the sink does)", threads, False),
    ):
        group = f"bench_txn_{uuid.uuid4().hex[:6]}"
        settings = sdk.ClientSettings(
            name_server, None, (DEMO_ACCESS_KEY, DEMO_SECRET_KEY, "ALIYUN"), group
        )
        producer = sdk.TransactionalProducer(
            group,
            settings,
            lambda _message: True,
            send_timeout_ms=3000,
            max_message_bytes=4 << 20,
            check_properties=(),
        )
        if not locked:
            producer._send_lock = contextlib.nullcontext()
        producer.start()
        committed: list[str] = []

        def local(transaction_id: str) -> bool:
            committed.append(transaction_id)  # noqa: B023 - used while this loop turn runs
            return True

        def send(message: sdk.WireMessage) -> None:
            for attempt in range(10):
                try:
                    producer.send(message, local)  # noqa: B023
                    return
                except RocketMQSendError:
                    if attempt == 9:
                        raise
                    time.sleep(0.05 * (attempt + 1))

        def lane(part: int) -> None:
            for message in messages[part::workers]:  # noqa: B023
                send(message)

        try:
            for message in messages[:20]:  # warm-up: the route
                send(message)
            committed.clear()
            cpu = time.process_time()
            started = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lane, range(workers)))
            took = time.perf_counter() - started
            cpu = time.process_time() - cpu
        finally:
            producer.shutdown()
        if len(committed) != count:
            raise RuntimeError(f"{label}: {len(committed)} local transactions for {count} sends")
        # librocketmq makes the transaction id (the message's UNIQ_KEY) itself; from several
        # threads at once it was seen making the same id twice, which the sink's journal
        # (keyed by transaction id for the check-backs) could not tell apart.
        duplicates = count - len(set(committed))
        note = f"{duplicates} duplicate transaction ids" if duplicates else ""
        out[label] = RawRate(count / took, cpu / count * 1e6, note)
    return out
