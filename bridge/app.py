"""Composition root: config -> logging -> sink, pipeline, source; run until told to stop.

Shutdown (first signal): stop reading from the source, let the pipeline commit what it
holds, confirm it, close the source, exit. If that takes longer than
``pipeline.drain_timeout_s``, or a second signal arrives, the pipeline is aborted:
nothing uncommitted is confirmed and the source redelivers it later.

Stepping back: while the sink has been unavailable for ``pipeline.step_back_after_s``,
the source is paused (TMC: logged out; messages stay with the platform and come back in
order), the bridge is not ready with that reason, and the pipeline keeps probing the
sink; once it answers, the source logs in again. The decision is :func:`step_back`.

Health: the HTTP port (``http``) serves ``/metrics``, ``/livez`` and ``/readyz`` from
the first moment, so a pod that cannot reach its source or sink is visibly not ready.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from bridge.config import BridgeConfig
from bridge.errors import BridgeError
from bridge.kinds import SinkContext
from bridge.observability.http import HealthServer
from bridge.observability.metrics import Metrics
from bridge.pipeline.engine import Pipeline
from bridge.pipeline.filters import Filters
from bridge.pipeline.ledger import LruCommittedIds
from bridge.pipeline.ports import BatchSink, CommittedIds, Source, Submit
from bridge.pipeline.routing import Router

log = structlog.get_logger("bridge.app")


def step_back(
    paused: bool, unavailable_since: float | None, now: float, after_s: float
) -> bool | None:
    """Pause (True), resume (False) or leave the source as it is (None), given since when
    the sink has been unavailable (None: it is available) and the threshold (0: never)."""
    if paused:
        return False if unavailable_since is None else None
    if after_s > 0 and unavailable_since is not None and now - unavailable_since >= after_s:
        return True
    return None


def sink_context(config: BridgeConfig, metrics: Metrics) -> SinkContext:
    return SinkContext(
        metrics=metrics,
        dead_letter_topic=config.routing.dead_letter_topic,
        namespace=config.source_kind.namespace(config.source.selected),
    )


def build_sink(config: BridgeConfig, metrics: Metrics) -> BatchSink:
    """The sink ``sink.type`` names, from the registry (its module is imported only now,
    so a Kafka bridge never loads librocketmq, and the other way round)."""
    return config.sink_kind.build(config.sink.selected, sink_context(config, metrics))


def build_committed_ids(config: BridgeConfig, metrics: Metrics) -> CommittedIds:
    """The sink's committed-ids store (Kafka's topic), else the in-memory LRU."""
    store = config.sink_kind.committed_ids(config.sink.selected, sink_context(config, metrics))
    return store if store is not None else LruCommittedIds(config.pipeline.dedupe_cache_size)


def build_source(config: BridgeConfig, submit: Submit, metrics: Metrics) -> Source:
    """The source ``source.type`` names, from the registry."""
    return config.source_kind.build(config.source.selected, submit, metrics)


def describe(config: BridgeConfig) -> dict[str, object]:
    """Source and sink in a few log fields (no secrets)."""
    fields: dict[str, object] = {"source": config.source.type, "sink": config.sink.type}
    fields.update(config.source_kind.log_fields(config.source.selected))
    if config.filters:
        fields["filters"] = [rule.name for rule in config.filters]
    return fields


class Bridge:
    """One running bridge: a source, the pipeline, a sink."""

    def __init__(self, config: BridgeConfig, *, sink: BatchSink | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.router = Router(config.routing, envelope=config.value_format == "envelope")
        self.sink: BatchSink = sink or build_sink(config, self.metrics)
        self.committed = build_committed_ids(config, self.metrics)
        self.pipeline = Pipeline(
            config.pipeline,
            self.router,
            self.sink,
            metrics=self.metrics,
            committed=self.committed,
            log_message_ids=config.log.message_ids,
            filters=Filters(config.filters),
        )
        self.source = build_source(config, self.pipeline.submit, self.metrics)
        self.stopping = asyncio.Event()
        self.aborting = asyncio.Event()
        self.http: HealthServer | None = None
        self.metrics.app_ready.set_function(lambda: 0.0 if self.problems() else 1.0)

    def problems(self) -> list[str]:
        """Why the bridge is not ready (empty when it is). Read from the HTTP thread."""
        found = []
        if self.stopping.is_set():
            found.append("draining")
        source = self.source.problem()
        if source is not None:
            found.append(source)
        sink = self.pipeline.sink_problem()
        if sink is not None:
            found.append(sink)
        store = self.committed.problem()
        if store is not None:
            found.append(store)
        return found

    def _start_http(self) -> None:
        cfg = self.config.http
        if not cfg.enabled:
            return
        try:
            self.http = HealthServer(
                cfg.host,
                cfg.port,
                self.metrics.registry,
                self.problems,
                loop=asyncio.get_running_loop(),
                notes=self.source.notes,
            )
        except OSError as exc:
            raise BridgeError(
                f"http: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}"
            ) from None
        self.http.start()

    def request_stop(self) -> None:
        """First call: graceful drain. Second call: abort without confirming more."""
        if self.stopping.is_set():
            log.warning("second stop request: aborting without confirming uncommitted work")
            self.aborting.set()
            self.pipeline.abort()
        self.stopping.set()
        self.metrics.app_draining.set(1)

    async def run(self) -> bool:
        """Run until stopped. True when the drain finished, False when it was aborted."""
        log.info("bridge starting", **describe(self.config))
        self._start_http()
        try:
            return await self._run()
        finally:
            if self.http is not None:
                await asyncio.to_thread(self.http.stop)

    async def _start(self) -> None:
        """The sink, and the committed-ids store caught up: only then may the source start
        (nothing is produced or confirmed before the store knows what was committed)."""
        self.committed.start()
        await asyncio.gather(self.pipeline.start_sink(), self.committed.wait_ready())

    async def _watch_sink(self, tick_s: float = 1.0) -> None:
        """Pause the source during a long sink outage, resume it once the sink answers."""
        after_s = self.config.pipeline.step_back_after_s
        since: float | None = None
        paused = False
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick_s)
            problem = self.pipeline.sink_problem()
            now = loop.time()
            if problem is None:
                since = None
            elif since is None:
                since = now
            action = step_back(paused, since, now, after_s)
            try:
                if action is True:
                    reason = f"sink unavailable for {now - (since or now):.0f} s: {problem}"
                    log.warning(
                        "stepping back from the source until the sink answers", reason=reason
                    )
                    self.source.pause(reason)
                    paused = True
                elif action is False:
                    log.info("the sink answers again: logging in to the source")
                    self.source.resume()
                    paused = False
            except Exception:
                # A bug in a source's pause/resume: say so, and keep watching (the next
                # tick tries again) rather than end stepping back for the whole run.
                log.exception("stepping back or in failed", action=action)

    async def _run(self) -> bool:
        try:
            return await self._run_parts()
        finally:
            await asyncio.to_thread(self.committed.close)

    async def _run_parts(self) -> bool:
        sink_ready = asyncio.create_task(self._start())
        stop_wait = asyncio.create_task(self.stopping.wait())
        await asyncio.wait({sink_ready, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if not sink_ready.done():
            self.pipeline.abort()
            with contextlib.suppress(Exception):
                await sink_ready
            await self.pipeline.shutdown()
            return True
        sink_ready.result()
        self.source.start()
        writer = asyncio.create_task(self.pipeline.run())
        watch = asyncio.create_task(self._watch_sink())
        await asyncio.wait({writer, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watch
        log.info("bridge draining", in_flight=self.pipeline.in_flight)
        await self.source.stop_reading()
        self.pipeline.close()
        timeout = self.config.pipeline.drain_timeout_s
        abort_wait = asyncio.create_task(self.aborting.wait())
        done, _ = await asyncio.wait(
            {writer, abort_wait}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        drained = writer in done
        if not drained:
            log.warning("drain did not finish, aborting", in_flight=self.pipeline.in_flight)
            self.pipeline.abort()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        abort_wait.cancel()
        stop_wait.cancel()
        await self.source.close()
        await self.pipeline.shutdown()
        log.info(
            "bridge stopped",
            committed=self.pipeline.stats.committed,
            left_unconfirmed=self.pipeline.in_flight,
        )
        error = writer.exception() if writer.done() and not writer.cancelled() else None
        if error is not None:
            # A bug in the pipeline: nothing more was confirmed; surface it as a failure.
            raise error
        return drained and not self.aborting.is_set()
