"""A real single-node Apache Kafka (KRaft, broker + controller in one JVM) for tests and demos.

The bridge's guarantees (transactional produce, "confirm to TMC only after commit", restart and
crash behaviour) can only be checked against a real broker, and these machines have no Docker
and no access to downloads.apache.org. Maven Central is reachable, so Kafka is assembled from
its Maven artifacts (``kafka-pom.xml`` next to this file) and started with ``java -cp``.

The jars are cached in a git-ignored folder (``DEFAULT_CACHE``), so only the first run pays for
the download. Each :class:`KafkaBroker` owns one work directory (config, data, log) and keeps
its ports across ``stop()``/``start()`` so tests can restart the broker and reconnect clients to
the very same address, which is what a real broker restart looks like to the bridge.

Command line::

    python -m devtools.brokers.kafka --download-only
    python -m devtools.brokers.kafka --workdir .work/kafka [--port 9092]
"""

from __future__ import annotations

import base64
import os
import sys
import time
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # `confluent_kafka.admin` does not re-export it

from devtools.brokers.processes import (
    DEFAULT_CACHE,
    LOG_TAIL_LINES,
    BrokerError,
    JavaProcess,
    ManagedBroker,
    ensure_maven_jars,
    java_command,
    launcher_parser,
    pick_ports,
    port_accepts,
    run_captured,
    run_launcher,
    tail,
)

__all__ = [
    "DEFAULT_CACHE",
    "KAFKA_VERSION",
    "BrokerError",
    "KafkaBroker",
    "ensure_kafka",
    "main",
]

KAFKA_VERSION = "4.1.1"
"""Must match ``kafka.version`` in ``kafka-pom.xml`` (the cache folder is named after it)."""

_POM_FILE = Path(__file__).with_name("kafka-pom.xml")
_FORMAT_TIMEOUT_S = 120.0
_READY_LINE = "Kafka Server started"


def ensure_kafka(cache_dir: Path | None = None) -> Path:
    """Make sure Kafka's jars are in ``<cache_dir>/kafka-<version>/lib`` and return that folder.

    Downloaded once from Maven Central (see :func:`devtools.brokers.processes.ensure_maven_jars`:
    locked, marked complete only after a full download, invalidated by editing the pom).
    Raises :class:`BrokerError` if ``java`` or ``mvn`` is missing or the download fails.
    """
    return ensure_maven_jars(
        pom=_POM_FILE,
        name=f"kafka-{KAFKA_VERSION}",
        required=[f"kafka_2.13-{KAFKA_VERSION}.jar"],
        product=f"Kafka {KAFKA_VERSION}",
        cache_dir=cache_dir,
    )


# --------------------------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------------------------

_LOG4J2_PROPERTIES = """\
# Written by devtools.brokers.kafka. Console only (the parent redirects it to kafka.log).
# Root at WARN keeps the log short; KafkaRaftServer at INFO prints "Kafka Server started".
status = warn
name = tmc-bridge-test-kafka
# Log4j's own hook only prints a warning when registered while the JVM is exiting, and the
# console appender needs no flushing at shutdown.
shutdownHook = disable
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.stdout.ref = STDOUT
logger.raftserver.name = kafka.server.KafkaRaftServer
logger.raftserver.level = info
"""


