"""Deadlines that bind (issue 20, item 5), in-process: a request whose ``Switchboard-Deadline`` has passed when
the worker reads it is refused without running the tool; a tool whose process stalled past the deadline
(blocking, so the event loop could not cancel it) commits nothing. Real nats-server, real SQLite/PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from services.tools.db import Database
from services.tools.framework import DeadlineExceeded, ToolContext, tool
from services.tools.settings import ToolsSettings
from services.tools.worker import ToolWorker, load_tools
from shared import subjects
from shared.bus import Bus, Headers
from shared.contracts import CallInfo, ToolRequest, ToolResult
from shared.errors import ServiceCallError
from switchboard import natsserver
from tests.integration.tools_support import counts, day, stall_write

CALLER = CallInfo("call-deadline", "+15551230001", "+15559870000", "receptionist")
RUNS: list[str] = []


@tool(parameters={"type": "object", "properties": {"tag": {"type": "string"}}})
async def count_runs(ctx: ToolContext, tag: str = "") -> dict[str, Any]:
    """Test tool: record that it ran."""
    RUNS.append(tag)
    return {"ran": tag}


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server for this module only (its tools stay out of the shared server's registry)."""
    server = natsserver.start(tmp_path_factory.mktemp("deadline-nats"))
    yield server.url
    server.stop()


@pytest.fixture
async def bus(own_nats: str) -> AsyncIterator[Bus]:
    connected = await Bus.connect(own_nats, name="test-deadline", source="tools")
    yield connected
    await connected.close()


@pytest.fixture
async def worker(database_url: str) -> AsyncIterator[ToolWorker]:
    database = Database(database_url)
    await database.migrate()
    RUNS.clear()
    yield ToolWorker([*load_tools(["services.tools.receptionist"]), stall_write, count_runs], database=database,
                     settings=ToolsSettings())
    await database.dispose()


def past_ms(seconds: float) -> float:
    """The unix time in ms ``seconds`` ago."""
    return time.time() * 1000 - seconds * 1000


async def test_expired_on_arrival_is_refused_without_running(bus: Bus, worker: ToolWorker) -> None:
    service = await bus.add_service("switchboard-tools")
    try:
        await worker.register(bus, service)
        # a raw request (call_tool cannot send a deadline that has passed): a generous relative budget in the
        # body, while the header's absolute deadline binds
        body = ToolRequest({"tag": "late"}, "late_1", CALLER, 5000).encode()
        with pytest.raises(ServiceCallError) as info:
            await bus.request(subjects.tool("count_runs"), body, timeout=5,
                              headers={Headers.DEADLINE: str(int(past_ms(1)))})
        assert info.value.code == 504
        book = ToolRequest({"name": "Late Larry", "date": day(5), "time": "11:00", "phone": "+15550001234"},
                           "late_book", CALLER, 5000).encode()
        with pytest.raises(ServiceCallError) as info:
            await bus.request(subjects.tool("book_appointment"), book, timeout=5,
                              headers={Headers.DEADLINE: str(int(past_ms(0.01)))})
        assert info.value.code == 504
        # the same requests inside their deadline do run: the refusal was the deadline, nothing else
        ok = await bus.request(subjects.tool("count_runs"), body, timeout=5,
                               headers={Headers.DEADLINE: str(int(past_ms(-5)))})
        assert ToolResult.parse(ok.data) == ToolResult({"ran": "late"})
    finally:
        await service.stop()
    assert RUNS == ["late"]
    assert (await counts(worker.database))["appointments"] == 0


async def test_relative_deadline_still_binds(worker: ToolWorker) -> None:
    read_at = time.monotonic() - 1.0  # read a second ago with a 500 ms budget: already due
    with pytest.raises(DeadlineExceeded):
        await worker.execute(worker.tools["count_runs"], ToolRequest({"tag": "x"}, None, CALLER, 500),
                             received=read_at)
    assert RUNS == []


@pytest.mark.parametrize("tool_call_id", [None, "stall_1"], ids=["unstored", "idempotent"])
async def test_stalled_past_the_deadline_commits_nothing(worker: ToolWorker, tool_call_id: str | None) -> None:
    # the tool blocks the process for 0.6 s with a 0.3 s deadline: no await point lets the loop cancel it, so
    # only the commit-time check stands between its write and the database
    request = ToolRequest({"seconds": 0.6}, tool_call_id, CALLER, 300)
    with pytest.raises(DeadlineExceeded):
        await worker.execute(worker.tools["stall_write"], request)
    assert (await counts(worker.database))["customers"] == 0
    assert (await counts(worker.database))["tool_results"] == 0
    # inside its deadline the same tool commits
    await worker.execute(worker.tools["stall_write"], ToolRequest({"seconds": 0.0}, tool_call_id, CALLER, 5000))
    assert (await counts(worker.database))["customers"] == 1
