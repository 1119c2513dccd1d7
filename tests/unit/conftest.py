"""Plumbing for tests/unit/test_fuzz.py: the fuzz seed and the count of generated inputs.

The seed is ``--hypothesis-seed`` when given, else ``$TMC_FUZZ_SEED``, else a fresh random
one; it is printed in the header and in the summary, so a failing run can be repeated
with ``pytest tests/unit/test_fuzz.py --hypothesis-seed=N``.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field

import pytest


@dataclass
class FuzzReport:
    seed: int
    #: Generated inputs per property, as counted inside the properties.
    counts: Counter[str] = field(default_factory=Counter)
    #: Properties that ran to the end without a failure.
    completed: set[str] = field(default_factory=set)
    #: Slowest single input per property, in seconds.
    slowest: dict[str, float] = field(default_factory=dict)


FUZZ_REPORT = pytest.StashKey[FuzzReport]()


def _seed(config: pytest.Config) -> int:
    given = config.getoption("--hypothesis-seed", None) or os.environ.get("TMC_FUZZ_SEED")
    if given is None:
        return random.SystemRandom().randrange(2**64)
    try:
        return int(given)
    except ValueError:
        raise pytest.UsageError(f"fuzz seed must be an integer, got {given!r}") from None


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FUZZ_REPORT] = FuzzReport(seed=_seed(config))


def pytest_report_header(config: pytest.Config) -> str:
    seed = config.stash[FUZZ_REPORT].seed
    return f"tmc-bridge fuzz seed: {seed} (repeat with --hypothesis-seed={seed})"


@pytest.fixture(scope="session")
def fuzz_report(pytestconfig: pytest.Config) -> FuzzReport:
    return pytestconfig.stash[FUZZ_REPORT]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    report = terminalreporter.config.stash.get(FUZZ_REPORT, None)
    if report is None or not report.counts:
        return
    total = sum(report.counts.values())
    parts = ", ".join(f"{name} {n:,}" for name, n in report.counts.items())
    slow_name, slowest = max(report.slowest.items(), key=lambda kv: kv[1], default=("", 0.0))
    terminalreporter.write_sep("-", "fuzz")
    terminalreporter.write_line(f"fuzz: {total:,} generated inputs ({parts})")
    terminalreporter.write_line(
        f"fuzz: slowest single input {slowest * 1000:.0f} ms ({slow_name}); seed {report.seed} "
        f"(repeat with --hypothesis-seed={report.seed})"
    )
