"""Tool workers on the bus: nats.micro endpoints in a queue group, the registry, error headers, control
replies, idempotent retries, races across workers and the ``execute_tool`` span — real nats-server, real
SQLite/PostgreSQL, in-process workers each with its own NATS connection and database engine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.tools.client import RetryPolicy, call_tool
from services.tools.db import Database
from services.tools.settings import ToolsSettings
from services.tools.worker import ToolWorker, load_tools
from shared import subjects, tool_registry
from shared.bus import Bus, Headers
from shared.contracts import CallInfo, ToolRequest, ToolResult
from shared.errors import ServiceCallError
from shared.telemetry import setup_telemetry
from shared.tool_registry import ToolSpec
from switchboard import natsserver
from tests.integration.tools_support import counts, day, slow_write

CALLER = CallInfo("call-bus", "+15551230001", "+15559870000", "receptionist")


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server for this module only (no other test's tool workers in the queue group)."""
    server = natsserver.start(tmp_path_factory.mktemp("tools-nats"))
    yield server.url
    server.stop()


@dataclass
class Served:
    caller: Bus
    workers: list[ToolWorker]
    database: Database
    specs: dict[str, ToolSpec]


@pytest.fixture
async def served(own_nats: str, database_url: str) -> AsyncIterator[Served]:
    """Two workers (own bus connection and engine each) serving the receptionist tools plus ``slow_write``."""
    stack: list[Any] = []
    tools = [*load_tools(["services.tools.receptionist"]), slow_write]
    workers = []
    first_db: Database | None = None
    for i in range(2):
        db = Database(database_url)
        await db.migrate()
        first_db = first_db or db
        bus = await Bus.connect(own_nats, name=f"test-tools-{i}", source="tools")
        service = await bus.add_service("switchboard-tools")
        worker = ToolWorker(tools, database=db, settings=ToolsSettings())
        await worker.register(bus, service)
        workers.append(worker)
        stack.append((bus, service, db))
    caller = await Bus.connect(own_nats, name="test-caller", source="session")
    specs = await tool_registry.load(caller.js)
    assert first_db is not None
    yield Served(caller, workers, first_db, specs)
    await caller.close()
    for bus, service, db in stack:
        await service.stop()
        await bus.close()
        await db.dispose()


async def _call(s: Served, name: str, args: dict[str, Any], tool_call_id: str | None = None,
                deadline_ms: float | None = None) -> ToolResult:
    return await call_tool(s.caller, s.specs[name], ToolRequest(args, tool_call_id, CALLER, deadline_ms))


async def test_registry_holds_every_tool(served: Served) -> None:
    assert {"lookup_customer", "check_availability", "book_appointment", "cancel_appointment", "end_call",
            "transfer_to_human", "slow_write"} <= set(served.specs)
    end = served.specs["end_call"]
    assert end.control and end.timeout_ms == 2000
    book = served.specs["book_appointment"].realtime_tool()
    assert book["type"] == "function" and "phone" not in book["parameters"]["required"]


async def test_book_then_retry_returns_first_result(served: Served) -> None:
    args = {"name": "John Smith", "date": day(1), "time": "10:00"}
    first = await _call(served, "book_appointment", args, "call_bus_1")
    assert first.output["status"] == "booked" and first.output["time"] == "10:00"
    assert first.output["phone"] == "+15551230001"  # caller ID as the default phone
    for _ in range(3):
        assert await _call(served, "book_appointment", args, "call_bus_1") == first
    assert (await counts(served.database))["booked"] == 1


async def test_racing_requests_across_workers_book_once(served: Served) -> None:
    outcomes = await asyncio.gather(*(
        _call(served, "book_appointment", {"name": f"Racer {i}", "date": day(2), "time": "09:00",
                                           "phone": f"+1555999{i:04d}"}, f"race_bus_{i}")
        for i in range(8)), return_exceptions=True)
    booked = [o for o in outcomes if isinstance(o, ToolResult)]
    assert len(booked) == 1, outcomes
    assert all(isinstance(o, ServiceCallError) and o.code == 409 for o in outcomes if o not in booked)
    assert (await counts(served.database))["booked"] == 1


@pytest.mark.parametrize("name, args, code, fragment", [
    ("book_appointment", {"name": "Ann", "date": "next week", "time": "10:00"}, 400, "date next week is not valid"),
    ("book_appointment", {"date": "2030-01-01", "time": "10:00"}, 400, "I still need the name."),
    ("lookup_customer", {"phone": "+15550000001"}, 404, "could not find a customer"),
    ("cancel_appointment", {"appointment_id": 424242}, 404, "could not find appointment number 424242"),
])
async def test_errors_cross_as_service_error_headers(served: Served, name: str, args: dict[str, Any], code: int,
                                                     fragment: str) -> None:
    before = await counts(served.database)
    with pytest.raises(ServiceCallError) as info:
        await _call(served, name, args, f"err_{name}")
    assert info.value.code == code
    assert fragment in info.value.message
    assert await counts(served.database) == before


async def test_raw_error_headers_and_malformed_request(served: Served) -> None:
    msg = await served.caller.nc.request(subjects.tool("check_availability"), b"{not json", timeout=10)
    assert msg.headers is not None
    assert msg.headers[Headers.SERVICE_ERROR_CODE] == "400"
    assert msg.headers[Headers.SERVICE_ERROR] == "The tool request was not valid JSON."
    ok = await served.caller.nc.request(subjects.tool("check_availability"),
                                        json.dumps({"arguments": {"date": day(3)}}).encode(), timeout=10)
    assert not (ok.headers or {}).get(Headers.SERVICE_ERROR_CODE)
    assert json.loads(ok.data)["output"]["available_times"][0] == "09:00"


