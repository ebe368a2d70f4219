"""A tool worker killed (SIGKILL) mid-request: the caller's retry, with the same ``tool_call_id``, is served by
another worker within the request's deadline, and the killed worker's open transaction leaves nothing behind.

Workers are real subprocesses (``python -m services.tools``) on a module-private nats-server, against SQLite
and PostgreSQL; both migrate and seed the same fresh database at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from services.tools.client import call_tool
from services.tools.db import Database
from services.tools.framework import CallInfo, ToolRequest
from services.tools.models import Customer
from shared import natsserver, tool_registry
from shared.bus import Bus
from tests.integration.tools_support import counts, day

ROOT = Path(__file__).resolve().parents[2]
CALLER = CallInfo("call-failover", "+15551230001", "+15559870000", "receptionist")


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server for this module only."""
    server = natsserver.start(tmp_path_factory.mktemp("failover-nats"))
    yield server.url
    server.stop()


async def _instances(bus: Bus, endpoint: str) -> dict[str, dict[str, Any]]:
    """``$SRV.INFO.switchboard-tools`` answers (by instance id) that list ``endpoint``."""
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


@pytest.fixture
def workers(own_nats: str, database_url: str, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two ``python -m services.tools`` subprocesses serving the receptionist tools and ``hold_once``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({
        "SWITCHBOARD_NATS_URL": own_nats,
        "SWITCHBOARD_DATABASE_URL": database_url,
        "SWITCHBOARD_DATA_DIR": str(tmp_path / "data"),
        "SWITCHBOARD_TOOL_MODULES": "services.tools.receptionist,tests.integration.tools_support",
        "SWITCHBOARD_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    })
    procs = []
    for i in range(2):
        log = (tmp_path / f"worker{i}.log").open("wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "services.tools"], cwd=ROOT, env=env,
                                      stdout=log, stderr=subprocess.STDOUT))
        log.close()
    yield procs
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def test_killed_worker_request_is_served_by_another_within_deadline(
        own_nats: str, database_url: str, tmp_path: Path, workers: list[subprocess.Popen[bytes]]) -> None:
    caller = await Bus.connect(own_nats, name="failover-caller", source="session")
    database = Database(database_url)
    try:
        ready: dict[str, dict[str, Any]] = {}
        give_up = time.monotonic() + 90
        while len(ready) < 2:
            assert time.monotonic() < give_up, [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
            assert all(p.poll() is None for p in workers), [(tmp_path / f"worker{i}.log").read_text()
                                                           for i in range(2)]
            ready = await _instances(caller, "hold_once")
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
