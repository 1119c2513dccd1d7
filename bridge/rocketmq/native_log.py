"""Forward librocketmq's own log file into the bridge's structured log.

The native client writes warnings and errors (for example the broker's ``AclException``
for a wrong secret, which the send path only reports as "No route info") to
``$HOME/logs/rocketmq-cpp/<pid>_rocketmq-cpp.log.N``. That path is fixed when the library
loads (the per-client log path setters do not move it, so ``HOME`` must be writable).
One daemon thread per process tails the file and forwards warnings and errors,
rate-limited per message shape, with a plain hint for credential problems.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import structlog

#: Lines of the native log worth forwarding, e.g.
#: ``[2026-Nov-22 01:51:19.636394](error):msg: ...[findConsumerIds:1029]``
_NATIVE_LINE = re.compile(r"^\[[^]]*\]\((?P<level>error|warning)\):(?P<text>.*)$")
#: Lines the library logs at warning/error level in normal operation.
_NATIVE_NOISE = (
    "stopAllTcpTransportThread End",  # every shutdown, at "error" level
    "brokeradd is empty",  # heartbeat before the first route is known
    "%RETRY%",  # a new consumer group's retry topic does not exist yet
)
_NATIVE_HINTS = (
    ("AclException", "the broker refused the credentials: check access_key, secret_key, channel"),
    ("No route info", "no route: the topic does not exist, or the credentials were refused"),
)
#: A message shape is forwarded at most once per this many seconds.
_REPEAT_S = 60.0


class NativeLogForwarder:
    """Tails librocketmq's log files of this process and forwards warnings and errors."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._log = structlog.get_logger("bridge.rocketmq.native")
        self._offsets: dict[Path, int] = {}
        self._last_seen: dict[str, float] = {}

    def run_forever(self, interval_s: float = 0.5) -> None:
        while True:
            time.sleep(interval_s)
            try:
                self.poll()
            except OSError:
                continue

    def poll(self) -> None:
        """Forward what was appended since the last poll (complete lines only)."""
        for path in sorted(self.directory.glob(f"{os.getpid()}_rocketmq-cpp.log*")):
            start = self._offsets.get(path, 0)
            with path.open("rb") as fh:
                fh.seek(start)
                chunk = fh.read()
            complete = chunk.rfind(b"\n") + 1
            self._offsets[path] = start + complete
            for raw in chunk[:complete].decode("utf-8", "replace").splitlines():
                self._forward(raw)

    def _forward(self, line: str) -> None:
        match = _NATIVE_LINE.match(line)
        if match is None:
            return
        text = match.group("text").strip()
        if any(noise in text for noise in _NATIVE_NOISE):
            return
        # Rate limit per message shape (digits stripped): the client repeats itself.
        shape = re.sub(r"\d+", "#", text)[:200]
        now = time.monotonic()
        if now - self._last_seen.get(shape, -1e9) < _REPEAT_S:
            return
        self._last_seen[shape] = now
        hint = next((h for marker, h in _NATIVE_HINTS if marker in text), None)
        if match.group("level") == "error" or hint is not None:
            self._log.error("rocketmq client", native=text[:500], hint=hint)
        else:
            self._log.warning("rocketmq client", native=text[:500])


_started: NativeLogForwarder | None = None
_guard = threading.Lock()


def native_log_dir() -> Path:
    """Where librocketmq writes its log: ``$HOME/logs/rocketmq-cpp``."""
    home = Path(os.environ.get("HOME") or Path.home())
    return home / "logs" / "rocketmq-cpp"


def ensure_forwarding() -> NativeLogForwarder:
    """Start the forwarding thread once per process (idempotent, thread-safe)."""
    global _started
    with _guard:
        if _started is None:
            forwarder = NativeLogForwarder(native_log_dir())
            threading.Thread(
                target=forwarder.run_forever, name="rocketmq-native-log", daemon=True
            ).start()
            _started = forwarder
        return _started
