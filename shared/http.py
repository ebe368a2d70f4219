"""Operational HTTP routes every HTTP service exposes: ``/healthz``, ``/readyz`` and ``/metrics``.

``/metrics`` serves the process's OpenTelemetry metrics in Prometheus text format (the Prometheus reader
installed by :func:`shared.telemetry.setup_telemetry` registers with ``prometheus_client``'s registry).
These routes are left out of FastAPI's request tracing (:data:`TELEMETRY`): the supervisor and Kubernetes probe
them every second or so, and each traced probe would be spans to export, stream and archive.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.telemetry import TelemetryConfig

from shared.health import Readiness

__all__ = ["OPS_PATHS", "TELEMETRY", "add_ops_routes", "is_ops_request"]

OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""The operational routes :func:`add_ops_routes` adds."""


def is_ops_request(scope: MutableMapping[str, Any]) -> bool:
    """True for an ASGI ``scope`` of one of :data:`OPS_PATHS` (FastAPI's telemetry ``exclude`` hook)."""
    return scope.get("path") in OPS_PATHS


TELEMETRY: TelemetryConfig = {"exclude": is_ops_request}
"""``FastAPI(telemetry=...)`` of every service: requests traced, the probes of :data:`OPS_PATHS` not."""


def add_ops_routes(app: FastAPI, ready: Readiness | Callable[[], bool]) -> None:
    """Add ``GET /healthz`` (process alive), ``/readyz``, ``/metrics``.

    ``/readyz`` answers 200 when ready, else 503. With a :class:`~shared.health.Readiness` (started by the
    service) the body is its :meth:`~shared.health.Readiness.report` (``status`` plus each check's name, ok
    and detail); with a plain ``ready()`` predicate it is ``{"status": "ready"|"starting"}``.
    """

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        if isinstance(ready, Readiness):
            return JSONResponse(ready.report(), status_code=200 if ready.ready else 503)
        ok = ready()
        return JSONResponse({"status": "ready" if ok else "starting"}, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        return PlainTextResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
