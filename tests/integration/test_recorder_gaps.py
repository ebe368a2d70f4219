"""The recorder never skips what the stream still holds: deliveries lost on the way (a stalled connection)
are re-read and archived; only sequences the stream no longer holds (purged below ``first_seq``) become gap
records, and ``audit verify`` fails naming the range. Calls whose ``ended`` never arrives end as ``lost``.

These tests purge streams, so they run against a private nats-server (module scope), not the shared one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.recorder import models, queries
from services.recorder.archive import Archive
from services.recorder.consumer import StreamConsumer
from services.recorder.db import open_database
from services.recorder.service import Recorder
from shared import subjects
from shared.bus import Bus
from shared.config import load_settings
from switchboard import natsserver
from switchboard.testing.scripted import publish_call, script
from tests.integration.archive_support import drop_guards
from tests.integration.test_recorder_cli import cli


@pytest.fixture(scope="module")
def private_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = natsserver.start(tmp_path_factory.mktemp("nats-gaps"))
    yield server.url
    server.stop()


@pytest.fixture
async def pbuses(private_nats: str) -> AsyncIterator[tuple[Bus, Bus]]:
    gateway = await Bus.connect(private_nats, name="gaps-gateway", source="gateway")
    session = await Bus.connect(private_nats, name="gaps-session", source="session")
    await gateway.ensure_streams(load_settings(js_max_age=3600))
    yield gateway, session
    await gateway.close()
    await session.close()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = await open_database(database_url)
    yield eng
    await eng.dispose()


async def at_stream_end(bus: Bus, engine: AsyncEngine) -> None:
    """Mark everything already in CALLS and RT as archived (earlier tests' events)."""
    async with engine.begin() as conn:
        for spec in (subjects.CALLS_STREAM, subjects.RT_STREAM):
            info = await bus.js.stream_info(spec.name)
            await conn.execute(models.consumer_positions.insert().values(
                stream=spec.name, last_stream_seq=info.state.last_seq))


async def publish(buses: tuple[Bus, Bus], call_id: str, steps: list[Any]) -> int:
    """Publish ``steps`` and wait for every JetStream ack; returns the RT stream's last sequence."""
    await publish_call(*buses, call_id, speed=0, steps=steps)
    for bus in buses:
        await bus.flush_acks(30)
    return int((await buses[0].js.stream_info(subjects.RT_STREAM.name)).state.last_seq)


async def drain(consumer: StreamConsumer, archive: Archive, last: int) -> None:
    stopping = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopping))
    try:
        async with asyncio.timeout(60):
            await archive.wait_for_position(consumer.stream.name, last)
    finally:
        stopping.set()
        await task


def rows_stmt(call_id: str) -> Any:
    return (select(*[c for c in models.events.c if c.name != "id"]).where(models.events.c.call_id == call_id)
            .order_by(models.events.c.stream_seq))


async def test_undelivered_range_still_in_the_stream_is_reread(
        pbuses: tuple[Bus, Bus], engine: AsyncEngine, tmp_path: Path, unique: str) -> None:
    gateway = pbuses[0]
    call_id = f"CAreread{unique}"
    ref_engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'ref.db'}")
    try:
        await at_stream_end(gateway, engine)
        await at_stream_end(gateway, ref_engine)
        before = int((await gateway.js.stream_info(subjects.RT_STREAM.name)).state.last_seq)
        last = await publish(pbuses, call_id, script(call_id))

        archive = Archive(engine)
        consumer = StreamConsumer(gateway.nc, archive, subjects.RT_STREAM, durable_prefix=f"reread{unique}",
                                  batch=64)
        psub = await consumer._subscribe()
        # a stalled connection: the server delivered 100 messages that the recorder never saw (never acked)
        thief = await gateway.js.pull_subscribe_bind(durable=consumer.durable, stream=subjects.RT_STREAM.name)
        lost = await thief.fetch(100, timeout=5)
        await thief.unsubscribe()
        assert [m.metadata.sequence.stream for m in lost] == list(range(before + 1, before + 101))
        stopping = asyncio.Event()
        async with asyncio.timeout(60):
            while await archive.position(subjects.RT_STREAM.name) < last:
                msgs = await consumer._fetch(psub)
                assert msgs is not None
                if msgs:
                    await consumer._handle(msgs, stopping)
        await psub.stop()
        assert consumer.stats.reread == 100 and consumer.stats.gaps == 0

        ref_archive = Archive(ref_engine)
        await drain(StreamConsumer(gateway.nc, ref_archive, subjects.RT_STREAM, durable_prefix=f"rref{unique}"),
                    ref_archive, last)
        async with engine.connect() as conn:
            rows = [tuple(r) for r in (await conn.execute(rows_stmt(call_id))).all()]
            gaps = (await conn.execute(select(models.chain_gaps))).all()
        async with ref_engine.connect() as conn:
            reference = [tuple(r) for r in (await conn.execute(rows_stmt(call_id))).all()]
        assert len(rows) == last - before
        assert rows == reference  # same records, same hashes: nothing skipped, nothing reordered
        assert gaps == []
        assert (await queries.verify_call(engine, call_id)).ok
    finally:
        await ref_engine.dispose()