class KafkaBroker(ManagedBroker):
    """One single-node Kafka (KRaft combined mode) owning ``workdir``.

    Layout of ``workdir``: ``server.properties``, ``log4j2.properties``, ``data/`` (formatted
    on the first start only, then reused, so ``stop()``/``start()`` and ``kill()``/``start()``
    resume with the same topics and offsets), ``tmp/`` (the JVM's temp dir) and ``kafka.log``
    (stdout and stderr of every run, appended).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int = 0,
        cache_dir: Path | None = None,
        heap_mb: int = 768,
        properties: dict[str, str] | None = None,
    ) -> None:
        """Pick the ports now (``port=0``: free ones) and keep them for the broker's lifetime.

        The controller listener always gets a free port of its own, so that only the client
        port has to be chosen by callers who want a fixed address. ``properties`` are
        ``server.properties`` settings added to (or replacing) the defaults below, e.g.
        ``transaction.abort.timed.out.transaction.cleanup.interval.ms`` for the chaos suite.
        """
        self.workdir = Path(workdir).resolve()
        self.cache_dir = cache_dir
        self.heap_mb = heap_mb
        self.properties = dict(properties or {})
        if port:
            self.port = port
            self.controller_port = pick_ports(1, exclude={port})[0]
        else:
            self.port, self.controller_port = pick_ports(2, exclude=set())
        self.bootstrap: str = f"127.0.0.1:{self.port}"
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "kafka.log"
        self._jvm = JavaProcess("Kafka", self.log_path)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"KafkaBroker({self.bootstrap}, {state}, workdir={self.workdir})"

    # -- state ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the JVM process is alive (not necessarily ready)."""
        return self._jvm.running

    @property
    def pid(self) -> int | None:
        """Process id of the JVM (also its process group id), or None when not started."""
        return self._jvm.pid

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Last lines of ``kafka.log``, for error messages and failing-test diagnostics."""
        return self._jvm.log_tail(lines)

    # -- configuration -------------------------------------------------------------------

    def _server_properties(self) -> str:
        listeners = (
            f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
        )
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": listeners,
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "auto.create.topics.enable": "true",
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # After a crash (kill()) the restarted controller refuses the broker's new
            # registration until the old session expires: 9 s by default, which made a
            # restart after kill() take ~12 s instead of ~2.5 s. 4 s with 0.5 s heartbeats
            # still tolerates multi-second stalls on a busy 2-core machine.
            "broker.session.timeout.ms": "4000",
            "broker.heartbeat.interval.ms": "500",
            **self.properties,
        }
        body = "".join(f"{key}={value}\n" for key, value in props.items())
        return "# Written by devtools.brokers.kafka; rewritten on every start.\n" + body

    def _java(self, lib: Path, heap: list[str], main: str, *args: str) -> list[str]:
        options = [
            *heap,
            f"-Djava.io.tmpdir={self.workdir / 'tmp'}",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
        ]
        return java_command(lib, main, args, options)

    def _format_storage(self, lib: Path) -> None:
        """Format ``data/`` once; an existing ``meta.properties`` means it is ours already."""
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = "-"
        while cluster_id.startswith("-"):  # a leading dash would be parsed as an option
            cluster_id = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        cmd = self._java(
            lib,
            ["-Xmx256m"],
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.workdir / "server.properties"),
        )
        result = run_captured(cmd, timeout_s=_FORMAT_TIMEOUT_S, what="kafka-storage format")
        with self.log_path.open("a") as log:
            log.write(result.stdout)
        if result.returncode != 0:
            raise BrokerError(
                f"kafka-storage format failed (exit {result.returncode}):\n{tail(result.stdout)}"
            )

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout_s: float = 90) -> None:
        """Start the JVM and block until the broker answers a metadata request.

        The JVM runs in its own process group and dies with the test process (see
        :class:`JavaProcess`). Raises :class:`BrokerError` with the log tail if the process
        exits or is not ready within ``timeout_s``.
        """
        if self.running:
            raise BrokerError(f"{self!r} is already running")
        lib = ensure_kafka(self.cache_dir)
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "server.properties").write_text(self._server_properties())
        (self.workdir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES)
        self._jvm.mark(f"start {time.strftime('%Y-%m-%dT%H:%M:%S')} {self.bootstrap}")
        self._format_storage(lib)

        cmd = self._java(
            lib,
            [f"-Xms{min(256, self.heap_mb)}m", f"-Xmx{self.heap_mb}m"],
            "kafka.Kafka",
            str(self.workdir / "server.properties"),
        )
        self._jvm.start(cmd, cwd=self.workdir)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        admin: AdminClient | None = None

        def ready(remaining: float) -> bool:
            nonlocal admin
            # The socket is bound (and connect() succeeds via the backlog) well before the
            # broker serves requests, so a metadata round trip is the real readiness test.
            if _READY_LINE not in self._jvm.output() and not port_accepts(self.port):
                return False
            if admin is None:
                admin = self._admin(probe=True)
            try:
                md = admin.list_topics(timeout=max(0.5, min(2.0, remaining)))
            except KafkaException:
                return False
            return bool(md.brokers)

        self._jvm.wait_ready(ready, timeout_s, f"at {self.bootstrap}")

    def stop(self, timeout_s: float = 30) -> None:
        """Shut down cleanly (SIGTERM, SIGKILL after ``timeout_s``); data and ports are kept."""
        self._jvm.stop(timeout_s)

    def kill(self) -> None:
        """SIGKILL the whole process group, to simulate a broker crash; data is kept."""
        self._jvm.kill()

    # -- admin -----------------------------------------------------------------------------

    def _admin(self, *, probe: bool = False) -> AdminClient:
        conf: dict[str, str | int | float | bool] = {"bootstrap.servers": self.bootstrap}
        if probe:
            # librdkafka logs every refused/timed-out connection to stderr; while polling a
            # starting broker those are expected, so silence them (errors still raise).
            conf.update({"log_level": 0, "reconnect.backoff.max.ms": 500})
        return AdminClient(conf)

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        timeout_s: float = 30,
        config: dict[str, str] | None = None,
    ) -> None:
        """Create ``name`` (replication 1) and wait until every partition has a leader.

        An existing topic is fine (idempotent test setup). Waiting for leaders avoids the
        first produce racing the partition's leader election.
        """
        admin = self._admin()
        future = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
            request_timeout=timeout_s,
        )[name]
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise BrokerError(f"creating topic {name!r} failed: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        while True:
            md = admin.list_topics(topic=name, timeout=max(1.0, deadline - time.monotonic()))
            topic = md.topics.get(name)
            if (
                topic is not None
                and topic.error is None
                and topic.partitions
                and all(p.leader >= 0 and p.error is None for p in topic.partitions.values())
            ):
                return
            if time.monotonic() > deadline:
                raise BrokerError(f"topic {name!r} has no leader after {timeout_s:.0f}s")
            time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run a broker in the foreground (for the demo and manual testing) or just download it."""
    parser = launcher_parser(
        "devtools.brokers.kafka",
        f"Run a single-node Apache Kafka {KAFKA_VERSION} from Maven Central jars.",
    )
    parser.add_argument("--port", type=int, default=0, help="client port (default: a free one)")
    parser.add_argument("--heap-mb", type=int, default=768)
    return run_launcher(
        parser,
        argv,
        product=f"kafka {KAFKA_VERSION}",
        ensure=ensure_kafka,
        build=lambda args: KafkaBroker(
            args.workdir, port=args.port, cache_dir=args.cache_dir, heap_mb=args.heap_mb
        ),
        describe=lambda broker: (f"kafka ready at {broker.bootstrap}", f"log: {broker.log_path}"),
    )


if __name__ == "__main__":
    sys.exit(main())
