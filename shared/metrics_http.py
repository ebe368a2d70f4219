"""``/metrics`` for the services without an HTTP API (session, tools): a metrics-only HTTP server.

The gateway, recorder and analytics serve ``/metrics`` beside their API (:mod:`shared.http`). The session and the
tool workers talk only NATS, yet record the call-path histograms (first audio, barge-in, tool round trip, bus
hop); each serves them on its own port — ``SWITCHBOARD_SESSION_METRICS_PORT`` (default 9464, the port the
OpenTelemetry Prometheus exporter conventionally uses) and ``SWITCHBOARD_TOOLS_METRICS_PORT`` (9465); 0 turns it
off. Several tool workers may run on one host (they share the load through the queue group): a port already in
use is logged as a warning naming the variable and that process serves no ``/metrics`` — it keeps serving calls.
The server is ``prometheus_client``'s own (a daemon thread; https://prometheus.github.io/client_python/
exporting/http/), reading the registry the OpenTelemetry Prometheus reader of
:func:`shared.telemetry.setup_telemetry` fills, in Prometheus text format (OpenMetrics when the scraper asks).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

__all__ = ["MetricsServer", "serve_metrics"]

log = logging.getLogger("shared.metrics_http")


@dataclass
class MetricsServer:
    """A running metrics server listening on ``host``:``port``; :meth:`close` stops it."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(port: int, host: str, *, variable: str) -> MetricsServer | None:
    """Serve ``GET /metrics`` on ``host``:``port`` in a daemon thread.

    ``variable`` names the setting the port came from, for the log lines. Returns None (nothing served) when
    ``port`` is 0, or when the address cannot be bound (in use, not permitted: logged as a warning).
    """
    if port == 0:
        log.info("metrics endpoint off (%s=0)", variable)
        return None
    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("no /metrics in this process: cannot listen on %s:%d (%s): %s", host, port, variable, exc)
        return None
    log.info("metrics on http://%s:%d/metrics", host, port)
    return MetricsServer(host, port, server, thread)
