"""Operational HTTP routes every HTTP service exposes: ``/healthz``, ``/readyz`` and ``/metrics``.

``/metrics`` serves the process's OpenTelemetry metrics in Prometheus text format (the Prometheus reader
installed by :func:`shared.telemetry.setup_telemetry` registers with ``prometheus_client``'s registry).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from shared.health import Readiness

__all__ = ["add_ops_routes"]


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
