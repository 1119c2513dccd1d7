"""The one retry policy: exponential back-off with upward jitter. Pure (no clock, no sleep).

Every retry loop of the bridge takes its delays from a :class:`Backoff`: the pipeline
between attempts of a batch, the Kafka sink around ``init_transactions``, the RocketMQ
sink between sends of a record, the TMC connection between reconnects. The jitter is
upward only (x1.0 to x1.5), so the first delay is never shorter than ``min_s`` (the TMC
platform refuses fast reconnects) and replicas that failed together spread out.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays ``min_s``, ``min_s*factor``, ... capped at ``max_s``, each times a random
    factor in [1, 1 + jitter] (and still capped at ``max_s``)."""

    min_s: float
    max_s: float
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.min_s < 0 or self.max_s < self.min_s:
            raise ValueError(f"back-off needs 0 <= min_s <= max_s, got {self.min_s}, {self.max_s}")
        if self.factor < 1 or self.jitter < 0:
            raise ValueError("back-off needs factor >= 1 and jitter >= 0")

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """An endless series of delays; start a new series after a success."""
        rand = rng or random.Random()
        base = self.min_s
        while True:
            yield min(self.max_s, base * rand.uniform(1.0, 1.0 + self.jitter))
            # From a zero floor the series still grows (0.1 s, 0.2 s, ...).
            base = min(self.max_s, max(base * self.factor, 0.1))
