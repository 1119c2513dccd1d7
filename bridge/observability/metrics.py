"""Every Prometheus metric of the bridge, defined in this one module.

Names follow ``tmc_bridge_<component>_<thing>_<unit>`` (counters get ``_total`` from the
client library): the ``tmc_`` keeps them apart from other "bridges" in a shared
Prometheus. Counters and histograms export no ``_created`` series (below). Labels are
low-cardinality by construction: the source and sink kind, TMC topic names (a few dozen
exist), configured sink topics, connection indexes, error class names and fixed outcome
words. Nothing per order, per user or per message.

Each :class:`Metrics` owns its registry, so several bridges in one process (the tests)
never share counters and nothing is registered in the global default registry.

Hot-path calls (per message) go through small caches of labelled children: resolving a
child is a dict lookup instead of prometheus-client's label validation and locking.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from bridge import __version__
from bridge.observability.loop_metrics import (
    CounterChild,
    HistogramChild,
    LoopCounter,
    LoopHistogram,
)

_M = TypeVar("_M", Counter, Histogram)

#: Prefix of every metric the bridge defines (``metric_names`` and the tests use it).
PREFIX = "tmc_bridge_"

# No ``<name>_created`` series (a creation timestamp per counter and histogram child): they
# would double the samples of every counter and no dashboard or alert reads them. The switch
# is prometheus-client's own and process-wide, which suits the bridge: its process exposes
# only this module's registries. Read at every collect, so it holds for any registry.
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream

#: push -> confirm: a commit is tens of milliseconds; a broker outage is minutes.
CONFIRM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
#: publish -> receive: TMC keeps undelivered messages for a day; redeliveries come ~6 min.
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 86400)
#: One transaction's time in the sink.
COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

#: Transaction outcomes (``tmc_bridge_sink_transactions_total{outcome}``).
COMMITTED, ABORTED, RETRIED = "committed", "aborted", "retried"


class _Cache(Generic[_M]):
    """Labelled children of one metric, resolved once per label set."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: _M) -> None:
        self._metric: _M = metric
        self._children: dict[tuple[str, ...], _M] = {}

    def get(self, *labels: str) -> _M:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels)
        return child


#: Distinct source topic names given their own label value; the platform has a few dozen,
#: so only a source inventing names (a bug or a hostile server) ever reaches this.
MAX_TOPIC_LABELS = 500
OTHER_TOPIC = "(other)"


class _TopicLabels:
    """Source topic -> label value, bounded: past MAX_TOPIC_LABELS names, "(other)"."""

    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: set[str] = set()

    def __call__(self, topic: str) -> str:
        if topic in self._known:
            return topic
        if len(self._known) >= MAX_TOPIC_LABELS:
            return OTHER_TOPIC
        if not topic.isascii():
            # A lone surrogate (JSON can escape one) in a label would break every later
            # scrape: /metrics is rendered as UTF-8.
            topic = topic.encode("utf-8", "replace").decode("utf-8")
        self._known.add(topic)
        return topic