async def test_conflict_is_409(served: Served) -> None:
    await _call(served, "book_appointment", {"name": "Ann", "date": day(4), "time": "16:00",
                                             "phone": "+15557771111"}, "c409_a")
    with pytest.raises(ServiceCallError) as info:
        await _call(served, "book_appointment", {"name": "Bob", "date": day(4), "time": "16:00",
                                                 "phone": "+15557772222"}, "c409_b")
    assert info.value.code == 409 and "already taken" in info.value.message


async def test_control_replies(served: Served) -> None:
    bye = await _call(served, "end_call", {"reason": "caller said goodbye"}, "ctl_1")
    assert bye.control == {"verb": "hangup", "reason": "caller said goodbye"}
    transfer = await _call(served, "transfer_to_human", {}, "ctl_2")
    assert transfer.control is not None and transfer.control["verb"] == "transfer"
    assert transfer.control["to"] == ToolsSettings().transfer_number


async def test_deadline_is_honoured_as_504(served: Served) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ServiceCallError) as info:
        await _call(served, "slow_write", {"seconds": 30}, "slow_bus", deadline_ms=600)
    assert info.value.code == 504
    assert loop.time() - started < 10  # bounded by the deadline, not by the tool's 30 s


async def test_no_worker_is_503_after_retrying_within_deadline(served: Served) -> None:
    spec = ToolSpec(name="nobody_serves_this", description="x", timeout_ms=400)
    with pytest.raises(ServiceCallError) as info:
        await call_tool(served.caller, spec, ToolRequest({}, "nobody_1", CALLER),
                        policy=RetryPolicy(backoff_ms=20))
    assert info.value.code == 503


async def test_no_worker_is_503_for_many_callers_at_once(served: Served) -> None:
    """Many callers retrying at once slow each no-responders round trip; none may end in a 504 (the last retry
    must not be a sliver of budget that times out before nats-server's 503 comes back). The budget leaves the
    first attempt's 503 time to come back on a loaded machine: only the first attempt can end in a 504."""
    spec = ToolSpec(name="nobody_serves_this", description="x", timeout_ms=1500)
    policy = RetryPolicy(backoff_ms=5)

    async def one(i: int) -> int:
        try:
            await call_tool(served.caller, spec, ToolRequest({}, f"nobody_many_{i}", CALLER), policy=policy)
        except ServiceCallError as exc:
            return exc.code
        return 200

    for _ in range(3):
        codes = await asyncio.gather(*(one(i) for i in range(40)))
        assert set(codes) == {503}, sorted(codes)


async def test_worker_that_subscribes_late_is_reached_by_503_retries(served: Served, own_nats: str) -> None:
    """A worker whose endpoints appear 1.5 s into a 5 s call (start-up, migrations) still serves it: retries
    after 503 continue for the whole budget, not a fixed number of attempts."""
    spec = ToolSpec(name="late_worker_tool", description="x", timeout_ms=5000)
    late = await Bus.connect(own_nats, name="late-worker", source="tools")

    async def answer(msg: Any) -> None:
        await msg.respond(json.dumps({"output": {"late": True}}).encode())

    async def subscribe_later() -> None:
        await asyncio.sleep(1.5)
        await late.nc.subscribe(subjects.tool(spec.name), queue="tools", cb=answer)
        await late.nc.flush()

    try:
        subscriber = asyncio.create_task(subscribe_later())
        result = await call_tool(served.caller, spec, ToolRequest({}, "late_1", CALLER))
        await subscriber
        assert result.output == {"late": True}
    finally:
        await late.close()


async def test_execute_tool_span(served: Served) -> None:
    telemetry = setup_telemetry("switchboard-tests")
    exporter = InMemorySpanExporter()
    telemetry.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        await _call(served, "check_availability", {"date": day(5)}, "call_span_1")
        spans: list[ReadableSpan] = []
        for _ in range(100):
            spans = [s for s in exporter.get_finished_spans() if s.name == "execute_tool check_availability"]
            if spans:
                break
            await asyncio.sleep(0.05)
        assert spans, [s.name for s in exporter.get_finished_spans()]
        tool = spans[0]
        assert tool.kind == SpanKind.INTERNAL  # GenAI conventions: execute_tool is INTERNAL
        attrs = dict(tool.attributes or {})
        assert attrs["gen_ai.operation.name"] == "execute_tool"
        assert attrs["gen_ai.tool.name"] == "check_availability"
        assert attrs["gen_ai.tool.type"] == "function"
        assert attrs["gen_ai.tool.call.id"] == "call_span_1"
        assert attrs["switchboard.call_id"] == "call-bus"
        finished = exporter.get_finished_spans()
        server = next(s for s in finished if tool.parent is not None and s.context.span_id == tool.parent.span_id)
        assert server.kind == SpanKind.SERVER and server.name == "process tools.check_availability"
        clients = [s for s in finished
                   if s.kind == SpanKind.CLIENT and s.context.trace_id == server.context.trace_id]
        assert server.parent is not None and server.parent.span_id in {c.context.span_id for c in clients}
    finally:
        exporter.shutdown()

