"""Helpers for the tool-worker integration tests: databases, dates, row counts and test-only tools.

Not a test module. ``hold_once`` is served by subprocess workers in the fail-over test (via
``SWITCHBOARD_TOOL_MODULES=services.tools.receptionist,tests.integration.tools_support``), started with
:func:`start_workers` and awaited with :func:`wait_for_workers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from services.tools.db import Database
from services.tools.framework import ToolContext, tool
from services.tools.models import Appointment, Customer, StoredResult
from services.tools.settings import ToolsSettings
from shared.bus import Bus

__all__ = ["ROOT", "counts", "day", "hold_once", "slow_write", "stall_write", "start_workers", "stop_workers",
           "wait_for_workers"]

ROOT = Path(__file__).resolve().parents[2]


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


@tool(parameters={"type": "object", "properties": {"seconds": {"type": "number"}}, "required": ["seconds"]})
async def stall_write(ctx: ToolContext, seconds: float) -> dict[str, Any]:
    """Test tool: write a customer row, then block the whole process for ``seconds`` without yielding to the
    event loop (``time.sleep``: what a SIGSTOP or a blocked loop looks like to the tool's own task)."""
    ctx.session.add(Customer(name="stalled", phone=None))
    await ctx.session.flush()
    time.sleep(seconds)  # noqa: ASYNC251 — the point: the event loop cannot run (nor cancel) meanwhile
    return {"done": True}


def start_workers(n: int, nats_url: str, database_url: str, tmp_path: Path) -> list[subprocess.Popen[bytes]]:
    """Start ``n`` ``python -m services.tools`` subprocesses serving the receptionist tools and this module's;
    worker ``i`` logs to ``tmp_path / f"worker{i}.log"``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({
        "SWITCHBOARD_NATS_URL": nats_url,
        "SWITCHBOARD_DATABASE_URL": database_url,
        "SWITCHBOARD_DATA_DIR": str(tmp_path / "data"),
        "SWITCHBOARD_TOOL_MODULES": "services.tools.receptionist,tests.integration.tools_support",
        "SWITCHBOARD_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    })
    procs = []
    for i in range(n):
        log = (tmp_path / f"worker{i}.log").open("wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "services.tools"], cwd=ROOT, env=env,
                                      stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGCONT (in case a test left one stopped), SIGTERM, then SIGKILL after 15 s."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def instances(bus: Bus, endpoint: str) -> dict[str, dict[str, Any]]:
    """``$SRV.INFO.switchboard-tools`` answers within 0.5 s (by instance id) that list ``endpoint``."""
    inbox = bus.nc.new_inbox()
    found: dict[str, dict[str, Any]] = {}
    sub = await bus.nc.subscribe(inbox)
    await bus.nc.publish("$SRV.INFO.switchboard-tools", b"", reply=inbox)
    deadline = time.monotonic() + 0.5
    with contextlib.suppress(TimeoutError):
        while (left := deadline - time.monotonic()) > 0:
            msg = await sub.next_msg(timeout=left)
            if not msg.data:  # a "no responders" status: no worker up yet
                continue
            info = json.loads(msg.data)
            if any(e.get("name") == endpoint for e in info.get("endpoints") or []):
                found[info["id"]] = info
    await sub.unsubscribe()
    return found


async def wait_for_workers(bus: Bus, procs: list[subprocess.Popen[bytes]], tmp_path: Path,
                           endpoint: str = "hold_once", give_up_s: float = 90) -> None:
    """Wait until every worker of ``procs`` serves ``endpoint``.

    Raises:
        AssertionError: a worker exited, or not all were serving after ``give_up_s`` (with the workers' logs).
    """
    give_up = time.monotonic() + give_up_s
    while True:
        logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(len(procs))]
        assert all(p.poll() is None for p in procs), logs
        if len(await instances(bus, endpoint)) >= len(procs):
            return
        assert time.monotonic() < give_up, logs
