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

    python -m bridge.testing.kafka_broker --download-only
    python -m bridge.testing.kafka_broker --workdir .work/kafka [--port 9092]
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # `confluent_kafka.admin` does not re-export it

from bridge.testing.processes import (
    DEFAULT_CACHE,
    LOG_TAIL_LINES,
    BrokerError,
    JavaProcess,
    ensure_maven_jars,
    java_command,
    pick_ports,
    port_accepts,
    run_captured,
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

    Downloaded once from Maven Central (see :func:`bridge.testing.processes.ensure_maven_jars`:
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
# Written by bridge.testing.kafka_broker. Console only (the parent redirects it to kafka.log).
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

class KafkaBroker:
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
    ) -> None:
        """Pick the ports now (``port=0``: free ones) and keep them for the broker's lifetime.

        The controller listener always gets a free port of its own, so that only the client
        port has to be chosen by callers who want a fixed address.
        """
        self.workdir = Path(workdir).resolve()
        self.cache_dir = cache_dir
        self.heap_mb = heap_mb
        if port:
            self.port = port
            self.controller_port = _pick_ports(1, exclude={port})[0]
        else:
            self.port, self.controller_port = _pick_ports(2, exclude=set())
        self.bootstrap: str = f"127.0.0.1:{self.port}"
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "kafka.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"KafkaBroker({self.bootstrap}, {state}, workdir={self.workdir})"

    # -- state ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the JVM process is alive (not necessarily ready)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of the JVM (also its process group id), or None when not started."""
        return self._proc.pid if self._proc is not None else None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Last lines of ``kafka.log``, for error messages and failing-test diagnostics."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 64 * 1024))
                return _tail(fh.read().decode("utf-8", "replace"), lines)
        except FileNotFoundError:
            return "(no kafka.log)"

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
        }
        body = "".join(f"{key}={value}\n" for key, value in props.items())
        return "# Written by bridge.testing.kafka_broker; rewritten on every start.\n" + body

    def _java(self, lib: Path, heap: list[str], main: str, *args: str) -> list[str]:
        return [
            _require_tool("java", "to run the Kafka broker"),
            *heap,
            *_JVM_FLAGS,
            f"-Djava.io.tmpdir={self.workdir / 'tmp'}",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            "-cp",
            f"{lib}/*",
            main,
            *args,
        ]

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
        result = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=_FORMAT_TIMEOUT_S,
            check=False,
        )
        with self.log_path.open("a") as log:
            log.write(result.stdout)
        if result.returncode != 0:
            raise BrokerError(
                f"kafka-storage format failed (exit {result.returncode}):\n{_tail(result.stdout)}"
            )

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout_s: float = 90) -> None:
        """Start the JVM and block until the broker answers a metadata request.

        The JVM runs in its own process group (so ``stop``/``kill`` reach everything it
        spawns) and, when started from the main thread, with a parent-death signal, so even
        a SIGKILLed test runner cannot leave it behind. Raises :class:`BrokerError` with the
        log tail if the process exits or is not ready within ``timeout_s``.
        """
        if self.running:
            raise BrokerError(f"{self!r} is already running")
        lib = ensure_kafka(self.cache_dir)
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "server.properties").write_text(self._server_properties())
        (self.workdir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES)
        with self.log_path.open("a") as log:
            log.write(f"\n===== start {time.strftime('%Y-%m-%dT%H:%M:%S')} {self.bootstrap}\n")
        self._format_storage(lib)

        cmd = self._java(
            lib,
            [f"-Xms{min(256, self.heap_mb)}m", f"-Xmx{self.heap_mb}m"],
            "kafka.Kafka",
            str(self.workdir / "server.properties"),
        )
        setpriv = shutil.which("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            # PR_SET_PDEATHSIG fires when the *thread* that forked dies, hence main thread only.
            cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
        log_offset = self.log_path.stat().st_size
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        _RUNNING.add(self)
        try:
            self._wait_ready(timeout_s, log_offset)
        except BaseException:
            self.kill()
            raise

    def _log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")

    def _wait_ready(self, timeout_s: float, log_offset: int) -> None:
        deadline = time.monotonic() + timeout_s
        admin: AdminClient | None = None
        while True:
            proc = self._proc
            assert proc is not None
            code = proc.poll()
            if code is not None:
                raise BrokerError(
                    f"Kafka exited with code {code} during startup ({self.log_path}):\n"
                    f"{_condensed_tail(self._log_since(log_offset))}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"Kafka not ready at {self.bootstrap} after {timeout_s:.0f}s "
                    f"({self.log_path}):\n{_condensed_tail(self._log_since(log_offset))}"
                )
            # The socket is bound (and connect() succeeds via the backlog) well before the
            # broker serves requests, so a metadata round trip is the real readiness test.
            if _READY_LINE in self._log_since(log_offset) or _port_accepts(self.port):
                if admin is None:
                    admin = self._admin(probe=True)
                try:
                    md = admin.list_topics(timeout=max(0.5, min(2.0, remaining)))
                except KafkaException:
                    pass
                else:
                    if md.brokers:
                        return
            time.sleep(0.2)

    def _signal_group(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)  # start_new_session: pgid == pid
        except ProcessLookupError:
            pass
        except PermissionError:
            proc.send_signal(sig)

    def stop(self, timeout_s: float = 30) -> None:
        """Shut down cleanly (SIGTERM, SIGKILL after ``timeout_s``); data and ports are kept."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                proc.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the whole process group, to simulate a broker crash; data is kept."""
        proc = self._proc
        if proc is None:
            return
        self._signal_group(signal.SIGKILL)
        proc.wait()
        self._reap()

    def _reap(self) -> None:
        # No group-wide kill after the JVM has been reaped: it spawns no children, and its
        # pgid could by then belong to an unrelated new session.
        _RUNNING.discard(self)

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

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
    parser = argparse.ArgumentParser(
        prog="python -m bridge.testing.kafka_broker",
        description=f"Run a single-node Apache Kafka {KAFKA_VERSION} from Maven Central jars.",
    )
    parser.add_argument("--workdir", type=Path, help="config, data and kafka.log go here")
    parser.add_argument("--port", type=int, default=0, help="client port (default: a free one)")
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"default {DEFAULT_CACHE}")
    parser.add_argument("--heap-mb", type=int, default=768)
    parser.add_argument("--timeout", type=float, default=120.0, help="startup timeout (s)")
    parser.add_argument(
        "--download-only", action="store_true", help="fetch the jars into the cache and exit"
    )
    args = parser.parse_args(argv)

    if args.download_only:
        try:
            lib = ensure_kafka(args.cache_dir)
        except BrokerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"kafka {KAFKA_VERSION} jars in {lib}")
        return 0
    if args.workdir is None:
        parser.error("--workdir is required unless --download-only is given")

    stop_requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    broker = KafkaBroker(
        args.workdir, port=args.port, cache_dir=args.cache_dir, heap_mb=args.heap_mb
    )
    try:
        broker.start(timeout_s=args.timeout)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"kafka ready at {broker.bootstrap}", flush=True)
    print(f"log: {broker.log_path}", file=sys.stderr, flush=True)
    try:
        while not stop_requested.wait(1.0):
            if not broker.running:
                print(f"error: Kafka exited:\n{broker.log_tail()}", file=sys.stderr)
                return 1
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
