"""librdkafka's voice in the bridge's log: its log lines as structlog JSON, identical lines
throttled, values of secret settings redacted. Used by the Kafka sink; no Kafka calls."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import structlog

#: librdkafka's own log lines (see :class:`LibrdkafkaLogger`).
rdlog = structlog.get_logger("bridge.sink.librdkafka")

#: How often one kind of client error or librdkafka line may be logged. librdkafka
#: reports a refused connection or a failed SASL login on every reconnect (several times
#: a second, each both as a log line and an error_cb), so identical lines are let through
#: once per window and the next one after it says how many were left out (``repeated``).
THROTTLE_WINDOW_S = 30.0


#: Error texts (last_error, SinkError messages) are cut to this many characters.
MAX_ERROR_CHARS = 300

#: librdkafka setting names whose values are secrets. librdkafka prints such values as
#: ``[redacted]`` itself (checked with debug=all); the bridge redacts them again anyway.
_SENSITIVE_NAME = re.compile(r"password|secret|passphrase|key\.pem|oauthbearer\.config")

#: The variable tail librdkafka appends to a broker failure, e.g.
#: ``(after 0ms in state CONNECT, 3 identical error(s) suppressed)``: not part of the
#: throttling key, or no two lines would ever be identical.
VARIABLE_TAIL = re.compile(
    r"\s*\(after \d+ms in state [A-Z_]+(?:, \d+ identical error\(s\) suppressed)?\)"
)

#: ``[thrd:sasl_plaintext://127.0.0.1:9093/bootstrap]: <text>``, the prefix of each line.
_THREAD_PREFIX = re.compile(r"\[thrd:(?P<thread>[^\]]*)\]:\s*(?P<text>.*)", re.DOTALL)


def sensitive_values(settings: dict[str, Any]) -> list[str]:
    """Values of the settings whose names mark them as secrets (e.g. ``sasl.password``)."""
    return [
        str(value)
        for key, value in settings.items()
        if _SENSITIVE_NAME.search(key.lower()) and str(value)
    ]


class Redactor:
    """Replaces known secret values in a text by ``[redacted]``."""

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        # Longest first, so a secret containing another one is replaced whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text


def one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


class Throttle:
    """Lets the first of identical lines through, then at most one per ``window_s``.

    :meth:`admit` returns None for a line to leave out, else how many identical lines were
    left out since the last one let through. Keys are bounded (oldest forgotten first).
    Thread-safe, although all callers run on the sink thread (they are served by poll).
    """

    def __init__(
        self,
        window_s: float = THROTTLE_WINDOW_S,
        *,
        max_keys: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window_s = window_s
        self._max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        #: key -> [time last let through, lines left out since]
        self._seen: OrderedDict[Hashable, list[float]] = OrderedDict()

    def admit(self, key: Hashable) -> int | None:
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self._window_s:
                seen[1] += 1
                return None
            left_out = int(seen[1]) if seen is not None else 0
            self._seen[key] = [now, 0]
            self._seen.move_to_end(key)
            while len(self._seen) > self._max_keys:
                self._seen.popitem(last=False)
            return left_out


def _std_level(level: int) -> int:
    """The nearest standard logging level at or below ``level`` (structlog needs one)."""
    for std in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if level >= std:
            return std
    return logging.DEBUG


class LibrdkafkaLogger:
    """The producer's ``logger`` setting: librdkafka's log lines as structlog JSON lines.

    Without it librdkafka prints raw ``%3|1700000000.123|FAIL|rdkafka#producer-1| ...``
    lines to stderr. confluent-kafka calls ``logger.log(level, "%s [%s] %s", facility,
    client, text)`` (see ``log_cb`` in its ``confluent_kafka.c``) with librdkafka's
    syslog level already mapped to a logging level: 0-2 (emerg, alert, crit) CRITICAL,
    3 (err) ERROR, 4 (warning) WARNING, 5-6 (notice, info) INFO, 7 (debug) DEBUG. Only
    ``log`` is ever called, so this is a small object with that method rather than a
    ``logging.Logger``: the stdlib route (``ProcessorFormatter`` in
    :mod:`bridge.observability.logging`) would keep only the formatted text and drop the
    facility, client and thread fields this logger adds.

    A JSON line from it, e.g. for a wrong SASL password (logged at debug, see below)::

        {"facility": "FAIL", "client": "rdkafka#producer-1",
         "thread": "sasl_plaintext://10.0.0.5:9093/bootstrap",
         "event": "sasl_plaintext://10.0.0.5:9093/bootstrap: SASL authentication error:
         Authentication failed: Invalid username or password (after 302ms in state
         AUTH_REQ)", "level": "debug", "logger": "bridge.sink.librdkafka", ...}

    Decisions:

    * ``FAIL`` lines at error level are logged at debug: librdkafka sends each of them to
      ``error_cb`` too (``rd_kafka_broker_set_error``), where the bridge logs it once, with
      the error name (``_TRANSPORT``, ``_AUTHENTICATION``) and the metric.
    * Identical lines (below debug) are throttled, see :data:`THROTTLE_WINDOW_S`.
    * Values of secret settings are redacted (librdkafka does not print them anyway).
    * It never raises: an exception here would surface from ``poll()``.
    """

    name = "bridge.sink.librdkafka"

    def __init__(self, redact: Redactor | None = None, throttle: Throttle | None = None) -> None:
        self._redact = redact or Redactor()
        self._throttle = throttle or Throttle()

    def log(self, level: int, msg: str, *args: object, **_kwargs: object) -> None:
        try:
            self._log(level, msg, args)
        except Exception:  # a log line must never break poll()
            with contextlib.suppress(Exception):
                rdlog.warning("unreadable librdkafka log line")

    def _log(self, level: int, msg: str, args: tuple[object, ...]) -> None:
        fields: dict[str, object] = {}
        if len(args) == 3 and msg == "%s [%s] %s":
            facility, client, text = (str(a) for a in args)
            fields["facility"] = facility
            fields["client"] = client
        else:  # not the shape confluent-kafka uses today; keep the text
            facility, text = "", (msg % args if args else msg)
        match = _THREAD_PREFIX.match(text)
        if match:
            fields["thread"] = match["thread"]
            text = match["text"]
        level = _std_level(level)
        if level > logging.DEBUG:
            left_out = self._throttle.admit(("log", facility, VARIABLE_TAIL.sub("", text)))
            if left_out is None:
                return
            if left_out:
                fields["repeated"] = left_out
        if facility == "FAIL" and level >= logging.ERROR:
            level = logging.DEBUG  # error_cb reports the same failure, with its name
        rdlog.log(level, self._redact(text), **fields)
