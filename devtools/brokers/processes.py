"""Plumbing shared by the local broker launchers (``kafka``, ``rocketmq``).

Both brokers are JVMs assembled from Maven Central jars (the only download channel these
machines have) and run as children of the test process. What they have in common lives here:

* the jar cache: ``mvn dependency:copy-dependencies`` into ``DEFAULT_CACHE``, once, under a lock,
  with a marker that is only written after a complete download;
* port selection that survives broker restarts;
* :class:`JavaProcess`: one long-lived JVM in its own process group, its output appended to a
  log file, stopped with SIGTERM then SIGKILL, and killed at interpreter exit so a crashed test
  run leaves no JVM behind;
* log tails that keep Java's "Caused by:" lines and drop its stack frames.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self, TypeVar

__all__ = [
    "DEFAULT_CACHE",
    "JVM_FLAGS",
    "LOG_TAIL_LINES",
    "BrokerError",
    "JavaProcess",
    "ManagedBroker",
    "condensed_tail",
    "ensure_maven_jars",
    "java_command",
    "launcher_parser",
    "pick_ports",
    "port_accepts",
    "progress",
    "require_tool",
    "run_captured",
    "run_launcher",
    "tail",
]

_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
_MVN_TIMEOUT_S = 1800.0
LOG_TAIL_LINES = 40


def _default_cache() -> Path:
    """``<repo>/.cache`` (git-ignored): devtools is never installed, it always runs from a
    checkout (devtools/brokers/processes.py -> the repository root is two folders up)."""
    return Path(__file__).resolve().parents[2] / ".cache"


DEFAULT_CACHE = Path(os.environ.get("TMC_BRIDGE_CACHE") or _default_cache())
"""Where downloaded broker jars live; override with ``TMC_BRIDGE_CACHE`` (e.g. a CI cache)."""


class BrokerError(RuntimeError):
    """A test broker could not be provisioned, started or used; the message carries the log tail."""


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def condensed_tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """Tail without Java stack frames, so the "Caused by: ..." root causes fit in the tail."""
    kept = [
        line
        for line in text.splitlines()
        if not line.lstrip().startswith("at ") and not line.lstrip().startswith("... ")
    ]
    return tail("\n".join(kept), lines)


def require_tool(name: str, why: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BrokerError(f"`{name}` not found on PATH; it is needed {why}")
    return path


def run_captured(
    cmd: Sequence[str],
    *,
    timeout_s: float,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short-lived tool with stdout and stderr merged; a timeout becomes a BrokerError."""
    try:
        return subprocess.run(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout_s,
            check=False,
            env=None if env is None else dict(env),
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else ""
        raise BrokerError(f"{what} did not finish within {timeout_s:.0f}s:\n{tail(out)}") from exc


# --------------------------------------------------------------------------------------------
# Jar cache
# --------------------------------------------------------------------------------------------


def _pom_digest(pom: Path) -> str:
    """Identify the pom content, so editing the pom invalidates an existing cache."""
    try:
        return hashlib.sha256(pom.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise BrokerError(
            f"{pom} is missing: it belongs next to the launcher in devtools/brokers/"
        ) from None


def ensure_maven_jars(
    *,
    pom: Path,
    name: str,
    required: Sequence[str],
    product: str,
    cache_dir: Path | None = None,
) -> Path:
    """Make sure the runtime jars of ``pom`` are in ``<cache_dir>/<name>/lib``; return that folder.

    The jars come from Maven Central via ``mvn dependency:copy-dependencies`` (plugin pinned to
    3.8.1) because that is the only download channel these machines have. A marker file,
    written only after a complete download, makes the call idempotent and cheap; an ``fcntl``
    lock serialises concurrent callers (parallel test workers), and the download goes to a
    scratch folder that is renamed into place so a killed download never looks complete.
    ``required`` are jar file names that must be among the downloaded ones.

    Raises :class:`BrokerError` if ``java`` is missing, or ``mvn`` is missing when a download
    is needed, or ``mvn`` fails (the tail of its output is included).
    """
    require_tool("java", f"to run {product} (install OpenJDK 17+)")
    home = (cache_dir or DEFAULT_CACHE).resolve() / name
    lib = home / "lib"
    marker = home / ".complete"
    digest = _pom_digest(pom)

    def complete() -> bool:
        try:
            return marker.read_text().strip() == digest and lib.is_dir()
        except FileNotFoundError:
            return False

    if complete():
        return lib
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if complete():  # another process finished while we waited for the lock
            return lib
        mvn = require_tool("mvn", f"once to download the jars of {product} from Maven Central")
        marker.unlink(missing_ok=True)
        scratch = home / "lib.partial"
        shutil.rmtree(scratch, ignore_errors=True)
        local_pom = home / "pom.xml"
        shutil.copyfile(pom, local_pom)
        cmd = [
            mvn,
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(local_pom),
            f"{_DEPENDENCY_PLUGIN}:copy-dependencies",
            f"-DoutputDirectory={scratch}",
            "-DincludeScope=runtime",
        ]
        result = _download(cmd, mvn=mvn, pom=local_pom, product=product, home=home)
        missing = [jar for jar in required if not (scratch / jar).is_file()]
        if result.returncode != 0 or missing:
            raise BrokerError(
                f"downloading {product} with mvn failed (exit {result.returncode}"
                f"{', missing ' + ', '.join(missing) if missing else ''}): "
                f"{' '.join(cmd)}\n{tail(result.stdout)}"
            )
        shutil.rmtree(lib, ignore_errors=True)
        scratch.rename(lib)
        tmp_marker = home / ".complete.tmp"
        tmp_marker.write_text(digest + "\n")
        tmp_marker.replace(marker)
    return lib


# --------------------------------------------------------------------------------------------
# Download progress
# --------------------------------------------------------------------------------------------

#: ``group:artifact:jar[:classifier]:version:scope`` in ``dependency:tree``'s output.
_TREE_LINE = re.compile(
    r"(?P<g>[\w.\-]+):(?P<a>[\w.\-]+):jar:(?:(?P<c>[\w.\-]+):)?(?P<v>[\w.\-]+):"
    r"(?:compile|runtime)\b"
)
#: ``Downloaded from central: https://.../x-1.jar (1.2 MB at 3.4 MB/s)``, one per file.
_DOWNLOADED = re.compile(r"Downloaded from [^:]+: (?P<url>\S+) \(")
#: A progress line at most this often (and at every tenth of the total).
_PROGRESS_EVERY_S = 3.0


def progress(text: str) -> None:
    """A progress line of a long step, on stderr (stdout stays for the step's result)."""
    print(text, file=sys.stderr, flush=True)


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _jar_paths(mvn: str, pom: Path, home: Path) -> list[str]:
    """Repository paths (``org/x/y/1.0/y-1.0.jar``) of the runtime jars of ``pom``.

    ``dependency:tree`` only collects (it fetches the poms, not the jars). Empty when it
    fails: the download itself then runs without a total and reports the failure.
    """
    out = home / "tree.txt"
    cmd = [mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(pom),
           f"{_DEPENDENCY_PLUGIN}:tree", f"-DoutputFile={out}"]  # fmt: skip
    try:
        result = run_captured(cmd, timeout_s=_MVN_TIMEOUT_S, what="mvn dependency:tree")
    except BrokerError:
        return []
    if result.returncode != 0 or not out.is_file():
        return []
    paths = []
    for m in _TREE_LINE.finditer(out.read_text()):
        group, artifact, version, classifier = m["g"], m["a"], m["v"], m["c"]
        name = f"{artifact}-{version}{'-' + classifier if classifier else ''}.jar"
        paths.append(f"{group.replace('.', '/')}/{artifact}/{version}/{name}")
    return sorted(set(paths))


def _local_repo() -> Path:
    """The local Maven repository: ``-Dmaven.repo.local`` in ``MAVEN_OPTS``, else ~/.m2's."""
    m = re.search(r"-Dmaven\.repo\.local=(\S+)", os.environ.get("MAVEN_OPTS", ""))
    return Path(m[1]) if m else Path.home() / ".m2" / "repository"


def _repo_path(url: str, paths: set[str]) -> str | None:
    """Which of ``paths`` (``group/as/dirs/artifact/version/file.jar``) a download URL is:
    the repository's base (whatever mirror mvn uses) is the part before it."""
    for start in range(len(url)):
        if url[start] == "/" and url[start + 1 :] in paths:
            return url[start + 1 :]
    return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _download(
    cmd: Sequence[str], *, mvn: str, pom: Path, product: str, home: Path
) -> subprocess.CompletedProcess[str]:
    """Run ``mvn ... copy-dependencies`` with progress lines on stderr.

    First the jar list (``dependency:tree``), to know how many of them are not yet in the
    local Maven repository; then the download, counting mvn's "Downloaded from" lines
    against that number (sizes read from the local repository as the jars arrive: no
    request of our own goes to the repository, mvn's configuration decides where from)::

        downloading Kafka 4.1.1 from Maven Central (first run only) ...
          Kafka 4.1.1: 61 jars to fetch
          Kafka 4.1.1: 17 of 61 jars (27%), 12.3 MB
          Kafka 4.1.1: downloaded 41.9 MB in 31 s
    """
    started = time.monotonic()
    progress(f"downloading {product} from Maven Central (first run only) ...")
    local_repo = _local_repo()
    paths = {p for p in _jar_paths(mvn, pom, home) if not (local_repo / p).is_file()}
    if paths:
        progress(f"  {product}: {len(paths)} jars to fetch")
    done_bytes = done_jars = 0
    last_line, last_tenth = time.monotonic(), 0
    lines: list[str] = []
    # A context manager, so that the pipe is closed here: left to the garbage collector it
    # raises a ResourceWarning wherever the collection happens to run (a test's setup).
    with subprocess.Popen(
        list(cmd),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        timed_out = threading.Event()

        def on_timeout() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(_MVN_TIMEOUT_S, on_timeout)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                m = _DOWNLOADED.search(line)
                if m is None or not m["url"].endswith(".jar"):
                    continue
                path = _repo_path(m["url"], paths)
                if path is None:  # a plugin's jar, not one of ours
                    continue
                done_jars += 1
                done_bytes += _size(local_repo / path)
                now = time.monotonic()
                tenth = done_jars * 10 // len(paths)
                if now - last_line >= _PROGRESS_EVERY_S or tenth > last_tenth:
                    last_line, last_tenth = now, tenth
                    share = done_jars * 100 // len(paths)
                    progress(
                        f"  {product}: {done_jars} of {len(paths)} jars ({share}%), "
                        f"{_mb(done_bytes)}"
                    )
            code = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    took = time.monotonic() - started
    if code == 0:
        progress(f"  {product}: downloaded {_mb(done_bytes)} in {took:.0f} s")
    elif timed_out.is_set():
        raise BrokerError(
            f"mvn did not finish within {_MVN_TIMEOUT_S:.0f}s:\n{tail(''.join(lines))}"
        )
    return subprocess.CompletedProcess(list(cmd), code, "".join(lines), None)


# --------------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------------


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    # The wildcard address: a broker that binds all interfaces (RocketMQ 4.x cannot do
    # otherwise) conflicts with a listener on any address, and 127.0.0.1-only brokers are
    # covered too, since a wildcard bind fails if any address holds the port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def _os_chosen_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        port: int = sock.getsockname()[1]
    return port


def pick_ports(count: int, *, exclude: set[int], neighbours: Sequence[int] = (0,)) -> list[int]:
    """Return ``count`` distinct free TCP ports outside the ephemeral range.

    The broker must come back on the same port after a stop; a port from the ephemeral
    range may meanwhile be taken as the *local* port of some outgoing connection (clients
    reconnecting to this very broker do that), which would make the restart fail to bind.
    Ports below the ephemeral range are only ever taken by explicit ``bind``.

    ``neighbours`` are offsets that must be free too for a port to be chosen (a RocketMQ
    broker on port P also listens on P-2 and P+1); ``exclude`` and the ports already chosen,
    with their neighbours, are never part of a new choice.
    """
    low, _ = _ephemeral_range()
    candidates = list(range(max(10000, low - 12000), low))
    random.shuffle(candidates)
    chosen: list[int] = []
    taken = set(exclude)
    for candidate in [*candidates, *(0 for _ in range(count))]:  # 0: let the OS choose
        port = candidate or _os_chosen_port()
        block = {port + offset for offset in neighbours}
        if block & taken or not all(0 < p < 65536 and _bindable(p) for p in block):
            continue
        chosen.append(port)
        taken |= block
        if len(chosen) == count:
            return chosen
    raise BrokerError("no free TCP port found on 127.0.0.1")


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# JVMs
# --------------------------------------------------------------------------------------------

JVM_FLAGS = (
    # Kafka, measured on a 2-core machine (start to first metadata answer, 2-5 rounds each):
    # G1 3.6-4.5 s cold / 2.5-2.9 s warm; G1 + C1-only 2.8-3.7 / 2.1-2.7; Serial + C1-only
    # 2.8-3.4 / 2.3-3.0 with ~70 MB less RSS (345 MB vs 415 MB). C1-only (TieredStopAtLevel=1)
    # is the real win and costs no measurable throughput at test volumes (20k transactional
    # messages: 0.8 s either way); SerialGC adds no GC threads competing for the two cores.
    # RocketMQ 4.9 (NameServer + broker, 2 rounds each): start-up is a wash, 4-5 s to ready
    # with G1 or Serial, C2 or C1-only; Serial + C1-only has the smallest broker RSS (247 MB
    # vs 270-325 MB) and the fastest mqadmin (1.1 s vs 1.5 s), and eight producers got
    # 7-9k msg/s through it (4-5k/s with G1 + C2): C1 does not cap the broker at test volumes.
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:ActiveProcessorCount=2",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)


def java_command(lib: Path, main: str, args: Sequence[str], options: Sequence[str]) -> list[str]:
    """``java`` with the shared flags, ``options`` (heap, -D...), every jar of ``lib``, ``main``."""
    java = require_tool("java", "to run the broker (install OpenJDK 17+)")
    return [java, *JVM_FLAGS, *options, "-cp", f"{lib}/*", main, *args]


_LIVE: set[JavaProcess] = set()
"""JVMs started and not yet reaped; killed at interpreter exit."""


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            proc.kill()


class JavaProcess:
    """One long-lived JVM: own process group, stdout and stderr appended to ``log_path``.

    ``name`` ("Kafka", "RocketMQ broker") only appears in error messages.
    """

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def running(self) -> bool:
        """True while the process is alive (not necessarily ready)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of the JVM (also its process group id), or None when not started."""
        return self._proc.pid if self._proc is not None else None

    def mark(self, text: str) -> None:
        """Append a separator line to the log, so each start is easy to find in it."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as log:
            log.write(f"\n===== {text}\n")

    def start(self, cmd: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None) -> None:
        """Start ``cmd`` in its own process group; output goes to the end of the log.

        The JVM runs in its own process group (so ``stop``/``kill`` reach everything it
        spawns) and, when started from the main thread, with a parent-death signal, so even
        a SIGKILLed test runner cannot leave it behind.
        """
        if self.running:
            raise BrokerError(f"{self.name} (pid {self.pid}) is already running")
        cmd = list(cmd)
        setpriv = shutil.which("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            # PR_SET_PDEATHSIG fires when the *thread* that forked dies, hence main thread only.
            cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=None if env is None else dict(env),
                start_new_session=True,
            )
        _LIVE.add(self)

    def output(self) -> str:
        """Everything the JVM wrote since its latest start."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Last lines of the log, for error messages and failing-test diagnostics."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 64 * 1024))
                return tail(fh.read().decode("utf-8", "replace"), lines)
        except FileNotFoundError:
            return f"(no {self.log_path.name})"

    def wait_ready(self, ready: Callable[[float], bool], timeout_s: float, where: str) -> None:
        """Poll ``ready(remaining_s)`` every 0.2 s until it is true.

        Raises :class:`BrokerError` with the output of this start, Java frames stripped, if
        the process exits first or ``timeout_s`` passes. ``where`` completes "not ready ...".
        """
        deadline = time.monotonic() + timeout_s
        while True:
            proc = self._proc
            assert proc is not None
            code = proc.poll()
            if code is not None:
                raise BrokerError(
                    f"{self.name} exited with code {code} during startup ({self.log_path}):\n"
                    f"{condensed_tail(self.output())}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"{self.name} not ready {where} after {timeout_s:.0f}s "
                    f"({self.log_path}):\n{condensed_tail(self.output())}"
                )
            if ready(remaining):
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
        """Shut down cleanly: SIGTERM, SIGKILL after ``timeout_s``."""
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
        """SIGKILL the whole process group (a crash, as far as the JVM can tell)."""
        proc = self._proc
        if proc is None:
            return
        self._signal_group(signal.SIGKILL)
        proc.wait()
        self._reap()

    def _reap(self) -> None:
        # No group-wide kill after the JVM has been reaped: it spawns no children, and its
        # pgid could by then belong to an unrelated new session.
        _LIVE.discard(self)


# --------------------------------------------------------------------------------------------
# Command line of the launchers
# --------------------------------------------------------------------------------------------


class ManagedBroker(ABC):
    """What the launchers have in common: ``with`` starts and stops, ``run_launcher`` runs it."""

    @property
    @abstractmethod
    def running(self) -> bool: ...

    @abstractmethod
    def start(self, timeout_s: float = 120) -> None: ...

    @abstractmethod
    def stop(self, timeout_s: float = 30) -> None: ...

    @abstractmethod
    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str: ...

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


B = TypeVar("B", bound=ManagedBroker)


def launcher_parser(module: str, description: str) -> argparse.ArgumentParser:
    """A parser with the options every launcher has; add the broker's own, then run_launcher."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--workdir", type=Path, help="configuration, data and logs go here")
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"default {DEFAULT_CACHE}")
    parser.add_argument("--timeout", type=float, default=120.0, help="startup timeout (s)")
    parser.add_argument(
        "--download-only", action="store_true", help="fetch the jars into the cache and exit"
    )
    return parser


def run_launcher(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    *,
    product: str,
    ensure: Callable[[Path | None], Path],
    build: Callable[[argparse.Namespace], B],
    describe: Callable[[B], tuple[str, str]],
) -> int:
    """``main`` of a launcher: download only, or run the broker in the foreground until a signal.

    ``build`` makes the broker from the parsed options; ``describe`` returns what is printed
    once it is ready: a line for stdout (addresses) and one for stderr (log files).
    Returns the exit status: 1 if the broker cannot start or dies on its own.
    """
    args = parser.parse_args(argv)
    if args.download_only:
        try:
            lib = ensure(args.cache_dir)
        except BrokerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{product} jars in {lib}")
        return 0
    if args.workdir is None:
        parser.error("--workdir is required unless --download-only is given")

    stop_requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    try:
        service = build(args)
        service.start(timeout_s=args.timeout)
    except (BrokerError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ready, logs = describe(service)
    print(ready, flush=True)
    print(logs, file=sys.stderr, flush=True)
    try:
        while not stop_requested.wait(1.0):
            if not service.running:
                print(f"error: {product} exited:\n{service.log_tail()}", file=sys.stderr)
                return 1
    finally:
        service.stop()
    return 0
