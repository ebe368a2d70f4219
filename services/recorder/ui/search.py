"""Queries behind the console: the filtered, paged calls list and the analytics tables when present.

The calls come from the recorder's ``calls`` table; the agent version and per-call KPIs come from the analytics
service's ``kpi_calls`` table (``services/analytics``) when it lives in the same database — without it the
version filter and the KPI panels say so instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, inspect, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.analytics import models as kpi_models
from services.recorder import models

__all__ = ["CallFilters", "analytics_present", "filter_values", "search_calls"]

_C = models.calls
_K = kpi_models.kpi_calls


@dataclass(frozen=True, slots=True)
class CallFilters:
    """Calls-list filters (all optional): start time range (unix ns, ``[from, to)``), agent version, status,
    end reason, carrier, caller number (substring)."""

    from_ns: int | None = None
    to_ns: int | None = None
    agent_version: str | None = None
    status: str | None = None
    end_reason: str | None = None
    carrier: str | None = None
    caller: str | None = None


async def analytics_present(engine: AsyncEngine) -> bool:
    """True when the analytics tables exist in this database."""
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: inspect(c).has_table(_K.name))


async def search_calls(engine: AsyncEngine, f: CallFilters, *, offset: int, limit: int
                       ) -> tuple[list[dict[str, Any]], int]:
    """One page of calls (newest first) matching ``f`` and the total count; rows are ``calls`` columns plus
    ``agent_version`` (None without the analytics tables) and ``duration_ms``."""
    with_kpis = await analytics_present(engine)
    cols: list[Any] = [_C]
    if with_kpis:
        cols.append(_K.c.agent_version)
    base = select(*cols)
    if with_kpis:
        base = base.outerjoin(_K, _K.c.call_id == _C.c.call_id)
    conds: list[Any] = []
    if f.from_ns is not None:
        conds.append(_C.c.started_ns >= f.from_ns)
    if f.to_ns is not None:
        conds.append(_C.c.started_ns < f.to_ns)
    if f.status:
        conds.append(_C.c.status == f.status)
    if f.end_reason:
        conds.append(_C.c.end_reason == f.end_reason)
    if f.carrier:
        conds.append(_C.c.carrier == f.carrier)
    if f.caller:
        conds.append(_C.c.from_number.contains(f.caller, autoescape=True))
    if f.agent_version:
        if not with_kpis:
            return [], 0
        conds.append(_K.c.agent_version == f.agent_version)
    stmt = base.where(*conds)
    count = select(func.count()).select_from(stmt.subquery())
    page = (stmt.order_by(func.coalesce(_C.c.started_ns, 0).desc(), _C.c.call_id).offset(offset).limit(limit))
    async with engine.connect() as conn:
        total = int((await conn.execute(count)).scalar() or 0)
        rows = (await conn.execute(page)).all()
    out = []
    for r in rows:
        data = dict(r._mapping)
        data.setdefault("agent_version", None)
        started, ended = data.get("started_ns"), data.get("ended_ns")
        data["duration_ms"] = (ended - started) / 1e6 if started and ended else None
        out.append(data)
    return out, total


async def filter_values(engine: AsyncEngine) -> dict[str, list[str]]:
    """Distinct values for the filter menus: ``status``, ``end_reason``, ``carrier``, ``agent_version``."""
    out: dict[str, list[str]] = {}
    async with engine.connect() as conn:
        for name in ("status", "end_reason", "carrier"):
            col = getattr(_C.c, name)
            out[name] = [str(v) for v in (await conn.execute(select(col).distinct().order_by(col))).scalars()
                         if v is not None]
    out["agent_version"] = []
    if await analytics_present(engine):
        async with engine.connect() as conn:
            out["agent_version"] = [str(v) for v in (await conn.execute(
                select(_K.c.agent_version).distinct().order_by(_K.c.agent_version))).scalars() if v is not None]
    return out
