"""HTTP API of the analytics service: ``GET /kpis`` plus ``/healthz``, ``/readyz``, ``/metrics``.

``GET /kpis?from=&to=&group_by=agent_version|day|carrier[&samples=true]``: the KPIs (definitions in
:mod:`services.analytics.kpis`) of ended calls started in ``[from, to)`` per group. ``from``/``to`` are ISO
8601 dates or date-times (UTC when no offset is given), both optional. Answer::

    {"group_by": "agent_version", "from": ..., "to": ..., "groups": [{"key": "1", "calls": 12,
     "first_response_p50_ms": 640.0, "first_response_p95_ms": 910.0, "first_responses": 40,
     "task_completion": {"value": 0.75, "numerator": 9, "denominator": 12}, ..., "cost_per_call_usd": 0.0}]}

With ``SWITCHBOARD_API_TOKEN`` set, ``/kpis`` requires ``Authorization: Bearer <token>`` (401 otherwise), which the
OpenAPI document declares. ``/docs`` (Swagger UI), ``/redoc`` and ``/openapi.json`` come from local assets
(:mod:`shared.apidocs`).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from services.analytics import store
from shared.apidocs import add_api_docs, declare_bearer
from shared.health import Readiness
from shared.http import TELEMETRY, add_ops_routes

__all__ = ["CallKpis", "KpiGroup", "Kpis", "create_app", "parse_time"]


class Rate(BaseModel):
    """A rate with its parts: ``value`` = ``numerator`` / ``denominator`` (null when the denominator is 0)."""

    model_config = ConfigDict(extra="forbid")
    value: float | None
    numerator: int
    denominator: int


class KpiGroup(BaseModel):
    """One group's KPIs (definitions: :mod:`services.analytics.kpis`); ``samples=true`` adds the samples."""

    model_config = ConfigDict(extra="allow")
    key: str
    calls: int
    first_response_p50_ms: float | None
    first_response_p95_ms: float | None
    first_responses: int
    interruption_success: Rate
    task_completion: Rate
    escalation_rate: Rate
    drop_rate: Rate
    tool_success: Rate
    cost_per_call_usd: float | None
    cost_total_usd: float
    priced_calls: int
    unpriced_calls: int


class Kpis(BaseModel):
    """``GET /kpis``: the grouping, the window as given, and one entry per group value."""

    model_config = ConfigDict(extra="forbid")
    group_by: str
    from_: str | None = Field(alias="from")
    to: str | None
    groups: list[KpiGroup]


class CallKpis(BaseModel):
    """``GET /kpis/calls/{call_id}``: one call's KPI row and its latencies."""

    model_config = ConfigDict(extra="allow")
    call_id: str
    agent: str | None
    agent_version: str | None
    carrier: str | None
    end_reason: str | None


def parse_time(value: str | None, name: str) -> int | None:
    """An ISO 8601 date or date-time → unix ns (naive = UTC); None passes through.

    Raises:
        HTTPException: 422 when ``value`` does not parse.
    """
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise HTTPException(status_code=422, detail=f"{name}: expected an ISO 8601 date or date-time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1_000_000) * 1000


async def _authorize(request: Request) -> None:
    token: str | None = request.app.state.api_token
    if not token:
        return
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else ""
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(status_code=401, detail="missing or wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


Auth = Annotated[None, Depends(_authorize)]


def create_app(engine: AsyncEngine, *, api_token: str | None,
               ready: Readiness | Callable[[], bool] = lambda: True) -> FastAPI:
    """The analytics API over ``engine`` (``ready`` answers ``/readyz``)."""
    app = FastAPI(title="Switchboard analytics", version="1",
                  description="KPIs computed from the CALLS and RT event streams (docs/analytics.md).",
                  docs_url=None, redoc_url=None, openapi_url=None, telemetry=TELEMETRY)
    app.state.api_token = api_token
    add_ops_routes(app, ready)
    add_api_docs(app)  # public, as before: the document describes the API, it holds no data
    declare_bearer(app, enabled=bool(api_token))

    @app.get("/kpis", summary="KPIs of ended calls per agent version, day or carrier", response_model=Kpis)
    async def kpis(_: Auth, group_by: store.GroupBy = "agent_version",
                   from_: Annotated[str | None, Query(alias="from")] = None, to: str | None = None,
                   samples: bool = False) -> JSONResponse:
        groups = await store.kpis(engine, group_by=group_by, from_ns=parse_time(from_, "from"),
                                  to_ns=parse_time(to, "to"), samples=samples)
        return JSONResponse({"group_by": group_by, "from": from_, "to": to, "groups": groups})

    @app.get("/kpis/calls/{call_id}", summary="One call's KPI figures", response_model=CallKpis,
             responses={404: {"description": "no KPI row for the call"}})
    async def call_kpis(_: Auth, call_id: str) -> JSONResponse:
        data = await store.call_figures(engine, call_id)
        if data is None:
            raise HTTPException(status_code=404, detail=f"no KPI row for call {call_id}")
        return JSONResponse(data)

    return app
