"""Tool workers as real subprocesses (``python -m services.tools``) on a module-private nats-server, against SQLite
and PostgreSQL (several workers migrate and seed the same fresh database at once):

- a worker killed (SIGKILL) mid-request: the caller's retry, with the same ``tool_call_id``, is served by another
  worker within the request's deadline, and the killed worker's open transaction leaves nothing behind;
- a worker stalled (SIGSTOP) with ``book_appointment`` in flight and resumed after the deadline books nothing;
- one stalled and one healthy worker: every call succeeds within its deadline (call_tool's hedged attempts).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from services.tools.client import call_tool
from services.tools.db import Database
from services.tools.models import Appointment, Customer, StoredResult
from shared import tool_registry
from shared.bus import Bus
from shared.contracts import CallInfo, ToolRequest, ToolResult
from shared.errors import ServiceCallError
from switchboard import natsserver
from tests.integration.tools_support import counts, day, start_workers, stop_workers, wait_for_workers

CALLER = CallInfo("call-failover", "+15551230001", "+15559870000", "receptionist")


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server for this module only."""
    server = natsserver.start(tmp_path_factory.mktemp("failover-nats"))
    yield server.url
    server.stop()


@pytest.fixture
def workers(own_nats: str, database_url: str, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two ``python -m services.tools`` subprocesses serving the receptionist tools and ``hold_once``."""
    procs = start_workers(2, own_nats, database_url, tmp_path)
    yield procs
    stop_workers(procs)


async def test_killed_worker_request_is_served_by_another_within_deadline(
        own_nats: str, database_url: str, tmp_path: Path, workers: list[subprocess.Popen[bytes]]) -> None:
    caller = await Bus.connect(own_nats, name="failover-caller", source="session")
    database = Database(database_url)
    try:
        await wait_for_workers(caller, workers, tmp_path)
        specs = await tool_registry.load(caller.js)
        # both workers migrated and seeded the same fresh database at once: exactly one seed
        seeded = await counts(database)
        assert seeded["customers"] == 4 and seeded["booked"] == 1

        marker = tmp_path / "held.pid"
        deadline_ms = 6000
        started = time.monotonic()
        call = asyncio.create_task(call_tool(caller, specs["hold_once"],
                                             ToolRequest({"marker": str(marker)}, "call_hold_1", CALLER, deadline_ms)))
        while not marker.exists() or not marker.read_text():
            assert time.monotonic() - started < deadline_ms / 1000, "no worker picked up the request"
            await asyncio.sleep(0.02)
        held_by = int(marker.read_text())
        assert held_by in {p.pid for p in workers}
        os.kill(held_by, signal.SIGKILL)

        result = await call
        elapsed = time.monotonic() - started
        survivor = next(p.pid for p in workers if p.pid != held_by)
        assert result.output == {"served_by": survivor}
        assert elapsed < deadline_ms / 1000
        # the killed worker's transaction (claim + its "held" row) was rolled back; the survivor's committed
        async with database.sessions() as session:
            held_rows = (await session.execute(
                select(func.count()).select_from(Customer).where(Customer.name == "held"))).scalar_one()
        assert held_rows == 1
        # a further retry of the same call returns the stored first result
        again = await call_tool(caller, specs["hold_once"], ToolRequest({"marker": str(marker)}, "call_hold_1",
                                                                        CALLER, deadline_ms))
        assert again == result
        # and the survivor keeps serving the domain tools
        booked = await call_tool(caller, specs["book_appointment"],
                                 ToolRequest({"name": "John Smith", "date": day(1), "time": "10:00"}, "call_after",
                                             CALLER, deadline_ms))
        assert booked.output["status"] == "booked"
    finally:
        await caller.close()
        await database.dispose()


async def _booked_by(database: Database, tool_call_ids: list[str]) -> dict[str, int]:
    """Per ``tool_call_id``: stored results (0 or 1)."""
    async with database.sessions() as session:
        rows = (await session.execute(select(StoredResult.tool_call_id).where(
            StoredResult.tool_call_id.in_(tool_call_ids)))).scalars().all()
    return {t: list(rows).count(t) for t in tool_call_ids}


async def _appointments_at(database: Database, date: str, time_: str) -> int:
    async with database.sessions() as session:
        return int((await session.execute(select(func.count()).select_from(Appointment).where(
            Appointment.slot_date == dt.date.fromisoformat(date),
            Appointment.slot_time == dt.time.fromisoformat(time_)))).scalar_one())


@asynccontextmanager
async def _hold_write_lock(database: Database) -> AsyncIterator[None]:
    """Block the worker's claim: SQLite's write lock (``BEGIN IMMEDIATE``), PostgreSQL's lock on ``tool_results``."""
    async with database.engine.begin() as conn:
        if database.is_sqlite:
            await conn.execute(text("SELECT 1"))  # the begin event issued BEGIN IMMEDIATE
        else:
            await conn.execute(text("LOCK TABLE tool_results IN EXCLUSIVE MODE"))
        yield


@pytest.mark.parametrize("stalled", ["before_reading", "inside_its_transaction"])
async def test_worker_stalled_past_the_deadline_books_nothing(
        own_nats: str, database_url: str, tmp_path: Path, stalled: str) -> None:
    procs = start_workers(1, own_nats, database_url, tmp_path)
    caller = await Bus.connect(own_nats, name="stall-caller", source="session")
    database = Database(database_url)
    try:
        await wait_for_workers(caller, procs, tmp_path)
        specs = await tool_registry.load(caller.js)
        worker = procs[0]
        date = day(3)
        request = ToolRequest({"name": "Stalled Sam", "date": date, "time": "11:00", "phone": "+15550004321"},
                              "stall_book_1", CALLER, 1500)
        if stalled == "before_reading":
            os.kill(worker.pid, signal.SIGSTOP)
            with pytest.raises(ServiceCallError) as info:
                await call_tool(caller, specs["book_appointment"], request)
        else:
            async with _hold_write_lock(database):
                call = asyncio.create_task(call_tool(caller, specs["book_appointment"], request))
                await asyncio.sleep(0.5)  # the worker has read the request and waits for the lock
                os.kill(worker.pid, signal.SIGSTOP)
            with pytest.raises(ServiceCallError) as info:
                await call
        assert info.value.code == 504  # the caller was told it failed...
        os.kill(worker.pid, signal.SIGCONT)
        # ...so when the worker resumes it must not book. One endpoint handles its requests in order: once a
        # later booking is answered, every attempt of the stalled one has been handled.
        later = await call_tool(caller, specs["book_appointment"], ToolRequest(
            {"name": "Later Liz", "date": date, "time": "12:00", "phone": "+15550004322"}, "stall_book_2", CALLER,
            5000))
        assert later.output["status"] == "booked"
        assert await _appointments_at(database, date, "11:00") == 0
        assert await _booked_by(database, ["stall_book_1", "stall_book_2"]) == {"stall_book_1": 0,
                                                                                "stall_book_2": 1}
        assert "answered 504" in (tmp_path / "worker0.log").read_text()  # refused or rolled back, and said so
    finally:
        stop_workers(procs)
        await caller.close()
        await database.dispose()


async def test_one_stalled_one_healthy_worker_every_call_succeeds(
        own_nats: str, tmp_path: Path, database: Database, workers: list[subprocess.Popen[bytes]]) -> None:
    caller = await Bus.connect(own_nats, name="hedge-caller", source="session")
    try:
        await wait_for_workers(caller, workers, tmp_path)
        specs = await tool_registry.load(caller.js)
        stalled = workers[0]
        os.kill(stalled.pid, signal.SIGSTOP)
        date = day(4)
        ids = [f"hedge_book_{i}" for i in range(6)]
        outcomes = await asyncio.gather(*(call_tool(caller, specs["book_appointment"], ToolRequest(
            {"name": f"Hedge {i}", "date": date, "time": f"{9 + i:02d}:00", "phone": f"+155500055{i:02d}"},
            ids[i], CALLER, 5000)) for i in range(6)), return_exceptions=True)
        assert all(isinstance(o, ToolResult) and o.output["status"] == "booked" for o in outcomes), outcomes
        os.kill(stalled.pid, signal.SIGCONT)
        # the resumed worker finds its attempts answered already (stored results) or past their deadline
        later = await call_tool(caller, specs["lookup_customer"], ToolRequest({"phone": "+15550005500"}, None,
                                                                             CALLER, 5000))
        assert later.output["name"] == "Hedge 0"
        assert all(p.poll() is None for p in workers)
        assert await _booked_by(database, ids) == dict.fromkeys(ids, 1)
        for i in range(6):
            assert await _appointments_at(database, date, f"{9 + i:02d}:00") == 1
    finally:
        await caller.close()


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    yield db
    await db.dispose()
