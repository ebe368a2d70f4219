"""Tool workers on a real database (SQLite and PostgreSQL): migrations, seed, races, validation before side
effects, idempotent retries and deadlines — through :meth:`ToolWorker.execute`, no bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import inspect, text

from services.tools.db import VERSION_TABLE, Database
from services.tools.seed import CANCEL_CUSTOMER, seed
from services.tools.settings import ToolsSettings
from services.tools.worker import ToolWorker, load_tools
from shared.contracts import CallInfo, ToolRequest, ToolResult
from shared.errors import ServiceCallError
from tests.integration.tools_support import counts, day, slow_write

MODULES = ["services.tools.receptionist"]
CALLER = CallInfo("call-test", "+15551230001", "+15559870000", "receptionist")


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    await db.migrate()
    yield db
    await db.dispose()


def _worker(database: Database) -> ToolWorker:
    return ToolWorker([*load_tools(MODULES), slow_write], database=database, settings=ToolsSettings())


async def _run(worker: ToolWorker, name: str, args: dict[str, Any], tool_call_id: str | None = None,
               call: CallInfo = CALLER, deadline_ms: float = 10_000) -> ToolResult:
    return await worker.execute(worker.tools[name], ToolRequest(args, tool_call_id, call, deadline_ms))


async def test_migrations_create_tables_with_own_version_table_and_rerun(database_url: str) -> None:
    db = Database(database_url)
    try:
        await asyncio.gather(db.migrate(), db.migrate())  # two workers starting together
        await db.migrate()
        async with db.engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            version = (await conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))).scalar_one()
        assert {"customers", "appointments", "tool_results", VERSION_TABLE} <= tables
        assert "alembic_version" not in tables
        assert version == "0001"
    finally:
        await db.dispose()


async def test_seed_is_idempotent_and_gives_john_one_upcoming_appointment(database: Database) -> None:
    first, second = await asyncio.gather(seed(database), seed(database))
    third = await seed(database)
    assert first.customers_added + second.customers_added == 4
    assert third.customers_added == 0 and third.customers_total == 4
    assert third.appointment is not None and not third.appointment_created
    assert (await counts(database))["booked"] == 1
    worker = _worker(database)
    found = await _run(worker, "lookup_customer", {})
    assert found.output["name"] == "John Smith"
    assert [a["time"] for a in found.output["upcoming_appointments"]] == ["15:00"]
    assert found.output["upcoming_appointments"][0]["date"] == day(1)
    cancelled = await _run(worker, "cancel_appointment", {"date": day(1)}, "call_cancel")
    assert cancelled.output["status"] == "cancelled" and cancelled.output["time"] == "15:00"
    assert (await counts(database))["booked"] == 0


async def test_two_workers_racing_for_one_slot_book_exactly_once(database_url: str, database: Database) -> None:
    other_db = Database(database_url)  # a second worker: its own engine and connections
    try:
        workers = [_worker(database), _worker(other_db)]
        for round_, offset in enumerate(range(2, 6)):
            outcomes = await asyncio.gather(*(
                _run(w, "book_appointment", {"name": f"Racer {round_}-{i}", "date": day(offset), "time": "11:00",
                                             "phone": f"+1555000{round_}{i:03d}"}, f"race-{round_}-{i}")
                for i, w in enumerate(workers * 2)), return_exceptions=True)
            booked = [o for o in outcomes if isinstance(o, ToolResult)]
            refused = [o for o in outcomes if isinstance(o, ServiceCallError)]
            assert len(booked) == 1, outcomes
            assert len(refused) == 3 and {e.code for e in refused} == {409}, outcomes
            assert "taken" in refused[0].message
        c = await counts(database)
        assert c["booked"] == 4 and c["appointments"] == 4 and c["tool_results"] == 4
    finally:
        await other_db.dispose()


@pytest.mark.parametrize("name, args", [
    ("book_appointment", {"date": "tomorrow", "time": "10:00", "name": "Ann"}),
    ("book_appointment", {"date": "2030-01-01", "time": "10:00"}),
    ("book_appointment", {"date": "2030-01-01", "time": "25:00", "name": "Ann"}),
    ("book_appointment", {"date": "2000-01-01", "time": "10:00", "name": "Ann"}),
    ("book_appointment", {"date": "2030-01-01", "time": "10:00", "name": "Ann", "phone": "call me"}),
    ("cancel_appointment", {"appointment_id": "seven"}),
    ("check_availability", {}),
])
async def test_invalid_arguments_write_nothing(database: Database, name: str, args: dict[str, Any]) -> None:
    worker = _worker(database)
    before = await counts(database)
    with pytest.raises(ServiceCallError) as info:
        await _run(worker, name, args, "bad-1")
    assert info.value.code == 400
    assert "Traceback" not in info.value.message and info.value.message.endswith((".", "?"))
    assert await counts(database) == before


async def test_retry_with_same_tool_call_id_returns_first_result(database: Database) -> None:
    worker = _worker(database)
    args = {"name": "Ann Lee", "date": day(3), "time": "09:00", "phone": "+15557770001"}
    first = await _run(worker, "book_appointment", args, "call_retry")
    assert first.output["status"] == "booked" and "already_booked" not in first.output
    again = await _run(worker, "book_appointment", args, "call_retry")
    assert again == first
    # even with different arguments, the same tool_call_id is the same call: the first result stands
    changed = await _run(worker, "book_appointment", {**args, "time": "12:00"}, "call_retry")
    assert changed == first
    concurrent = await asyncio.gather(*(_run(worker, "book_appointment", {**args, "time": "13:00"}, "call_dup")
                                        for _ in range(4)))
    assert all(r == concurrent[0] for r in concurrent)
    c = await counts(database)
    assert c["booked"] == 2 and c["tool_results"] == 2


async def test_conflict_and_not_found_are_not_stored(database: Database) -> None:
    worker = _worker(database)
    await _run(worker, "book_appointment", {"name": "Ann", "date": day(4), "time": "10:00",
                                            "phone": "+15557770002"}, "first")
    with pytest.raises(ServiceCallError) as info:
        await _run(worker, "book_appointment", {"name": "Bob", "date": day(4), "time": "10:00",
                                                "phone": "+15557770003"}, "second")
    assert info.value.code == 409 and "Free times that day: 09:00, 11:00, 12:00" in info.value.message
    with pytest.raises(ServiceCallError) as info:
        await _run(worker, "lookup_customer", {"phone": "+15550000000"})
    assert info.value.code == 404
    with pytest.raises(ServiceCallError) as info:
        await _run(worker, "cancel_appointment", {"appointment_id": 999}, "c-404")
    assert info.value.code == 404
    assert (await counts(database))["tool_results"] == 1


async def test_same_person_asking_again_is_not_a_second_booking(database: Database) -> None:
    worker = _worker(database)
    args = {"name": "John Smith", "date": day(1), "time": "10:00"}
    first = await _run(worker, "book_appointment", args, "demo-run-1")
    second = await _run(worker, "book_appointment", {**args, "name": "john smith"}, "demo-run-2")
    assert second.output["appointment_id"] == first.output["appointment_id"]
    assert second.output["already_booked"] is True
    assert (await counts(database))["booked"] == 1


async def test_phone_defaults_to_caller_id(database: Database) -> None:
    worker = _worker(database)
    booked = await _run(worker, "book_appointment", {"name": "Mary Jones", "date": day(2), "time": "14:00"},
                        "p1", call=CallInfo("c2", "+1 555 123 0002"))
    assert booked.output["phone"] == "+15551230002"
    found = await _run(worker, "lookup_customer", {}, call=CallInfo("c3", "+15551230002"))
    assert found.output["upcoming_appointments"][0]["appointment_id"] == booked.output["appointment_id"]
    with pytest.raises(ServiceCallError) as info:
        await _run(worker, "lookup_customer", {}, call=CallInfo("c4", "client:browser"))
    assert info.value.code == 400 and "phone number" in info.value.message
    # someone else cannot cancel it by number
    with pytest.raises(ServiceCallError) as info:
        await _run(worker, "cancel_appointment", {"appointment_id": booked.output["appointment_id"]}, "x",
                   call=CallInfo("c5", CANCEL_CUSTOMER))
    assert info.value.code == 404
    done = await _run(worker, "cancel_appointment", {"appointment_id": booked.output["appointment_id"]}, "y",
                      call=CallInfo("c6", "+15551230002"))
    assert done.output["status"] == "cancelled"
    with pytest.raises(ServiceCallError) as info:
        await _run(worker, "cancel_appointment", {"appointment_id": booked.output["appointment_id"]}, "z",
                   call=CallInfo("c6", "+15551230002"))
    assert info.value.code == 409 and "already cancelled" in info.value.message


async def test_availability_excludes_booked_slots(database: Database) -> None:
    worker = _worker(database)
    await _run(worker, "book_appointment", {"name": "Ann", "date": day(5), "time": "09:00",
                                            "phone": "+15557770009"}, "a1")
    free = await _run(worker, "check_availability", {"date": day(5)})
    assert free.output["available_times"] == [f"{h:02d}:00" for h in range(10, 17)]


async def test_deadline_gives_504_and_rolls_back(database: Database) -> None:
    worker = _worker(database)
    before = await counts(database)
    with pytest.raises(ServiceCallError) as info:
        await _run(worker, "slow_write", {"seconds": 5}, "slow-1", deadline_ms=300)
    assert info.value.code == 504
    with pytest.raises(ServiceCallError) as info:
        await _run(worker, "slow_write", {"seconds": 0}, "slow-2", deadline_ms=0)
    assert info.value.code == 504
    assert await counts(database) == before
    ok = await _run(worker, "slow_write", {"seconds": 0}, "slow-3", deadline_ms=5000)
    assert ok.output == {"done": True}
    assert (await counts(database))["customers"] == before["customers"] + 1
