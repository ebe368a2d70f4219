"""Helpers for the tool-worker integration tests: databases, dates, row counts and test-only tools.

Not a test module. ``hold_once`` is served by subprocess workers in the fail-over test (via
``SWITCHBOARD_TOOL_MODULES=services.tools.receptionist,tests.integration.tools_support``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from services.tools.db import Database
from services.tools.framework import ToolContext, tool
from services.tools.models import Appointment, Customer, StoredResult
from services.tools.settings import ToolsSettings

__all__ = ["counts", "day", "hold_once", "slow_write"]


def day(offset: int) -> str:
    """The clinic-local date ``offset`` days from today, ISO."""
    today = dt.datetime.now(ToolsSettings().tzinfo).date()
    return (today + dt.timedelta(days=offset)).isoformat()


async def counts(database: Database) -> dict[str, int]:
    """Rows per table: customers, appointments (all), booked appointments, tool_results."""
    async with database.sessions() as session, session.begin():
        async def n(stmt: Any) -> int:
            return int((await session.execute(stmt)).scalar_one())

        return {
            "customers": await n(select(func.count()).select_from(Customer)),
            "appointments": await n(select(func.count()).select_from(Appointment)),
            "booked": await n(select(func.count()).select_from(Appointment).where(Appointment.status == "booked")),
            "tool_results": await n(select(func.count()).select_from(StoredResult)),
        }


@tool(parameters={"type": "object", "properties": {"marker": {"type": "string"}}, "required": ["marker"]},
      timeout_ms=20_000)
async def hold_once(ctx: ToolContext, marker: str) -> dict[str, Any]:
    """Test tool: the first worker to get it writes its pid to ``marker`` and hangs (to be killed mid-request,
    inside its open transaction); any later run answers with the serving pid."""
    ctx.session.add(Customer(name="held", phone=None))
    await ctx.session.flush()  # the transaction (and SQLite's write lock) is open while we hang
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return {"served_by": os.getpid()}
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    await asyncio.sleep(3600)
    return {"served_by": os.getpid()}


@tool(parameters={"type": "object", "properties": {"seconds": {"type": "number"}}, "required": ["seconds"]})
async def slow_write(ctx: ToolContext, seconds: float) -> dict[str, Any]:
    """Test tool: write a customer row, then take ``seconds`` (to test deadlines and rollback)."""
    ctx.session.add(Customer(name=f"slow {Path(ctx.tool).name}", phone=None))
    await ctx.session.flush()
    await asyncio.sleep(seconds)
    return {"done": True}