class Metrics:
    """The bridge's metrics; components call the methods, never prometheus directly."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._topic = _TopicLabels()
        r = self.registry
        if registry is None:
            # The standard process_*/python_* families, in our own registry.
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

        Gauge(
            "tmc_bridge_app_build_info", "Bridge version (always 1).", ["version"], registry=r
        ).labels(__version__).set(1)
        self.app_ready = Gauge(
            "tmc_bridge_app_ready",
            "1 when /readyz answers ready (source online, sink ready).",
            [],
            registry=r,
        )
        self.app_draining = Gauge(
            "tmc_bridge_app_draining", "1 while shutting down (no new messages taken).", registry=r
        )

        # -- source ------------------------------------------------------------------
        #: (source, topic) -> the received counter's and the lag histogram's children.
        # Counted once per message on the event loop: the lock-free families of
        # loop_metrics (same exposition).
        self._received_children: dict[tuple[str, str], tuple[CounterChild, HistogramChild]] = {}
        self._received = LoopCounter(
            "tmc_bridge_source_received_messages",
            "Messages taken into the pipeline (redeliveries of held or committed "
            "messages are not counted here).",
            ["source", "topic"],
            registry=r,
        )
        self._confirmed = _Cache(
            Counter(
                "tmc_bridge_source_confirmed_messages",
                "Messages confirmed to the source after the sink committed them.",
                ["source", "topic"],
                registry=r,
            )
        )
        self._failed = _Cache(
            Counter(
                "tmc_bridge_source_failed_messages",
                "Messages handed back to the source as failed (it redelivers them).",
                ["source", "topic"],
                registry=r,
            )
        )
        self._given_up = Counter(
            "tmc_bridge_source_given_up_messages",
            "Messages not written because their source redelivers them anyway (the "
            "connection they came on is gone, or they were held past max_hold_s).",
            ["source"],
            registry=r,
        )
        self._duplicates = _Cache(
            Counter(
                "tmc_bridge_source_duplicate_messages",
                "Redeliveries absorbed: folded into a held message (in_flight) or "
                "confirmed at once because already committed (committed).",
                ["source", "kind"],
                registry=r,
            )
        )
        self._lag = LoopHistogram(
            "tmc_bridge_source_publish_lag_seconds",
            "Source publish time to receipt by the bridge (includes redeliveries).",
            ["source"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self._skipped = _Cache(
            Counter(
                "tmc_bridge_source_skipped_frames",
                "Frames from the source that were neither delivered nor dead-lettered, by "
                "reason: malformed (not a valid frame), unconfirmable (a push without a "
                "valid id), oversized (over the frame limit, no id readable), "
                "internal_error (a bug; see the log). The source redelivers what it pushed.",
                ["source", "reason"],
                registry=r,
            )
        )
        self._connection_up = Gauge(
            "tmc_bridge_source_connection_up",
            "1 while the connection is logged in (TMC) or the consumer is started (ONS). "
            "Connections are numbered across groups; group is the TMC group.",
            ["source", "group", "connection"],
            registry=r,
        )
        self._reconnects = Counter(
            "tmc_bridge_source_reconnects",
            "Reconnect attempts after a connection was lost or refused.",
            ["source", "group", "connection"],
            registry=r,
        )
        self._group_messages = _Cache(
            Counter(
                "tmc_bridge_source_group_messages",
                "Messages per TMC group and connection: received (every push taken, "
                "redeliveries included) and confirmed (confirms sent). The platform's flow "
                "control is set per group; compare the two rates.",
                ["source", "group", "connection", "outcome"],
                registry=r,
            )
        )
        self.source_stepped_back = Gauge(
            "tmc_bridge_source_stepped_back",
            "1 while the bridge has logged out of its source because the sink has been "
            "unavailable for pipeline.step_back_after_s.",
            registry=r,
        )

        # -- pipeline ----------------------------------------------------------------
        self.in_flight = Gauge(
            "tmc_bridge_pipeline_in_flight_messages",
            "Messages received and not yet confirmed or handed back.",
            registry=r,
        )
        self._batch_size = Histogram(
            "tmc_bridge_pipeline_batch_size_messages",
            "Messages per committed batch (one transaction for Kafka).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self._confirm_latency = LoopHistogram(
            "tmc_bridge_pipeline_confirm_latency_seconds",
            "Receipt by the bridge to confirm (after the sink committed).",
            ["source"],
            buckets=CONFIRM_BUCKETS,
            registry=r,
        )

        # -- filters -----------------------------------------------------------------
        self._filtered = _Cache(
            Counter(
                "tmc_bridge_filter_messages",
                "Messages a filter rule dropped (confirmed, never written) or diverted "
                "to its divert_to topic, by rule, action and reason (topic, seller_allow, "
                "seller_deny; _backlog when the rule's in-flight threshold applied).",
                ["rule", "action", "reason"],
                registry=r,
            )
        )

        # -- sink --------------------------------------------------------------------
        self._produced = _Cache(
            Counter(
                "tmc_bridge_sink_produced_messages",
                "Records committed to the sink, per sink topic (dead letters included).",
                ["sink", "topic"],
                registry=r,
            )
        )
        self._dead_lettered = _Cache(
            Counter(
                "tmc_bridge_sink_dead_lettered_messages",
                "Messages written to the dead-letter topic instead of their route.",
                ["sink", "source_topic"],
                registry=r,
            )
        )
        self._transactions = _Cache(
            Counter(
                "tmc_bridge_sink_transactions",
                "Batch attempts by outcome: committed; aborted (not committed: an error "
                "or refused records); retried (the batch is sent again).",
                ["sink", "outcome"],
                registry=r,
            )
        )
        self._errors = _Cache(
            Counter(
                "tmc_bridge_sink_errors",
                "Errors reported by the sink client, by class (e.g. librdkafka error name).",
                ["sink", "error_class"],
                registry=r,
            )
        )
        self._commit_seconds = _Cache(
            Histogram(
                "tmc_bridge_sink_commit_duration_seconds",
                "Time one batch spent in the sink until committed.",
                ["sink"],
                buckets=COMMIT_BUCKETS,
                registry=r,
            )
        )
        self._sink_up = Gauge(
            "tmc_bridge_sink_up",
            "1 while the sink client is started and its broker answers.",
            ["sink"],
            registry=r,
        )

        # -- committed-ids store -------------------------------------------------------
        self.dedup_ids = Gauge(
            "tmc_bridge_dedup_remembered_ids",
            "Committed message ids remembered (within the window), for redeliveries.",
            registry=r,
        )
        self.dedup_bytes = Gauge(
            "tmc_bridge_dedup_memory_bytes",
            "Memory held by the remembered ids (arrays and recent set).",
            registry=r,
        )
        self.dedup_behind = Gauge(
            "tmc_bridge_dedup_behind_seconds",
            "How long the oldest delivery waiting for the committed-ids store has "
            "waited (0 when none waits).",
            registry=r,
        )
        self.dedup_records = Counter(
            "tmc_bridge_dedup_records_read",
            "Records read from the committed-ids topic, by outcome (applied; other "
            "(another app or group); unreadable).",
            ["outcome"],
            registry=r,
        )

    # -- source --------------------------------------------------------------------

    def received(self, source: str, topic: str, publish_time_ms: int | None) -> None:
        # Once per message: the counter child and the histogram child by one dict lookup.
        children = self._received_children.get((source, topic))
        if children is None:
            children = (self._received.labels(source, self._topic(topic)), self._lag.labels(source))
            if len(self._received_children) < 2 * MAX_TOPIC_LABELS:
                self._received_children[(source, topic)] = children
        children[0].inc()
        # Sources validate the time (a date, ms since 1970); the bound keeps a bad one from
        # raising OverflowError here all the same.
        if publish_time_ms and 0 < publish_time_ms < 1 << 53:
            lag = time.time() - publish_time_ms / 1000.0
            # Clock skew between the platform and us must not produce negative samples.
            children[1].observe(lag if lag > 0.0 else 0.0)

    def duplicate(self, source: str, kind: str) -> None:
        self._duplicates.get(source, kind).inc()

    def confirm_latency(self, source: str, latency_s: float) -> None:
        self._confirm_latency.labels(source).observe(latency_s)

    def failed(self, source: str, topic: str, count: int = 1) -> None:
        self._failed.get(source, self._topic(topic)).inc(count)

    def given_up(self, source: str, count: int = 1) -> None:
        self._given_up.labels(source).inc(count)

    def skipped(self, source: str, reason: str) -> None:
        self._skipped.get(source, reason).inc()

    def connection_up(self, source: str, connection: int, up: bool, group: str = "") -> None:
        self._connection_up.labels(source, group, str(connection)).set(1 if up else 0)

    def reconnect(self, source: str, connection: int, group: str = "") -> None:
        self._reconnects.labels(source, group, str(connection)).inc()

    def group_messages(
        self, source: str, group: str, connection: int, outcome: str, count: int = 1
    ) -> None:
        """Messages received or confirmed on a TMC group's connection (the connection
        counts them and reports once per socket write)."""
        self._group_messages.get(source, group, str(connection), outcome).inc(count)

    # -- pipeline and sink -----------------------------------------------------------

    def filtered(self, rule: str, action: str, reason: str) -> None:
        """One message a filter rule dropped or diverted (labels: configured rule
        names and fixed words only)."""
        self._filtered.get(rule, action, reason).inc()

    def committed(
        self,
        sink: str,
        *,
        confirmed: Iterable[tuple[tuple[str, str], int]],
        topics: Iterable[tuple[str, int]],
        dead: Iterable[tuple[str, int]],
        size: int,
        took_s: float,
    ) -> None:
        """One committed batch: confirms per (source, source topic), records per sink
        topic, dead letters per source topic. Counted once per batch, not per message."""
        for (source, source_topic), n in confirmed:
            self._confirmed.get(source, self._topic(source_topic)).inc(n)
        for topic, n in topics:
            self._produced.get(sink, topic).inc(n)
        for source_topic, n in dead:
            self._dead_lettered.get(sink, self._topic(source_topic)).inc(n)
        self._transactions.get(sink, COMMITTED).inc()
        self._batch_size.observe(size)
        self._commit_seconds.get(sink).observe(took_s)

    def transaction(self, sink: str, outcome: str) -> None:
        self._transactions.get(sink, outcome).inc()

    def sink_error(self, sink: str, error_class: str) -> None:
        self._errors.get(sink, error_class).inc()

    def sink_up(self, sink: str, probe: Callable[[], bool]) -> None:
        """Read at scrape time, so the value is never stale."""
        self._sink_up.labels(sink).set_function(lambda: 1.0 if probe() else 0.0)


def metric_names(metrics: Metrics) -> set[str]:
    """Every sample name the bridge's own families can expose (for dashboards/tests)."""
    names: set[str] = set()
    for family in metrics.registry.collect():
        if not family.name.startswith(PREFIX):
            continue
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_count", "_sum"),
        }.get(family.type, ("",))
        names.update(family.name + s for s in suffixes)
    return names