async def test_a_deleted_message_in_an_undelivered_range_is_the_only_gap(
        pbuses: tuple[Bus, Bus], engine: AsyncEngine, unique: str) -> None:
    gateway = pbuses[0]
    call_id = f"CAdel{unique}"
    await at_stream_end(gateway, engine)
    before = int((await gateway.js.stream_info(subjects.RT_STREAM.name)).state.last_seq)
    steps = [s for s in script(call_id) if s.subject.startswith("rt.")][:30]
    last = await publish(pbuses, call_id, steps)
    archive = Archive(engine)
    consumer = StreamConsumer(gateway.nc, archive, subjects.RT_STREAM, durable_prefix=f"del{unique}", batch=64)
    psub = await consumer._subscribe()
    thief = await gateway.js.pull_subscribe_bind(durable=consumer.durable, stream=subjects.RT_STREAM.name)
    assert len(await thief.fetch(10, timeout=5)) == 10
    await thief.unsubscribe()
    await gateway.js.delete_msg(subjects.RT_STREAM.name, before + 5)
    stopping = asyncio.Event()
    async with asyncio.timeout(60):
        while await archive.position(subjects.RT_STREAM.name) < last:
            msgs = await consumer._fetch(psub)
            assert msgs is not None
            if msgs:
                await consumer._handle(msgs, stopping)
    await psub.stop()
    assert (consumer.stats.reread, consumer.stats.gaps) == (9, 1)
    async with engine.connect() as conn:
        gaps = (await conn.execute(select(models.chain_gaps.c.call_id, models.chain_gaps.c.first_seq,
                                          models.chain_gaps.c.last_seq, models.chain_gaps.c.reason))).all()
        archived = (await conn.execute(select(models.events.c.stream_seq)
                                       .where(models.events.c.call_id == call_id))).scalars().all()
    assert sorted(archived) == [s for s in range(before + 1, last + 1) if s != before + 5]
    assert [tuple(g) for g in gaps] == [(None, before + 5, before + 5, "no longer in the stream (deleted)"),
                                        (call_id, before + 5, before + 5, "no longer in the stream (deleted)")]
    report = await queries.verify_call(engine, call_id)
    assert [(p.kind, p.stream_seq) for p in report.problems] == [("gap", before + 5)]


async def test_purged_range_becomes_a_gap_and_verify_fails_naming_it(
        pbuses: tuple[Bus, Bus], private_nats: str, engine: AsyncEngine, database_url: str, unique: str) -> None:
    gateway = pbuses[0]
    hit, done = f"CAgap{unique}", f"CAdone{unique}"
    await at_stream_end(gateway, engine)
    rt_steps = [s for s in script(hit) if s.subject.startswith("rt.")]
    archive = Archive(engine)

    def consumer() -> StreamConsumer:
        return StreamConsumer(gateway.nc, archive, subjects.RT_STREAM, durable_prefix=f"gap{unique}", batch=64)

    await publish(pbuses, done, script(done))  # a call wholly archived (ended) before the gap
    calls_last = int((await gateway.js.stream_info(subjects.CALLS_STREAM.name)).state.last_seq)
    await drain(StreamConsumer(gateway.nc, archive, subjects.CALLS_STREAM, durable_prefix=f"gap{unique}"),
                archive, calls_last)
    last = await publish(pbuses, hit, rt_steps[:20])
    await drain(consumer(), archive, last)
    position = last
    middle = await publish(pbuses, hit, rt_steps[20:60])
    # the recorder is down; the stream loses the oldest messages (purge below middle - 9)
    await gateway.js.purge_stream(subjects.RT_STREAM.name, seq=middle - 9)
    first_seq = int((await gateway.js.stream_info(subjects.RT_STREAM.name)).state.first_seq)
    assert first_seq == middle - 9
    last = await publish(pbuses, hit, rt_steps[60:])
    await drain(consumer(), archive, last)

    async with engine.connect() as conn:
        gap_rows = (await conn.execute(select(models.chain_gaps).order_by(models.chain_gaps.c.id))).all()
        archived = (await conn.execute(select(models.events.c.stream_seq)
                                       .where(models.events.c.call_id == hit))).scalars().all()
    assert [(g.call_id, g.first_seq, g.last_seq) for g in gap_rows] == [
        (None, position + 1, first_seq - 1), (hit, position + 1, first_seq - 1)]
    assert f"first_seq {first_seq}" in gap_rows[0].reason
    # everything the stream still held is archived
    assert sorted(archived) == [*range(position - 19, position + 1), *range(first_seq, last + 1)]

    report = await queries.verify_call(engine, hit)
    assert [(p.kind, p.stream_seq) for p in report.problems] == [("gap", position + 1)]
    assert (await queries.verify_call(engine, done)).ok  # ended before the gap: not hit
    assert await queries.stream_gaps(engine) == [
        {"stream": "RT", "first_seq": position + 1, "last_seq": first_seq - 1, "reason": gap_rows[0].reason,
         "detected_ns": gap_rows[0].detected_ns}]
    code, out = await cli("audit", "verify", hit, "--database", database_url, "--no-nats")
    assert code == 1, out
    assert f"RT stream sequences {position + 1}..{first_seq - 1} were never archived" in out

    # the whole archive: the damaged call, the stream-level gap, and the stream against the archive
    code, out = await cli("audit", "verify", "--database", database_url, "--nats", private_nats)
    assert code == 1, out
    assert f"FAILED {hit}" in out and f"FAILED {done}" not in out
    assert f"GAP RT stream sequences {position + 1}..{first_seq - 1} were never archived" in out
    assert f"RT: JetStream holds {last - first_seq + 1} message(s), sequences {first_seq}..{last}; " \
           f"archived up to {last}" in out
    assert "2 call(s) verified, 1 failing, 1 stream-level gap(s)" in out


