"""The durable consumer's crash windows, made deterministic in-process: a batch committed but never acked,
and a batch fetched but never committed. A fresh consumer on the same durable must resume from the
database's committed position so the archive equals an uninterrupted one (same rows, same chain hashes)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.recorder import models, queries
from services.recorder.archive import Archive
from services.recorder.consumer import StreamConsumer
from services.recorder.db import open_database
from services.recorder.records import Incoming
from shared import subjects
from shared.bus import Bus
from switchboard.testing.scripted import publish_call, script


async def start_at_stream_end(bus: Bus, engine: AsyncEngine) -> None:
    """Mark everything already in the RT stream as archived (earlier tests' events), so this test's
    consumers see only its own call."""
    info = await bus.js.stream_info(subjects.RT_STREAM.name)
    async with engine.begin() as conn:
        await conn.execute(models.consumer_positions.insert().values(
            stream=subjects.RT_STREAM.name, last_stream_seq=info.state.last_seq))


async def run_until(consumer: StreamConsumer, archive: Archive, stream_last: int) -> None:
    stopping = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopping))
    try:
        async with asyncio.timeout(30):
            await archive.wait_for_position(subjects.RT_STREAM.name, stream_last)
    finally:
        stopping.set()
        await task


def rows_stmt(call_id: str) -> Any:
    return (select(*[c for c in models.events.c if c.name != "id"]).where(models.events.c.call_id == call_id)
            .order_by(models.events.c.stream_seq))


@pytest.mark.parametrize("crash", ["committed_not_acked", "fetched_not_committed"])
async def test_consumer_resumes_from_the_committed_position(
        buses: tuple[Bus, Bus], database_url: str, tmp_path: Path, unique: str, crash: str) -> None:
    gateway, session = buses
    call_id = f"CAcrash{unique}"
    engine = await open_database(database_url)
    ref_engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'ref.db'}")
    try:
        await start_at_stream_end(gateway, engine)
        await start_at_stream_end(gateway, ref_engine)
        before = (await gateway.js.stream_info(subjects.RT_STREAM.name)).state.last_seq
        rt_steps = sum(1 for s in script(call_id) if s.subject.startswith("rt."))
        await publish_call(gateway, session, call_id, speed=0, steps=script(call_id))
        last = before + rt_steps
        await gateway.flush_acks(30)  # every publish acknowledged: the stream holds the whole call
        await session.flush_acks(30)
        assert (await gateway.js.stream_info(subjects.RT_STREAM.name)).state.last_seq == last

        # the crashed run: fetch one batch through the durable, then die before acking it
        archive = Archive(engine)
        first = StreamConsumer(gateway.nc, archive, subjects.RT_STREAM, durable_prefix=f"crash{unique}", batch=100)
        psub = await first._subscribe()
        msgs = await psub.fetch(100, timeout=5)
        await psub.stop()
        assert len(msgs) == 100
        if crash == "committed_not_acked":
            await archive.persist(subjects.RT_STREAM.name, [Incoming.from_msg(m) for m in msgs])
        # no ack; the process "dies": caches are lost with the Archive object
        restarted_archive = Archive(engine)
        restarted = StreamConsumer(gateway.nc, restarted_archive, subjects.RT_STREAM,
                                   durable_prefix=f"crash{unique}", batch=64)
        await run_until(restarted, restarted_archive, last)

        ref_archive = Archive(ref_engine)
        reference = StreamConsumer(gateway.nc, ref_archive, subjects.RT_STREAM, durable_prefix=f"ref{unique}")
        await run_until(reference, ref_archive, last)

        async with engine.connect() as conn:
            crashed_rows = [tuple(r) for r in (await conn.execute(rows_stmt(call_id))).all()]
        async with ref_engine.connect() as conn:
            reference_rows = [tuple(r) for r in (await conn.execute(rows_stmt(call_id))).all()]
        assert len(crashed_rows) == rt_steps
        assert crashed_rows == reference_rows
        assert (await queries.verify_call(engine, call_id)).ok
        info = await gateway.js.consumer_info(subjects.RT_STREAM.name, f"crash{unique}-rt")
        assert info.ack_floor is not None and info.ack_floor.stream_seq == last
    finally:
        await engine.dispose()
        await ref_engine.dispose()


async def test_a_late_lease_renewal_holds_the_batch_and_archiving_goes_on(
        buses: tuple[Bus, Bus], database_url: str, unique: str) -> None:
    # the guard (the writer lease's valid()) is false for a while — a renewal delayed by a cluster leader
    # election — then true again: the held batch is persisted then and the consumer keeps going
    gateway, session = buses
    call_id = f"CAguard{unique}"
    engine = await open_database(database_url)
    try:
        await start_at_stream_end(gateway, engine)
        before = (await gateway.js.stream_info(subjects.RT_STREAM.name)).state.last_seq
        steps = script(call_id)
        await publish_call(gateway, session, call_id, speed=0, steps=steps)
        await gateway.flush_acks(30)
        await session.flush_acks(30)
        last = before + sum(1 for s in steps if s.subject.startswith("rt."))
        valid = False
        refused = asyncio.Event()

        def guard() -> bool:
            if not valid:
                refused.set()
            return valid

        archive = Archive(engine)
        consumer = StreamConsumer(gateway.nc, archive, subjects.RT_STREAM, durable_prefix=f"guard{unique}",
                                  batch=50, guard=guard)
        stopping = asyncio.Event()
        task = asyncio.create_task(consumer.run(stopping))
        try:
            await asyncio.wait_for(refused.wait(), 30)
            await asyncio.sleep(1.0)
            assert not task.done() and await archive.position(subjects.RT_STREAM.name) == before  # held, unwritten
            valid = True
            async with asyncio.timeout(30):
                await archive.wait_for_position(subjects.RT_STREAM.name, last)
        finally:
            stopping.set()
            await task
        assert not consumer.fenced and (await queries.verify_call(engine, call_id)).ok
    finally:
        await engine.dispose()
