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
    python -m devtools.brokers.kafka --workdir .work/kafka --sasl-ssl-user bridge=PASSWORD

Encrypted and authenticated (``sasl_ssl=SaslSsl(users=...)``): a second client listener,
SASL_SSL, beside the PLAINTEXT one (which the readiness check, admin calls and test
readers keep using). Its certificate comes from a CA made on the first start in
``<workdir>/tls`` (``ca.pem`` is what clients trust: ``ssl.ca.location``); the users may
log in with PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (the SCRAM credentials are written by
``kafka-storage format --add-scram``, so only into a fresh ``data/``).
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # `confluent_kafka.admin` does not re-export it

from devtools.brokers.certs import make_ca
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
    "SaslSsl",
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


#: The mechanisms the SASL_SSL listener accepts (each user may use any of them).
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: What a user name or password may hold: they go into a JAAS string and into
#: ``--add-scram 'SCRAM-SHA-256=[name=...,password=...]'`` unquoted.
_SAFE_CREDENTIAL = re.compile(r"[A-Za-z0-9._~@+-]{1,64}")


@dataclass(frozen=True)
class SaslSsl:
    """An extra SASL_SSL client listener: its users (name -> password)."""

    users: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.users:
            raise ValueError("SaslSsl needs at least one user")
        for name, password in self.users.items():
            if not (_SAFE_CREDENTIAL.fullmatch(name) and _SAFE_CREDENTIAL.fullmatch(password)):
                raise ValueError(
                    f"SaslSsl user {name!r}: names and passwords are 1-64 characters "
                    "of A-Z a-z 0-9 . _ ~ @ + -"
                )


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
        sasl_ssl: SaslSsl | None = None,
    ) -> None:
        """Pick the ports now (``port=0``: free ones) and keep them for the broker's lifetime.

        The controller listener always gets a free port of its own, so that only the client
        port has to be chosen by callers who want a fixed address. ``properties`` are
        ``server.properties`` settings added to (or replacing) the defaults below, e.g.
        ``transaction.abort.timed.out.transaction.cleanup.interval.ms`` for the chaos suite.
        ``sasl_ssl`` adds the SASL_SSL listener (see the module doc) on a port of its own,
        ``sasl_ssl_bootstrap``; clients trust ``ca_file``.
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
        self.sasl_ssl = sasl_ssl
        self.sasl_ssl_port = 0
        if sasl_ssl is not None:
            self.sasl_ssl_port = pick_ports(1, exclude={self.port, self.controller_port})[0]
        #: host:port of the SASL_SSL listener ("" without one).
        self.sasl_ssl_bootstrap = f"127.0.0.1:{self.sasl_ssl_port}" if sasl_ssl else ""
        self.tls_dir = self.workdir / "tls"
        #: The CA that signed the SASL_SSL listener's certificate (ssl.ca.location).
        self.ca_file = self.tls_dir / "ca.pem"
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
        advertised = f"PLAINTEXT://127.0.0.1:{self.port}"
        protocols = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
        sasl_ssl: dict[str, str] = {}
        if self.sasl_ssl is not None:
            listeners += f",SASL_SSL://{self.sasl_ssl_bootstrap}"
            advertised += f",SASL_SSL://{self.sasl_ssl_bootstrap}"
            protocols += ",SASL_SSL:SASL_SSL"
            sasl_ssl = self._sasl_ssl_properties(self.sasl_ssl)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": listeners,
            "advertised.listeners": advertised,
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": protocols,
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
            **sasl_ssl,
            **self.properties,
        }
        body = "".join(f"{key}={value}\n" for key, value in props.items())
        return "# Written by devtools.brokers.kafka; rewritten on every start.\n" + body

    def _sasl_ssl_properties(self, sasl_ssl: SaslSsl) -> dict[str, str]:
        prefix = "listener.name.sasl_ssl."
        plain_users = " ".join(f'user_{u}="{p}"' for u, p in sasl_ssl.users.items())
        props = {
            f"{prefix}sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
            f"{prefix}plain.sasl.jaas.config": (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};"
            ),
            # The key and chain from one PEM file; the key is not encrypted, so no password.
            f"{prefix}ssl.keystore.type": "PEM",
            f"{prefix}ssl.keystore.location": str(self.tls_dir / "server-keystore.pem"),
        }
        for mechanism in SASL_MECHANISMS[1:]:
            props[f"{prefix}{mechanism.lower()}.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
        return props

    def _ensure_tls(self) -> None:
        """The CA and the listener's certificate, made once per workdir (kept across
        restarts, so clients' trust stays valid)."""
        if (self.tls_dir / "server-keystore.pem").exists() and self.ca_file.exists():
            return
        make_ca(self.tls_dir, "ca", days=30).server_cert("server", days=30)

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
            *self._scram_arguments(),
        )
        result = run_captured(cmd, timeout_s=_FORMAT_TIMEOUT_S, what="kafka-storage format")
        with self.log_path.open("a") as log:
            log.write(result.stdout)
        if result.returncode != 0:
            raise BrokerError(
                f"kafka-storage format failed (exit {result.returncode}):\n{tail(result.stdout)}"
            )

    def _scram_arguments(self) -> list[str]:
        if self.sasl_ssl is None:
            return []
        return [
            arg
            for mechanism in SASL_MECHANISMS[1:]
            for user, password in self.sasl_ssl.users.items()
            for arg in ("--add-scram", f"{mechanism}=[name={user},password={password}]")
        ]

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
        if self.sasl_ssl is not None:
            self._ensure_tls()
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
    parser.add_argument(
        "--sasl-ssl-user",
        action="append",
        default=[],
        metavar="NAME=PASSWORD",
        help="add a SASL_SSL listener (CA in <workdir>/tls/ca.pem) with this user; repeatable",
    )

    def build(args: argparse.Namespace) -> KafkaBroker:
        users = dict(text.partition("=")[::2] for text in args.sasl_ssl_user)
        return KafkaBroker(
            args.workdir,
            port=args.port,
            cache_dir=args.cache_dir,
            heap_mb=args.heap_mb,
            sasl_ssl=SaslSsl(users) if users else None,
        )

    def describe(broker: KafkaBroker) -> tuple[str, str]:
        ready = f"kafka ready at {broker.bootstrap}"
        if broker.sasl_ssl is not None:
            ready += f" (SASL_SSL at {broker.sasl_ssl_bootstrap}, CA {broker.ca_file})"
        return ready, f"log: {broker.log_path}"

    return run_launcher(
        parser,
        argv,
        product=f"kafka {KAFKA_VERSION}",
        ensure=ensure_kafka,
        build=build,
        describe=describe,
    )


if __name__ == "__main__":
    sys.exit(main())
