"""The official TMC Java client against ``tmc-bridge simulate``.

``tests/java/TmcProbe.java`` drives ``com.taobao.api.internal.tmc.TmcClient`` (the SDK comes
from Maven Central into the git-ignored cache, see :mod:`devtools.java_client`): it logs in,
receives every message, fails every ``FAIL_EVERY``-th one the first time it sees it
(``status.fail()``) and prints one JSON line per event. The simulator runs as a child process,
the way a user runs it, with a short delay before a failed message comes back.

What must hold, checked on both sides (the probe's events, the simulator's stats and ledger):
one login and no disconnect, every message confirmed at the simulator, each failed message
redelivered exactly once, with ``retried`` = 1 as the client sees it; and with a wrong secret
the client reports the server's "invalid sign".
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools import harness
from devtools.java_client import BrokerError, Probe, build_probe, parse_events, probe_command

pytestmark = pytest.mark.integration

MESSAGES = 300
FAIL_EVERY = 10
FAILED_DELAY_S = 1.0
PROBE_TIMEOUT_S = 40


@pytest.fixture(scope="session")
def java_probe() -> Probe:
    """The compiled probe; downloads the SDK on the first run. No JDK is a failure, not a
    skip: CI has one, and this test is the only check of the official client."""
    try:
        return build_probe()
    except BrokerError as exc:
        pytest.fail(f"cannot build the Java client probe: {exc}", pytrace=False)


@dataclass
class Sim:
    port: int
    child: harness.Child

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = harness.sim_get(self.port, "stats")
        return stats

    def ledger(self) -> list[dict[str, Any]]:
        ledger: list[dict[str, Any]] = harness.sim_get(self.port, "ledger")
        return ledger


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Sim]:
    """``tmc-bridge simulate`` with MESSAGES queued and failed messages back after
    FAILED_DELAY_S (the default, 360 s, is TMC's). The confirm timeout stays long, so every
    redelivery in these tests comes from a Failed."""
    port = harness.free_port()
    child = harness.spawn(
        "simulator",
        [
            "simulate",
            "--port",
            str(port),
            "--app-key",
            harness.DEMO_APP_KEY,
            "--messages",
            str(MESSAGES),
            "--confirm-timeout-s",
            "120",
            "--failed-delay-s",
            str(FAILED_DELAY_S),
            "--log-level",
            "warning",
        ],
        tmp_path,
        {"TMC_APP_SECRET": harness.DEMO_SECRET},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                harness.sim_get(port, "stats")
                break
            except OSError:
                if child.proc.poll() is not None:
                    pytest.fail(f"simulator exited:\n{child.tail()}", pytrace=False)
                if time.monotonic() > deadline:
                    pytest.fail(f"simulator not up after 30 s:\n{child.tail()}", pytrace=False)
                time.sleep(0.1)
        yield Sim(port, child)
    finally:
        child.stop()


@dataclass
class Run:
    exit_code: int
    events: list[dict[str, Any]]
    stderr: str

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]

    def outline(self) -> str:
        """Everything but the per-message events, for assertion messages."""
        per_message = {"message", "ok", "fail"}
        lines = [json.dumps(e) for e in self.events if e.get("event") not in per_message]
        counts = Counter(e.get("event") for e in self.events)
        return (
            f"probe exit {self.exit_code}, events {dict(counts)}\n"
            + "\n".join(lines[-40:])
            + (f"\nstderr:\n{self.stderr[-2000:]}" if self.stderr.strip() else "")
        )


def run_probe(probe: Probe, sim: Sim, tmp_path: Path, *, secret: str, name: str) -> Run:
    cmd = probe_command(
        probe,
        url=sim.url,
        app_key=harness.DEMO_APP_KEY,
        secret=secret,
        expected=MESSAGES,
        fail_every=FAIL_EVERY,
        timeout_s=PROBE_TIMEOUT_S,
        linger_ms=500,
    )
    try:
        result = subprocess.run(
            cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the Java probe hung:\n{exc.stdout!r}", pytrace=False)
    (tmp_path / f"{name}.out").write_text(result.stdout)
    (tmp_path / f"{name}.err").write_text(result.stderr)
    return Run(result.returncode, parse_events(result.stdout), result.stderr)


def test_official_client_logs_in_fails_some_and_confirms_all(
    java_probe: Probe, simulator: Sim, tmp_path: Path
) -> None:
    run = run_probe(java_probe, simulator, tmp_path, secret=harness.DEMO_SECRET, name="probe")
    stats = simulator.stats()
    ledger = simulator.ledger()
    failed_ids = {e["id"] for e in run.of("fail")}
    messages = run.of("message")
    repeats = [m for m in messages if not m["first"]]
    n_failed = MESSAGES // FAIL_EVERY
    why = f"{run.outline()}\nsimulator: {stats}\nsimulator log:\n{simulator.child.tail()}"

    # The figures, side by side: one login, no disconnect, all confirmed, each
    # failed one redelivered once (as the client sees it and as the simulator counts it).
    figures = {
        "probe exit": run.exit_code,
        "probe logins": len(run.of("login")),
        "probe connect errors": [e.get("text") for e in run.of("error")],
        "probe disconnects": len(run.of("offline")),
        "probe SDK errors": [e["text"] for e in run.of("log") if e.get("level") != "warn"],
        "probe distinct messages": len({m["id"] for m in messages}),
        "probe failed": len(failed_ids),
        "probe redelivered": len(repeats),
        "sim logins_ok": stats["logins_ok"],
        "sim logins_failed": stats["logins_failed"],
        "sim confirmed": stats["confirmed"],
        "sim outstanding": stats["outstanding"],
        "sim failed_received": stats["failed_received"],
        "sim redelivered": stats["redelivered"],
        "sim pushes": stats["pushes"],
        "sim duplicate/unknown confirms": (stats["duplicate_confirms"], stats["unknown_confirms"]),
        "sim protocol_errors": stats["protocol_errors"],
        # The client pings right after the handshake; a pong kills it (BufferUnderflowException
        # in its decoder), so the simulator must not answer, as TMC does not.
        "sim pongs_sent": stats.get("pongs_sent", 0),
    }
    assert figures == {
        "probe exit": 0,
        "probe logins": 1,
        "probe connect errors": [],
        "probe disconnects": 0,
        "probe SDK errors": [],
        "probe distinct messages": MESSAGES,
        "probe failed": n_failed,
        "probe redelivered": n_failed,
        "sim logins_ok": 1,
        "sim logins_failed": 0,
        "sim confirmed": MESSAGES,
        "sim outstanding": 0,
        "sim failed_received": n_failed,
        "sim redelivered": n_failed,
        "sim pushes": MESSAGES + n_failed,
        "sim duplicate/unknown confirms": (0, 0),
        "sim protocol_errors": 0,
        "sim pongs_sent": 0,
    }, why

    # Per message: the failed ones came back once each, flagged retried=1 on the way back
    # and not before; the others came once. The ledger agrees, all on connection 1.
    seen = Counter(m["id"] for m in messages)
    assert {i for i, n in seen.items() if n > 1} == failed_ids, why
    assert max(seen.values()) == 2, why
    assert {m["id"] for m in repeats} == failed_ids, why
    assert {m["retried"] for m in repeats} == {"1"}, why
    assert {m["retried"] for m in messages if m["first"]} <= {None, "0"}, why
    assert sorted(m["id"] for m in ledger) == sorted(seen), why
    by_state = Counter((m["state"], m["pushes"], m["conn"], m["id"] in failed_ids) for m in ledger)
    assert by_state == {
        ("confirmed", 1, 1, False): MESSAGES - n_failed,
        ("confirmed", 2, 1, True): n_failed,
    }, why
    # Failed ones are handled without success the first time, confirmed the second.
    assert len(run.of("ok")) == MESSAGES, why


def test_official_client_reports_invalid_sign(
    java_probe: Probe, simulator: Sim, tmp_path: Path
) -> None:
    run = run_probe(java_probe, simulator, tmp_path, secret="not-the-secret", name="probe")
    stats = simulator.stats()
    why = f"{run.outline()}\nsimulator: {stats}\nsimulator log:\n{simulator.child.tail()}"
    errors = run.of("error")
    assert run.exit_code == 2, why
    assert [(e["type"], e["text"]) for e in errors] == [
        ("com.taobao.api.internal.toplink.LinkException", "invalid sign")
    ], why
    assert run.of("login") == [], why
    assert run.of("message") == [], why
    assert (stats["logins_ok"], stats["logins_failed"], stats["pushes"]) == (0, 1, 0), why