async def test_audit_verify_names_an_event_in_jetstream_missing_from_the_archive(
        pbuses: tuple[Bus, Bus], private_nats: str, engine: AsyncEngine, database_url: str, tmp_path: Path,
        unique: str) -> None:
    call_id = f"CAcross{unique}"
    await at_stream_end(pbuses[0], engine)
    recorder = Recorder(pbuses[0], engine, tmp_path, durable_prefix=f"cross{unique}", settle_s=0.2)
    await recorder.start()
    try:
        await publish(pbuses, call_id, script(call_id))
        async with asyncio.timeout(60), recorder.finalizer.done:
            await recorder.finalizer.done.wait_for(lambda: call_id in recorder.finalizer.finalized)
    finally:
        await recorder.stop()
    code, out = await cli("audit", "verify", call_id, "--database", database_url, "--nats", private_nats)
    assert code == 0, out
    assert "everything JetStream holds is archived" in out
    rt_count = sum(1 for s in script(call_id) if s.subject.startswith("rt."))
    assert f"RT: {rt_count} message(s) in JetStream" in out

    async with engine.begin() as conn:  # an event disappears from the archive (its owner dropped the guards)
        await drop_guards(conn)
        ev = models.events
        row = (await conn.execute(select(ev.c.stream_seq, ev.c.subject).where(
            ev.c.call_id == call_id, ev.c.stream == "RT").order_by(ev.c.stream_seq).limit(1).offset(30))).one()
        await conn.execute(ev.delete().where(ev.c.stream == "RT", ev.c.stream_seq == row.stream_seq))
    code, out = await cli("audit", "verify", call_id, "--database", database_url, "--nats", private_nats)
    assert code == 1, out
    assert f"RT stream_seq {row.stream_seq} ({row.subject}) is in JetStream but not in the archive" in out

    free = natsserver.free_port()
    code, out = await cli("audit", "verify", call_id, "--database", database_url, "--nats",
                          f"nats://127.0.0.1:{free}")
    assert code == 1, out  # the chain still names the deleted row
    assert "not reachable" in out and "verifying the archive's chains only" in out
    assert "missing" in out


async def test_a_call_without_ended_is_ended_as_lost_even_across_restarts(
        pbuses: tuple[Bus, Bus], engine: AsyncEngine, tmp_path: Path, unique: str) -> None:
    call_id = f"CAlost{unique}"
    await at_stream_end(pbuses[0], engine)
    steps = [s for s in script(call_id) if not s.subject.endswith(".ended")]
    first = Recorder(pbuses[0], engine, tmp_path, durable_prefix=f"lost{unique}", settle_s=0.2)
    await first.start()
    try:
        last = await publish(pbuses, call_id, steps)
        async with asyncio.timeout(60):
            await first.archive.wait_for_position(subjects.RT_STREAM.name, last)
    finally:
        await first.stop()
    call = await queries.get_call(engine, call_id)
    assert call is not None and call["status"] == "in_progress"

    # a restarted recorder with a short timeout finds the idle call from the database alone
    second = Recorder(pbuses[0], engine, tmp_path, durable_prefix=f"lost{unique}", settle_s=0.2, lost_after_s=1.0)
    await second.start()
    try:
        async with asyncio.timeout(60), second.finalizer.done:
            await second.finalizer.done.wait_for(lambda: call_id in second.finalizer.finalized)
    finally:
        await second.stop()
    call = await queries.get_call(engine, call_id)
    assert call is not None
    assert (call["status"], call["end_reason"]) == ("ended", "lost")
    async with engine.connect() as conn:
        newest = (await conn.execute(select(models.events.c.stream_ts_ns).where(
            models.events.c.call_id == call_id).order_by(models.events.c.stream_ts_ns.desc()).limit(1))).scalar()
    assert call["ended_ns"] == newest
    assert call["projected_ns"] is not None and call["turns"] > 0
