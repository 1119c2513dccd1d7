"""The official TMC Java client, built for tests: the SDK from Maven Central, a small probe.

The official client is ``com.taobao.api.internal.tmc.TmcClient`` in the TOP SDK that
``com.aliyun:alibaba-dingtalk-service-sdk`` bundles. ``tests/java/TmcProbe.java`` drives it
(log in, receive, fail some messages once, print one JSON line per event) and
``tests/integration/test_java_client.py`` runs it against ``tmc-bridge simulate``.

* :func:`ensure_sdk` downloads the SDK and its runtime dependency (``tests/java/pom.xml``)
  into the git-ignored cache the broker jars use, through the same helper
  (:func:`devtools.brokers.processes.ensure_maven_jars`: once, locked, marked complete only
  after a full download), then checks the jars against pinned SHA-1 digests (those Maven
  Central publishes in each jar's ``.sha1`` file).
* :func:`build_probe` compiles the probe with ``javac`` into ``<cache>/java/tmc-probe-<hash>``
  (the hash covers the sources and the SDK, so an edit recompiles), also once and locked.
* :func:`probe_command` is the ``java`` command line; :func:`parse_events` reads its output.

Command line::

    python -m devtools.java_client                       # download + compile, print the paths
    python -m devtools.java_client --run URL APP_KEY SECRET GROUP EXPECTED FAIL_EVERY
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.brokers.processes import (
    DEFAULT_CACHE,
    BrokerError,
    ensure_maven_jars,
    require_tool,
    run_captured,
)

__all__ = [
    "PROBE_MAIN",
    "SDK_VERSION",
    "BrokerError",
    "Probe",
    "build_probe",
    "ensure_sdk",
    "main",
    "parse_events",
    "probe_command",
]

SDK_VERSION = "2.0.0"
"""Must match ``sdk.version`` in ``tests/java/pom.xml`` (the cache folder is named after it)."""

_REPO = Path(__file__).resolve().parents[1]
SOURCES = _REPO / "tests" / "java"
_POM_FILE = SOURCES / "pom.xml"
PROBE_MAIN = "TmcProbe"

#: SHA-1 of each jar, as published next to it on Maven Central (``<jar>.sha1``).
_JAR_SHA1 = {
    f"alibaba-dingtalk-service-sdk-{SDK_VERSION}.jar": "4ee53bfba825d3e96703243fb9a84ee0152df0c0",
    "commons-logging-1.1.1.jar": "5043bfebc3db072ed80fbd362e7caf00e885d8ae",
}
_JAVAC_TIMEOUT_S = 300.0


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()  # noqa: S324 - Maven Central's published checksum, not security
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_sdk(cache_dir: Path | None = None) -> Path:
    """The folder holding the SDK's jars (``<cache>/java/tmc-sdk-<version>/lib``).

    Downloaded once from Maven Central with ``mvn`` (see ``ensure_maven_jars``). Every call
    checks the jars' SHA-1 against the pinned values (a few milliseconds for 5.5 MB), so a
    truncated or replaced jar in the cache is an error rather than a confusing test failure.
    Raises :class:`BrokerError` if ``java`` or ``mvn`` is missing, the download fails or a
    digest does not match.
    """
    lib = ensure_maven_jars(
        pom=_POM_FILE,
        name=f"java/tmc-sdk-{SDK_VERSION}",
        required=list(_JAR_SHA1),
        product=f"the TMC Java SDK (alibaba-dingtalk-service-sdk {SDK_VERSION})",
        cache_dir=cache_dir,
    )
    for jar, expected in _JAR_SHA1.items():
        actual = _sha1(lib / jar)
        if actual != expected:
            raise BrokerError(
                f"{lib / jar}: SHA-1 {actual}, Maven Central publishes {expected}; "
                f"delete {lib.parent} to download it again"
            )
    return lib


@dataclass(frozen=True)
class Probe:
    """A compiled probe: its classes and the SDK jars it runs with."""

    classes: Path
    lib: Path

    @property
    def classpath(self) -> str:
        return os.pathsep.join([str(self.classes), f"{self.lib}/*"])


def _sources() -> list[Path]:
    sources = sorted(SOURCES.glob("*.java"))
    if not sources:
        raise BrokerError(f"no Java sources in {SOURCES}")
    return sources


def build_probe(cache_dir: Path | None = None) -> Probe:
    """Download the SDK if needed and compile ``tests/java/*.java`` against it, once.

    The classes go to ``<cache>/java/tmc-probe-<hash>/classes``, where the hash covers the
    sources, the SDK version and the ``javac`` version: an edit compiles afresh, an unchanged
    tree costs only the hashing. Compiled into a scratch folder renamed into place under a
    lock, like the jar download. Raises :class:`BrokerError` (``javac`` missing, or its
    errors).
    """
    javac = require_tool("javac", "to compile the Java client probe (install a JDK 17+)")
    lib = ensure_sdk(cache_dir)
    sources = _sources()
    version = run_captured([javac, "-version"], timeout_s=60, what="javac -version").stdout
    digest = hashlib.sha256(f"{SDK_VERSION}\n{version.strip()}\n".encode())
    for src in sources:
        digest.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    home = (cache_dir or DEFAULT_CACHE).resolve() / "java" / f"tmc-probe-{digest.hexdigest()[:16]}"
    classes = home / "classes"
    marker = home / ".complete"
    if marker.is_file() and classes.is_dir():
        return Probe(classes, lib)
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and classes.is_dir():
            return Probe(classes, lib)
        scratch = home / "classes.partial"
        shutil.rmtree(scratch, ignore_errors=True)
        cmd = [
            javac,
            "-encoding",
            "UTF-8",
            "-Xlint:all",
            "-d",
            str(scratch),
            "-cp",
            f"{lib}/*",
            *map(str, sources),
        ]
        result = run_captured(cmd, timeout_s=_JAVAC_TIMEOUT_S, what="javac")
        if result.returncode != 0:
            raise BrokerError(f"javac failed (exit {result.returncode}):\n{result.stdout}")
        shutil.rmtree(classes, ignore_errors=True)
        scratch.rename(classes)
        tmp_marker = home / ".complete.tmp"
        tmp_marker.write_text("complete\n")
        tmp_marker.replace(marker)
    return Probe(classes, lib)


def probe_command(
    probe: Probe,
    *,
    url: str,
    app_key: str,
    secret: str,
    group: str = "default",
    expected: int,
    fail_every: int = 0,
    timeout_s: int = 60,
    linger_ms: int = 1000,
    log_level: str = "warn",
) -> list[str]:
    """``java ... TmcProbe`` with these arguments (see tests/java/TmcProbe.java).

    The SDK's commons-logging output is routed to the probe's ``ProbeLog`` (events on
    stdout, levels from ``log_level`` up)."""
    java = require_tool("java", "to run the Java client probe (install a JDK 17+)")
    return [
        java,
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Djava.awt.headless=true",
        "-Dorg.apache.commons.logging.Log=ProbeLog",
        f"-Dtmcprobe.log={log_level}",
        "-cp",
        probe.classpath,
        PROBE_MAIN,
        url,
        app_key,
        secret,
        group,
        str(expected),
        str(fail_every),
        str(timeout_s),
        str(linger_ms),
    ]


def parse_events(stdout: str) -> list[dict[str, Any]]:
    """The probe's events in order; a line that is not a JSON object (a JVM warning, say)
    becomes ``{"event": "raw", "text": line}`` so nothing it printed is lost."""
    events: list[dict[str, Any]] = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        events.append(event if isinstance(event, dict) else {"event": "raw", "text": line})
    return events


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.java_client",
        description="Download the TMC Java SDK, compile the probe, optionally run it.",
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"default {DEFAULT_CACHE}")
    parser.add_argument(
        "--run",
        nargs=6,
        metavar=("URL", "APP_KEY", "SECRET", "GROUP", "EXPECTED", "FAIL_EVERY"),
        help="run the probe in the foreground (its events go to stdout)",
    )
    parser.add_argument("--timeout", type=int, default=60, help="probe timeout (s)")
    parser.add_argument("--log-level", default="warn", help="SDK log level shown (default warn)")
    args = parser.parse_args(argv)
    try:
        probe = build_probe(args.cache_dir)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.run is None:
        print(f"SDK jars in {probe.lib}\nprobe classes in {probe.classes}")
        return 0
    url, app_key, secret, group, expected, fail_every = args.run
    cmd = probe_command(
        probe,
        url=url,
        app_key=app_key,
        secret=secret,
        group=group,
        expected=int(expected),
        fail_every=int(fail_every),
        timeout_s=args.timeout,
        log_level=args.log_level,
    )
    try:
        return subprocess.run(cmd, check=False, timeout=args.timeout + 30).returncode
    except subprocess.TimeoutExpired:
        print(f"error: the probe did not exit within {args.timeout + 30}s", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
