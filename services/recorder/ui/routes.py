"""The console's routes on the recorder app: ``/ui/`` (calls list), ``/ui/calls/{call_id}``, ``/ui/kpis`` and
``/ui/static/{asset}`` (CSS/JS shipped in this package: the console works offline, no CDN).

They use the recorder API's authorization (``SWITCHBOARD_API_TOKEN``: Bearer header or ``?access_token=``,
which the pages carry along in their links).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from sqlalchemy.ext.asyncio import AsyncEngine

from services.analytics import store as kpi_store
from services.recorder import queries
from services.recorder.projections import project
from services.recorder.replay import timeline
from services.recorder.ui import pages, search
from services.recorder.vault import Vault
from services.recorder.waterfall import waterfall
from shared import subjects

__all__ = ["ASSETS", "add_console"]

ASSETS = {"console.css": "text/css", "console.js": "text/javascript", "live.js": "text/javascript"}
_DIR = Path(__file__).parent
PER_PAGE = 25


def _day_ns(value: str | None, name: str, *, end: bool = False) -> int | None:
    if not value:
        return None
    try:
        day = datetime.fromisoformat(value)
    except ValueError:
        raise HTTPException(status_code=422, detail=f"{name}: expected YYYY-MM-DD") from None
    if day.tzinfo is None:
        day = day.replace(tzinfo=UTC)
    if end and len(value) == 10:  # a date "to" includes that whole day
        day += timedelta(days=1)
    return int(day.timestamp()) * 1_000_000_000


def _token_q(request: Request) -> str:
    token = request.query_params.get("access_token")
    return f"?access_token={quote(token, safe='')}" if token else ""


def add_console(app: FastAPI, engine: AsyncEngine, authorize: Callable[..., Any], *,
                vault: Vault | None = None) -> None:
    """Add the ``/ui`` routes to the recorder ``app`` (``authorize`` = the API's auth dependency; ``vault``
    opens the archived caller content, an erased call's reads ``[erased]``)."""
    guard = [Depends(authorize)]

    @app.get("/ui", include_in_schema=False)
    async def ui_root(request: Request) -> RedirectResponse:
        return RedirectResponse(f"/ui/{_token_q(request)}")

    @app.get("/ui/static/{asset}", include_in_schema=False, dependencies=guard)
    async def ui_asset(asset: str) -> FileResponse:
        if asset not in ASSETS:
            raise HTTPException(status_code=404, detail="no such asset")
        return FileResponse(_DIR / asset, media_type=ASSETS[asset], headers={"Cache-Control": "no-cache"})

    @app.get("/ui/", response_class=HTMLResponse, summary="Console: calls list", dependencies=guard)
    async def ui_calls(request: Request, page: Annotated[int, Query(ge=1)] = 1,
                       from_: Annotated[str | None, Query(alias="from")] = None, to: str | None = None,
                       agent_version: str | None = None, status: str | None = None, end_reason: str | None = None,
                       carrier: str | None = None, caller: str | None = None) -> HTMLResponse:
        filters = search.CallFilters(_day_ns(from_, "from"), _day_ns(to, "to", end=True), agent_version or None,
                                     status or None, end_reason or None, carrier or None, caller or None)
        rows, total = await search.search_calls(engine, filters, offset=(page - 1) * PER_PAGE, limit=PER_PAGE)
        params = {k: v for k, v in request.query_params.items() if v}
        return HTMLResponse(pages.calls_page(
            rows, total, params=params, values=await search.filter_values(engine), page=page, per_page=PER_PAGE,
            token_q=_token_q(request), analytics=await search.analytics_present(engine)))

    @app.get("/ui/calls/{call_id}", response_class=HTMLResponse, summary="Console: one call", dependencies=guard)
    async def ui_call(request: Request, call_id: str) -> HTMLResponse:
        try:
            subjects.validate_call_id(call_id)
        except ValueError:
            raise HTTPException(status_code=400, detail="invalid call id") from None
        call = await queries.get_call(engine, call_id)
        if call is None:
            raise HTTPException(status_code=404, detail=f"no call {call_id}")
        events = await queries.call_events(engine, call_id, vault=vault)
        if call.get("projected_ns") or call.get("erased_ns") is not None:
            stored = await queries.stored_projection(engine, call_id)
            turns, tools = stored["turns"], stored["tool_calls"]
        else:
            data = (await asyncio.to_thread(project, events, with_audio=False)).to_dict()
            turns, tools = data["turns"], data["tool_calls"]
        rows = [r.to_dict() for r in timeline(events, collapse=True)]  # runs of deltas: one row with a count
        spans = await queries.call_spans(engine, call_id)
        audit = (await queries.verify_call(engine, call_id, vault=vault)).to_dict()
        kpis = await kpi_store.call_figures(engine, call_id) if await search.analytics_present(engine) else None
        return HTMLResponse(pages.call_page(call, turns=turns, tools=tools, timeline=rows,
                                            waterfall=waterfall(spans), audit=audit, kpis=kpis,
                                            token_q=_token_q(request)))

    @app.get("/ui/kpis", response_class=HTMLResponse, summary="Console: KPI dashboard", dependencies=guard)
    async def ui_kpis(request: Request, from_: Annotated[str | None, Query(alias="from")] = None,
                      to: str | None = None) -> HTMLResponse:
        present = await search.analytics_present(engine)
        lo, hi = _day_ns(from_, "from"), _day_ns(to, "to", end=True)
        by_version = await kpi_store.kpis(engine, group_by="agent_version", from_ns=lo, to_ns=hi) if present else []
        by_day = await kpi_store.kpis(engine, group_by="day", from_ns=lo, to_ns=hi) if present else []
        return HTMLResponse(pages.kpis_page(by_version, by_day, token_q=_token_q(request), analytics=present))
