"""The bridge's one HTTP port: ``/metrics``, ``/livez`` and ``/readyz``.

It runs on its own daemon thread (the stdlib WSGI server, threaded), not on the event
loop, for two reasons: a scrape never competes with message handling, and ``/livez`` can
tell a *blocked* event loop apart from a dead process. ``/livez`` schedules a no-op on
the loop and waits for it; if the loop does not run it within ``live_timeout_s`` the
answer is 503, and Kubernetes restarts the pod.

``/readyz`` asks the bridge for its problems (source not logged in, sink not ready,
draining); an empty list is 200. Bodies are short text lines; they carry state, never
configuration values or secrets.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import CollectorRegistry, make_wsgi_app

log = structlog.get_logger("bridge.http")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    # Restarting the process must not wait for TIME_WAIT on the port.
    allow_reuse_address = True


class _Server6(_Server):
    # "::" listens on IPv6 and, where the kernel allows (the Linux default), IPv4 too.
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    # Probes every few seconds would flood stderr with access lines.
    def log_message(self, format: str, *args: Any) -> None:
        return


class HealthServer:
    """Serves the registry and the two probes until :meth:`stop`."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        problems: Callable[[], list[str]],
        *,
        loop: asyncio.AbstractEventLoop,
        notes: Callable[[], list[str]] | None = None,
        live_timeout_s: float = 5.0,
    ) -> None:
        self._metrics_app = make_wsgi_app(registry)
        self._problems = problems
        self._notes = notes
        self._loop = loop
        self._live_timeout_s = live_timeout_s
        self._server = make_server(
            host,
            port,
            self._app,
            server_class=_Server6 if ":" in host else _Server,
            handler_class=_QuietHandler,
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("http server listening", port=self.port, paths="/metrics /livez /readyz")

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- WSGI ----------------------------------------------------------------------

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body: Iterable[bytes] = self._metrics_app(environ, start_response)
            return body
        if path == "/livez":
            return _text(start_response, *self._live())
        if path == "/readyz":
            problems = self._problems()
            if problems:
                return _text(start_response, 503, "not ready: " + "; ".join(problems))
            # Ready, but worth knowing (e.g. a frame the source skipped): said, not failed,
            # because restarting or unrouting the pod would not help.
            notes = self._notes() if self._notes is not None else []
            return _text(start_response, 200, "; ".join(["ready", *notes]))
        return _text(start_response, 404, "not found: try /metrics, /livez or /readyz")

    def _live(self) -> tuple[int, str]:
        async def nothing() -> None:
            return None

        try:
            future = asyncio.run_coroutine_threadsafe(nothing(), self._loop)
        except RuntimeError:
            return 503, "event loop closed"
        try:
            future.result(self._live_timeout_s)
        except TimeoutError:
            future.cancel()
            return 503, f"event loop did not answer within {self._live_timeout_s:g} s"
        return 200, "alive"


def _text(start_response: StartResponse, status: int, text: str) -> list[bytes]:
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    body = (text + "\n").encode()
    start_response(
        f"{status} {reason}",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]
