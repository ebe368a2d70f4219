"""Operational HTTP routes every HTTP service exposes: ``/healthz``, ``/readyz`` and ``/metrics``.

``/metrics`` serves the process's OpenTelemetry metrics in Prometheus text format (the Prometheus reader
installed by :func:`shared.telemetry.setup_telemetry` registers with ``prometheus_client``'s registry).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse, PlainTextResponse

__all__ = ["add_ops_routes"]


def add_ops_routes(app: FastAPI, ready: Callable[[], bool]) -> None:
    """Add ``GET /healthz`` (process alive), ``/readyz`` (``ready()`` true → 200, else 503), ``/metrics``."""

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        ok = ready()
        return JSONResponse({"status": "ready" if ok else "starting"}, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        return PlainTextResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
