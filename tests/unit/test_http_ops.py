"""The operational routes (``/healthz``, ``/readyz``, ``/metrics``) are left out of FastAPI's request tracing;
every other route is still traced (:data:`shared.http.TELEMETRY`)."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.http import TELEMETRY, add_ops_routes


async def test_probes_are_not_traced_and_api_routes_are() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = FastAPI(telemetry={**TELEMETRY, "tracer_provider": provider})
    add_ops_routes(app, lambda: True)

    @app.get("/kpis")
    async def kpis() -> dict[str, int]:
        return {"calls": 1}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await client.get(path)).status_code == 200
        assert exporter.get_finished_spans() == ()
        assert (await client.get("/kpis")).json() == {"calls": 1}
    assert exporter.get_finished_spans()  # the API request is traced
