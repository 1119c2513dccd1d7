"""The event loop's lock-free families expose exactly what prometheus-client's own
Counter and Histogram expose for the same updates."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from bridge.observability import metrics  # noqa: F401 - switches _created series off
from bridge.observability.loop_metrics import LoopCounter, LoopHistogram

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 1, 2.5, 60, 300)
values = st.lists(
    st.tuples(
        st.sampled_from(["tmc", "ons"]),
        st.one_of(
            st.sampled_from(BUCKETS),  # exactly on a bound: le is inclusive
            st.floats(min_value=0, max_value=1000, allow_nan=False),
        ),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(values)
def test_histogram_exposition_matches_prometheus_client(samples: list[tuple[str, float]]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("h_seconds", "doc", ["source"], buckets=BUCKETS, registry=ours)
    ref = Histogram("h_seconds", "doc", ["source"], buckets=BUCKETS, registry=theirs)
    for source, value in samples:
        loop.labels(source).observe(value)
        ref.labels(source).observe(value)
    assert _lines(ours) == _lines(theirs)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 5)), max_size=30))
def test_counter_exposition_matches_prometheus_client(incs: list[tuple[str, int]]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopCounter("c_messages", "doc", ["topic"], registry=ours)
    ref = Counter("c_messages", "doc", ["topic"], registry=theirs)
    for topic, n in incs:
        loop.labels(topic).inc(n)
        ref.labels(topic).inc(n)
    assert _lines(ours) == _lines(theirs)


def test_wrong_label_count_is_refused() -> None:
    loop = LoopHistogram("x", "doc", ["a", "b"], buckets=BUCKETS, registry=CollectorRegistry())
    with pytest.raises(ValueError, match="expected labels"):
        loop.labels("only-one")


def _lines(registry: CollectorRegistry) -> list[str]:
    # Sample order within a family may differ; the set of lines may not.
    return sorted(generate_latest(registry).decode().splitlines())
