"""A real single-node Apache RocketMQ 4.9 (NameServer + broker, two JVMs) for tests and demos.

The RocketMQ sink and the ONS source can only be checked against a real broker: ordered
queues, transactional half messages and their check-back, ACL signatures. These machines have
no Docker and no access to downloads.apache.org, but Maven Central is reachable, so RocketMQ is
assembled from its Maven artifacts (``rocketmq-pom.xml`` next to this file) and started with
``java -cp``, like :mod:`devtools.brokers.kafka`.

The version is 4.9.7, the newest 4.x whose NameServer and broker are on Maven Central (4.9.8
is there only in part, see the pom). The jars are cached in ``DEFAULT_CACHE``, so only the
first run pays for the download.

Each :class:`RocketMQBroker` owns one work directory (configuration, ``ROCKETMQ_HOME``, store,
logs) and keeps its ports across restarts, so clients see a restarted broker at the very same
address, which is what a real broker restart looks like to the bridge. The broker can be
stopped and started on its own while the NameServer stays up ("broker gone mid-run").

Readiness and topic routes are read from the NameServer with a few lines of its remoting
protocol (JSON headers over TCP; the 4.x NameServer has no ACL), because every ``mqadmin``
call is a JVM start. ``mqadmin`` is still what creates topics, and it signs its requests
when ACL is on, from ``$ROCKETMQ_HOME/conf/tools.yml``.

Command line::

    python -m devtools.brokers.rocketmq --download-only
    python -m devtools.brokers.rocketmq --workdir .work/rocketmq [--acl KEY:SECRET]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import struct
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from devtools.brokers.processes import (
    DEFAULT_CACHE,
    LOG_TAIL_LINES,
    BrokerError,
    JavaProcess,
    ManagedBroker,
    condensed_tail,
    ensure_maven_jars,
    java_command,
    launcher_parser,
    pick_ports,
    require_tool,
    run_captured,
    run_launcher,
)

__all__ = [
    "DEFAULT_CACHE",
    "ROCKETMQ_VERSION",
    "BrokerError",
    "RocketMQBroker",
    "ensure_rocketmq",
    "main",
]

ROCKETMQ_VERSION = "4.9.7"
"""Must match ``rocketmq.version`` in ``rocketmq-pom.xml`` (the cache folder is named after it)."""

CLUSTER = "DefaultCluster"
BROKER_NAME = "broker-a"

_POM_FILE = Path(__file__).with_name("rocketmq-pom.xml")
_LOGBACK_FILE = Path(__file__).with_name("rocketmq-logback.xml")
_NAMESRV_MAIN = "org.apache.rocketmq.namesrv.NamesrvStartup"
_BROKER_MAIN = "org.apache.rocketmq.broker.BrokerStartup"
_ADMIN_MAIN = "org.apache.rocketmq.tools.command.MQAdminStartup"
_NAMESRV_READY_LINE = "The Name Server boot success"
_ACL_KEY_MIN_LENGTH = 7  # the broker refuses to start with a key or secret of 6 or fewer

_JDK_OPTIONS = (
    # RocketMQ 4.9 predates JDK 17's strong encapsulation: the store unmaps files through
    # java.nio internals and Netty wants sun.nio.ch.
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-exports=java.base/sun.nio.ch=ALL-UNNAMED",
)
_BROKER_OPTIONS = (
    # The store refuses writes ("disk full") above 90 % use of the disk and deletes committed
    # commit log files early above 85 %; developer disks are often that full, and a test
    # broker losing or refusing messages for that reason is only confusing. These two are
    # system properties, not broker.conf keys.
    "-Drocketmq.broker.diskSpaceWarningLevelRatio=0.99",
    "-Drocketmq.broker.diskSpaceCleanForciblyRatio=0.98",
)

_ADMIN_SOURCE = """\
// Written by devtools.brokers.rocketmq and run in java's source-file mode.
// MQAdminStartup.main returns after the command, but Netty's graceful shutdown keeps the JVM
// alive for 2 more seconds; exiting at once makes every mqadmin call about 2 s faster.
public final class MqAdmin {
    public static void main(String[] args) {
        org.apache.rocketmq.tools.command.MQAdminStartup.main0(args, null);
        System.out.flush();
        System.err.flush();
        System.exit(0);
    }
}
"""

# Remoting protocol (org.apache.rocketmq.common.protocol.RequestCode / ResponseCode).
_GET_ROUTEINFO_BY_TOPIC = 105
_GET_BROKER_CLUSTER_INFO = 106
_SUCCESS = 0
_TOPIC_NOT_EXIST = 17
_NUMERIC_KEY = re.compile(r"([{,])(-?\d+):")
"""fastjson writes integer map keys unquoted (``{0:"127.0.0.1:10911"}``), which is not JSON."""


def ensure_rocketmq(cache_dir: Path | None = None) -> Path:
    """Make sure RocketMQ's jars are in ``<cache_dir>/rocketmq-<version>/lib``; return that folder.

    Downloaded once from Maven Central (see :func:`devtools.brokers.processes.ensure_maven_jars`:
    locked, marked complete only after a full download, invalidated by editing the pom).
    Raises :class:`BrokerError` if ``java`` or ``mvn`` is missing or the download fails.
    """
    return ensure_maven_jars(
        pom=_POM_FILE,
        name=f"rocketmq-{ROCKETMQ_VERSION}",
        required=[
            f"rocketmq-{part}-{ROCKETMQ_VERSION}.jar" for part in ("namesrv", "broker", "tools")
        ],
        product=f"RocketMQ {ROCKETMQ_VERSION}",
        cache_dir=cache_dir,
    )


# --------------------------------------------------------------------------------------------
# NameServer queries
# --------------------------------------------------------------------------------------------


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise ConnectionError("connection closed mid-frame")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _remoting_call(
    port: int, code: int, fields: Mapping[str, str], timeout_s: float
) -> tuple[int, str, bytes]:
    """One request/response with the JSON-header remoting protocol; returns code, remark, body.

    Frame: total length (4 bytes), serialize type (1 byte, 0 = JSON) + header length (3
    bytes), header, body. Raises OSError or ValueError when the peer does not answer sanely.
    """
    header = json.dumps(
        {
            "code": code,
            "language": "PYTHON",
            "version": 0,
            "opaque": 1,
            "flag": 0,
            "extFields": dict(fields),
        }
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(struct.pack(">II", 4 + len(header), len(header)) + header)
        (length,) = struct.unpack(">I", _recv_exactly(sock, 4))
        frame = _recv_exactly(sock, length)
    (mark,) = struct.unpack(">I", frame[:4])
    header_len = mark & 0xFFFFFF
    response = json.loads(frame[4 : 4 + header_len])
    return int(response["code"]), str(response.get("remark") or ""), frame[4 + header_len :]


def _fastjson(body: bytes) -> Any:
    return json.loads(_NUMERIC_KEY.sub(r'\1"\2":', body.decode("utf-8")))


def _write(path: Path, text: str) -> None:
    """Write ``text`` unless it is there already, atomically.

    The running broker re-reads ``plain_acl.yml`` when it changes; configuration is rewritten
    before every JVM start and mqadmin call, and a half-written file would briefly leave the
    broker without accounts.
    """
    with contextlib.suppress(FileNotFoundError):
        if path.read_text() == text:
            return
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_text(text)
    scratch.replace(path)


# --------------------------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------------------------


class RocketMQBroker(ManagedBroker):
    """One NameServer and one master broker (``broker-a`` in ``DefaultCluster``) in ``workdir``.

    Layout of ``workdir``: ``namesrv.conf``, ``broker.conf``, ``rocketmq-home/`` (the
    ``ROCKETMQ_HOME``: logback configurations, ``plain_acl.yml`` and ``tools.yml`` when ACL is
    on, the mqadmin launcher), ``store/`` (commit log, queues, topic and offset tables; kept
    across restarts and ``kill()``), ``namesrv/`` (the NameServer's KV store, which holds the
    order configuration of ordered topics), ``home/`` (the JVMs' ``user.home``, so client logs
    stay out of ``$HOME``), ``tmp/``, and ``namesrv.log`` / ``broker.log`` (stdout and stderr of
    every run, appended).

    Ports: the NameServer listens on ``namesrv_port``; the broker on ``broker_port`` and also on
    ``broker_port - 2`` (the "VIP channel") and ``broker_port + 1`` (HA), all on every interface
    (RocketMQ 4.x has no bind address setting).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        acl: dict[str, str] | None = None,
        namesrv_port: int = 0,
        broker_port: int = 0,
        cache_dir: Path | None = None,
    ) -> None:
        """Pick the ports now (0: free ones) and keep them for the broker's lifetime.

        ``acl`` maps access keys to secret keys (7 characters or more each) and turns ACL on:
        every account may do everything (admin, publish and subscribe), any other key or a wrong
        secret is refused by the broker. ``mqadmin`` signs with the first account.
        """
        if acl is not None:
            if not acl:
                raise ValueError("acl needs at least one account (or None for no ACL)")
            for key, secret in acl.items():
                if len(key) < _ACL_KEY_MIN_LENGTH or len(secret) < _ACL_KEY_MIN_LENGTH:
                    raise ValueError(
                        f"ACL access key {key!r} and its secret must have at least "
                        f"{_ACL_KEY_MIN_LENGTH} characters (the broker refuses shorter ones)"
                    )
        self.workdir = Path(workdir).resolve()
        self.acl = dict(acl) if acl is not None else None
        self.cache_dir = cache_dir
        broker_block = (-2, 0, 1)  # VIP channel, main port, HA port
        if namesrv_port and not broker_port:
            broker_port = pick_ports(1, exclude={namesrv_port}, neighbours=broker_block)[0]
        elif broker_port and not namesrv_port:
            namesrv_port = pick_ports(1, exclude={broker_port + o for o in broker_block})[0]
        elif not namesrv_port and not broker_port:
            namesrv_port = pick_ports(1, exclude=set())[0]
            broker_port = pick_ports(1, exclude={namesrv_port}, neighbours=broker_block)[0]
        self.namesrv_port = namesrv_port
        self.broker_port = broker_port
        self.home = self.workdir / "rocketmq-home"
        self.store_dir = self.workdir / "store"
        self.namesrv_log = self.workdir / "namesrv.log"
        self.broker_log = self.workdir / "broker.log"
        self._namesrv = JavaProcess("RocketMQ NameServer", self.namesrv_log)
        self._broker = JavaProcess("RocketMQ broker", self.broker_log)

    def __repr__(self) -> str:
        state = (
            "running" if self.running else "broker stopped" if self.namesrv_running else "stopped"
        )
        return (
            f"RocketMQBroker(namesrv {self.namesrv_addr}, broker {self.broker_addr}, {state}, "
            f"workdir={self.workdir})"
        )

    # -- state ---------------------------------------------------------------------------

    @property
    def namesrv_addr(self) -> str:
        """What clients are given: ``127.0.0.1:<NameServer port>``."""
        return f"127.0.0.1:{self.namesrv_port}"

    @property
    def broker_addr(self) -> str:
        """The address the broker registers with the NameServer."""
        return f"127.0.0.1:{self.broker_port}"

    @property
    def running(self) -> bool:
        """True while both JVMs are alive (not necessarily ready)."""
        return self._namesrv.running and self._broker.running

    @property
    def namesrv_running(self) -> bool:
        return self._namesrv.running

    @property
    def broker_running(self) -> bool:
        return self._broker.running

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Last lines of both logs, for error messages and failing-test diagnostics."""
        return "\n".join(
            f"--- {jvm.log_path.name}\n{jvm.log_tail(lines)}"
            for jvm in (self._namesrv, self._broker)
        )

    # -- configuration -------------------------------------------------------------------

    def _namesrv_conf(self) -> dict[str, str]:
        return {
            "listenPort": str(self.namesrv_port),
            "kvConfigPath": str(self.workdir / "namesrv" / "kvConfig.json"),
            # Routes of ordered topics then carry their order configuration ("broker-a:4"),
            # which is what `mqadmin updateTopic -o true` writes to the NameServer.
            "orderMessageEnable": "true",
        }

    def _broker_conf(self) -> dict[str, str]:
        return {
            "brokerClusterName": CLUSTER,
            "brokerName": BROKER_NAME,
            "brokerId": "0",
            "brokerRole": "ASYNC_MASTER",
            "flushDiskType": "ASYNC_FLUSH",
            "namesrvAddr": self.namesrv_addr,
            "brokerIP1": "127.0.0.1",
            "listenPort": str(self.broker_port),
            "storePathRootDir": str(self.store_dir),
            "storePathCommitLog": str(self.store_dir / "commitlog"),
            # Small files: the defaults (1 GiB commit log, 6 MB queues, 400 MB index) are
            # mapped in full. Unknown keys are ignored silently, so mind the spelling.
            "mappedFileSizeCommitLog": str(64 * 1024 * 1024),
            "mappedFileSizeConsumeQueue": "600000",
            "maxHashSlotNum": "50000",
            "maxIndexNum": "200000",
            # Above this share of the disk the broker deletes old files early; the getter
            # caps it at 95. (Refusing writes is a separate threshold: _BROKER_OPTIONS.)
            "diskMaxUsedSpaceRatio": "95",
            # A send waiting longer than this in the broker's queue is failed with "broker
            # busy" (default 200 ms); a GC pause on a busy 2-core test machine is that long.
            "waitTimeMillsInSendQueue": "1000",
            "autoCreateTopicEnable": "true",
            # Check-back of unresolved transactional messages: first after 3 s, then every 5 s
            # (defaults: 6 s, 60 s), so crash tests finish in seconds. Up to 30 checks (default
            # 15): a restarted librocketmq producer registers with the broker only at its
            # next heartbeat (every 30 s), and checks before that count as attempts; after
            # the last one the broker discards the half message.
            "transactionCheckInterval": "5000",
            "transactionTimeOut": "3000",
            "transactionCheckMax": "30",
            "aclEnable": "true" if self.acl else "false",
        }

    def _plain_acl_yml(self) -> str:
        assert self.acl
        # JSON strings are YAML double-quoted scalars, so any key or secret is quoted safely.
        # No whiteRemoteAddress (an address match would skip the signature check) and no
        # global white list: every request must be signed.
        accounts = "".join(
            f"  - accessKey: {json.dumps(key)}\n"
            f"    secretKey: {json.dumps(secret)}\n"
            "    admin: true\n"
            "    defaultTopicPerm: PUB|SUB\n"
            "    defaultGroupPerm: PUB|SUB\n"
            for key, secret in self.acl.items()
        )
        return (
            "# Written by devtools.brokers.rocketmq; rewritten before every start.\n"
            f"globalWhiteRemoteAddresses: []\naccounts:\n{accounts}"
        )

    def _prepare(self) -> None:
        """(Re)write configuration and ROCKETMQ_HOME; cheap, so done before every JVM start."""
        conf = self.home / "conf"
        for folder in (conf, self.home / "bin", self.store_dir, self.workdir / "home"):
            folder.mkdir(parents=True, exist_ok=True)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        try:
            logback = _LOGBACK_FILE.read_text()
        except FileNotFoundError:
            raise BrokerError(
                f"{_LOGBACK_FILE} is missing: it belongs next to this launcher in devtools/brokers/"
            ) from None
        for name in ("namesrv", "broker", "tools"):
            _write(conf / f"logback_{name}.xml", logback)
        if self.acl:
            _write(conf / "plain_acl.yml", self._plain_acl_yml())
            key, secret = next(iter(self.acl.items()))
            _write(
                conf / "tools.yml",
                f"accessKey: {json.dumps(key)}\nsecretKey: {json.dumps(secret)}\n",
            )
        else:
            (conf / "plain_acl.yml").unlink(missing_ok=True)
            (conf / "tools.yml").unlink(missing_ok=True)
        _write(self.home / "bin" / "MqAdmin.java", _ADMIN_SOURCE)
        header = "# Written by devtools.brokers.rocketmq; rewritten before every start.\n"
        for name, props in (("namesrv", self._namesrv_conf()), ("broker", self._broker_conf())):
            body = "".join(f"{key}={value}\n" for key, value in props.items())
            _write(self.workdir / f"{name}.conf", header + body)

    def _env(self) -> dict[str, str]:
        return {**os.environ, "ROCKETMQ_HOME": str(self.home)}

    def _java(self, lib: Path, main: str, args: list[str], options: list[str]) -> list[str]:
        return java_command(
            lib,
            main,
            args,
            [
                *_JDK_OPTIONS,
                *options,
                f"-Duser.home={self.workdir / 'home'}",
                f"-Djava.io.tmpdir={self.workdir / 'tmp'}",
            ],
        )

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout_s: float = 120) -> None:
        """Start the NameServer (unless it is running) and the broker; block until both serve.

        Ready means: the NameServer answers a cluster query, and the broker printed its boot
        line in this run and is registered with the NameServer under its address. Raises
        :class:`BrokerError` with the log tail if a JVM exits or is not ready within
        ``timeout_s``; a failed start leaves neither JVM running.
        """
        if self._broker.running:
            raise BrokerError(f"{self!r} is already running")
        deadline = time.monotonic() + timeout_s
        try:
            if not self._namesrv.running:
                self._start_namesrv(timeout_s)
            self.start_broker(max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.kill()
            raise

    def _start_namesrv(self, timeout_s: float) -> None:
        def ready(remaining: float) -> bool:
            # The boot line comes after the port is bound; the query proves it also serves.
            return (
                _NAMESRV_READY_LINE in self._namesrv.output()
                and self._brokers(min(2.0, remaining)) is not None
            )

        self._launch(
            self._namesrv,
            _NAMESRV_MAIN,
            "namesrv.conf",
            options=["-Xms256m", "-Xmx512m"],
            ready=ready,
            timeout_s=timeout_s,
        )

    def _launch(
        self,
        jvm: JavaProcess,
        main: str,
        conf: str,
        *,
        options: list[str],
        ready: Callable[[float], bool],
        timeout_s: float,
    ) -> None:
        """Start one of the two JVMs with its configuration file; kill it if it is not ready."""
        lib = ensure_rocketmq(self.cache_dir)
        self._prepare()
        addr = self.namesrv_addr if jvm is self._namesrv else self.broker_addr
        jvm.mark(f"start {time.strftime('%Y-%m-%dT%H:%M:%S')} {addr}")
        cmd = self._java(lib, main, ["-c", str(self.workdir / conf)], options)
        jvm.start(cmd, cwd=self.workdir, env=self._env())
        try:
            jvm.wait_ready(ready, timeout_s, f"at {addr}")
        except BaseException:
            jvm.kill()
            raise

    def start_broker(self, timeout_s: float = 120) -> None:
        """Start only the broker, against the running NameServer (after :meth:`stop_broker`).

        Same ports and store as before, so clients reconnect to the same address and find the
        topics and messages they left. Raises :class:`BrokerError` if the NameServer is not
        running (use :meth:`start`), or as :meth:`start` does.
        """
        if self._broker.running:
            raise BrokerError(f"{self!r}: the broker is already running")
        if not self._namesrv.running:
            raise BrokerError(f"{self!r}: the NameServer is not running; use start()")
        boot_line = f"The broker[{BROKER_NAME}, {self.broker_addr}] boot success"

        def ready(remaining: float) -> bool:
            # The broker registers with the NameServer just before printing its boot line,
            # but a failed registration is only logged (and retried 10 s later), and after a
            # restart the NameServer may briefly still list the previous run: both checks.
            if boot_line not in self._broker.output():
                return False
            brokers = self._brokers(min(2.0, remaining))
            return brokers is not None and brokers.get(BROKER_NAME) == self.broker_addr

        self._launch(
            self._broker,
            _BROKER_MAIN,
            "broker.conf",
            options=["-Xms256m", "-Xmx1g", *_BROKER_OPTIONS],
            ready=ready,
            timeout_s=timeout_s,
        )

    def stop_broker(self, timeout_s: float = 30) -> None:
        """Shut the broker down cleanly (SIGTERM, SIGKILL after ``timeout_s``); NameServer stays.

        A clean shutdown unregisters from the NameServer and takes 4-7 s (the store sleeps
        through part of it). Store and ports are kept for :meth:`start_broker`.
        """
        self._broker.stop(timeout_s)

    def stop(self, timeout_s: float = 30) -> None:
        """Stop the broker, then the NameServer (SIGTERM, SIGKILL after ``timeout_s`` each)."""
        self._broker.stop(timeout_s)
        self._namesrv.stop(timeout_s)

    def kill(self) -> None:
        """SIGKILL both JVMs, to simulate a crash; the store is kept and recovered on start."""
        self._broker.kill()
        self._namesrv.kill()

    # -- NameServer queries ------------------------------------------------------------------

    def _brokers(self, timeout_s: float) -> dict[str, str] | None:
        """Registered masters (broker name -> address); None if the NameServer does not answer."""
        try:
            code, _, body = _remoting_call(
                self.namesrv_port, _GET_BROKER_CLUSTER_INFO, {}, timeout_s
            )
            if code != _SUCCESS:
                return None
            table: dict[str, Any] = _fastjson(body).get("brokerAddrTable") or {}
            return {
                name: str(data["brokerAddrs"]["0"])
                for name, data in table.items()
                if "0" in (data.get("brokerAddrs") or {})
            }
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            return None

    def topic_route(self, topic: str, timeout_s: float = 5) -> dict[str, Any] | None:
        """The NameServer's route for ``topic`` (what clients and ``mqadmin topicRoute`` get).

        Keys: ``brokerDatas``, ``queueDatas`` (``readQueueNums``, ``writeQueueNums``, ``perm``
        per broker) and, for ordered topics, ``orderTopicConf``. None if there is no route.
        """
        try:
            code, remark, body = _remoting_call(
                self.namesrv_port,
                _GET_ROUTEINFO_BY_TOPIC,
                {"topic": topic, "acceptStandardJsonOnly": "true"},
                timeout_s,
            )
        except (OSError, ValueError) as exc:
            raise BrokerError(f"NameServer {self.namesrv_addr} did not answer: {exc}") from exc
        if code == _TOPIC_NOT_EXIST:
            return None
        if code != _SUCCESS:
            raise BrokerError(f"route query for {topic!r} failed: code {code}, {remark}")
        route: dict[str, Any] = _fastjson(body)
        return route

    # -- admin -----------------------------------------------------------------------------

    def mqadmin(self, *args: str, timeout_s: float = 60) -> str:
        """Run ``mqadmin <args>`` against this NameServer (``-n`` added) and return its output.

        mqadmin exits 0 even when the command failed; a failure shows as a stack trace of a
        ``SubCommandException``, which is turned into :class:`BrokerError` (with the output).
        Commands that only print an error (e.g. ``updateTopic`` with an unknown cluster) are
        not detected here: check the output.
        """
        if not args:
            raise ValueError("mqadmin needs a sub command")
        lib = ensure_rocketmq(self.cache_dir)
        self._prepare()
        argv = [args[0], *(() if "-n" in args else ("-n", self.namesrv_addr)), *args[1:]]
        cmd = self._java(lib, self._admin_main(), argv, ["-Xmx256m"])
        what = f"mqadmin {' '.join(args)}"
        result = run_captured(
            cmd, timeout_s=timeout_s, what=what, env=self._env(), cwd=self.workdir
        )
        out = result.stdout
        if (
            result.returncode != 0
            or "SubCommandException" in out
            or re.search(r"The sub command \S+ not exist", out)
        ):
            raise BrokerError(f"{what} failed (exit {result.returncode}):\n{condensed_tail(out)}")
        return out

    def _admin_main(self) -> str:
        # Source-file mode needs the jdk.compiler module, i.e. a JDK rather than a JRE: a
        # javac next to the java that runs is a reliable sign of it.
        java = Path(os.path.realpath(require_tool("java", "to run mqadmin")))
        if (java.parent / "javac").exists():
            return str(self.home / "bin" / "MqAdmin.java")
        return _ADMIN_MAIN

    def create_topic(
        self, name: str, *, queues: int = 4, order: bool = False, timeout_s: float = 60
    ) -> None:
        """Create or update ``name`` with ``queues`` read and write queues on the broker.

        ``order=True`` also stores the topic's order configuration in the NameServer, as
        ``mqadmin updateTopic -o true`` does. Returns once the NameServer's route shows the
        queues (and the order configuration), so a producer started next finds them. Raises
        :class:`BrokerError` with mqadmin's output if it refuses (invalid name, a name starting
        with ``rmq_sys_``, no broker registered).
        """
        deadline = time.monotonic() + timeout_s
        args = ["updateTopic", "-c", CLUSTER, "-t", name, "-r", str(queues), "-w", str(queues)]
        if order:
            args += ["-o", "true"]
        out = self.mqadmin(*args, timeout_s=timeout_s)
        if f"create topic to {self.broker_addr} success" not in out:
            raise BrokerError(f"creating topic {name!r} failed:\n{condensed_tail(out)}")
        while True:
            route = self.topic_route(name)
            if route is not None and self._route_complete(route, queues, order):
                return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"topic {name!r} created, but the NameServer's route after {timeout_s:.0f}s "
                    f"is {route}"
                )
            time.sleep(0.1)

    @staticmethod
    def _route_complete(route: Mapping[str, Any], queues: int, order: bool) -> bool:
        queue_ok = any(
            q.get("brokerName") == BROKER_NAME
            and q.get("readQueueNums") == queues
            and q.get("writeQueueNums") == queues
            for q in route.get("queueDatas") or []
        )
        return queue_ok and (not order or route.get("orderTopicConf") == f"{BROKER_NAME}:{queues}")


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parse_account(text: str) -> tuple[str, str]:
    key, sep, secret = text.partition(":")
    if not sep or not key or not secret:
        raise argparse.ArgumentTypeError(f"expected KEY:SECRET, got {text!r}")
    return key, secret


def main(argv: list[str] | None = None) -> int:
    """Run NameServer and broker in the foreground (demo, manual testing) or just download."""
    parser = launcher_parser(
        "devtools.brokers.rocketmq",
        f"Run a single-node Apache RocketMQ {ROCKETMQ_VERSION} from Maven Central jars.",
    )
    parser.add_argument("--namesrv-port", type=int, default=0, help="default: a free one")
    parser.add_argument(
        "--broker-port", type=int, default=0, help="default: a free one (port-2 and port+1 too)"
    )
    parser.add_argument(
        "--acl",
        type=_parse_account,
        action="append",
        metavar="KEY:SECRET",
        help="turn ACL on with this admin account (repeatable; 7+ characters each)",
    )
    return run_launcher(
        parser,
        argv,
        product=f"rocketmq {ROCKETMQ_VERSION}",
        ensure=ensure_rocketmq,
        build=lambda args: RocketMQBroker(
            args.workdir,
            acl=dict(args.acl) if args.acl else None,
            namesrv_port=args.namesrv_port,
            broker_port=args.broker_port,
            cache_dir=args.cache_dir,
        ),
        describe=lambda broker: (
            f"rocketmq ready: namesrv {broker.namesrv_addr}, broker {broker.broker_addr}",
            f"logs: {broker.namesrv_log} {broker.broker_log}",
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
