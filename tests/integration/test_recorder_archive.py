"""The recorder against a real nats-server and SQLite/PostgreSQL: a scripted call is archived completely
with intact hash chains, projected (call row, turns, tool calls, barge-ins, usage) and recorded as a stereo
WAV; redelivered batches never duplicate rows; tampering is detected and named."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry import trace
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.recorder import models, queries
from services.recorder.archive import Archive, ArchiveHole
from services.recorder.db import open_database
from services.recorder.records import Gap, Incoming
from services.recorder.service import Recorder
from shared.bus import Bus
from shared.telemetry import setup_telemetry
from switchboard.testing.scripted import publish_call, script
from tests.integration.archive_support import drop_guards


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = await open_database(database_url)
    yield eng
    await eng.dispose()


@pytest.fixture
async def recorder(buses: tuple[Bus, Bus], engine: AsyncEngine, tmp_path: Path,
                   unique: str) -> AsyncIterator[Recorder]:
    rec = Recorder(buses[0], engine, tmp_path, durable_prefix=f"rec{unique}", settle_s=0.3)
    await rec.start()
    yield rec
    await rec.stop()


async def wait_finalized(rec: Recorder, call_id: str, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout), rec.finalizer.done:
        await rec.finalizer.done.wait_for(lambda: call_id in rec.finalizer.finalized)


async def test_scripted_call_is_archived_projected_and_recorded(
        buses: tuple[Bus, Bus], recorder: Recorder, engine: AsyncEngine, unique: str) -> None:
    call_id = f"CArec{unique}"
    steps = script(call_id)
    setup_telemetry("switchboard-test-recorder")
    with trace.get_tracer("test").start_as_current_span("call") as root:
        published = await publish_call(*buses, call_id, speed=10.0, steps=steps)
    trace_id = format(root.get_span_context().trace_id, "032x")
    await wait_finalized(recorder, call_id)

    events = await queries.call_events(engine, call_id)
    assert len(events) == published == len(steps)
    rt = [e for e in events if e.stream == "RT"]
    assert [e.chain_index for e in rt] == list(range(1, len(rt) + 1))
    assert [e.seq for e in sorted(events, key=lambda e: e.seq or 0) if e.source == "session"] == \
        list(range(1, sum(1 for s in steps if s.source == "session") + 1))
    assert {e.type for e in rt} >= {"input_audio_buffer.append", "response.output_audio.delta", "session.update"}
    assert {e.trace_id for e in events} == {trace_id}
    report = await queries.verify_call(engine, call_id)
    assert report.ok, report.to_dict()

    call = await queries.get_call(engine, call_id)
    assert call is not None
    assert (call["carrier"], call["from_number"], call["to_number"], call["audio_format"]) == \
        ("twilio", "+15551230001", "+15559870000", "audio/pcmu")
    assert (call["status"], call["end_reason"]) == ("ended", "caller_hangup")
    assert call["input_tokens"] == 3 * 132 and call["output_audio_tokens"] == 3 * 91
    assert call["cost_usd"] > 0
    assert call["turns"] == 4 and call["tool_call_count"] == 1 and call["barge_in_count"] == 1

    stored = await queries.stored_projection(engine, call_id)
    turns = [(t["role"], t["text"]) for t in stored["turns"]]
    assert turns[0] == ("user", "I would like to book an appointment for tomorrow at ten")
    assert turns[1] == ("assistant", "Your appointment is booked for tomorrow at ten.")
    assert turns[-1] == ("user", "No thanks, bye")
    interrupted = [t for t in stored["turns"] if t["interrupted"]]
    assert [t["item_id"] for t in interrupted] == ["item_a2"]
    starts = [t["start_ms"] for t in stored["turns"]]
    assert starts == sorted(starts)
    (tool,) = stored["tool_calls"]
    assert (tool["name"], tool["arguments"], tool["tool_call_id"]) == \
        ("book_appointment", '{"date":"tomorrow","time":"10:00"}', "call_abc")
    assert tool["output"] == '{"booked":true,"ref":"A1"}' and tool["error"] is None
    assert tool["latency_ms"] is not None and tool["latency_ms"] >= 0
    (barge,) = stored["barge_ins"]
    assert (barge["item_id"], barge["audio_end_ms"]) == ("item_a2", 500)
    assert barge["clear_latency_ms"] is not None and barge["clear_latency_ms"] >= 0

    path = Path(call["recording_path"])
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    caller, agent = frames[:, 0], frames[:, 1]
    # the caller sent 1.6 + 1.0 + 1.1 + 0.4 s; the agent was heard for 1 s + 0.5 s (cut at the barge-in)
    assert len(frames) >= int(4.1 * 8000)
    loud_agent = int(np.count_nonzero(np.abs(agent) > 100))
    assert 0.85 * 12000 < loud_agent <= 12000
    loud_caller = int(np.count_nonzero(np.abs(caller) > 100))
    assert 0.85 * 12800 < loud_caller <= 12800  # 1 s of 440 Hz + 0.6 s of 500 Hz, the rest silence


async def test_redelivered_batches_are_not_duplicated(engine: AsyncEngine, unique: str) -> None:
    archive = Archive(engine)
    call_id = f"CAdup{unique}"
    batch = [Incoming("RT", seq, 1_700_000_000_000_000_000 + seq, f"rt.{call_id}.server.response.done",
                      {"Switchboard-Call-Id": call_id, "Switchboard-Seq": str(seq), "Switchboard-Source": "session"},
                      b'{"type":"response.done"}') for seq in range(1, 11)]
    first = await archive.persist("RT", batch)
    assert (first.stored, first.skipped) == (10, 0)
    again = await archive.persist("RT", batch[5:])
    assert (again.stored, again.skipped) == (0, 5)
    # a fresh process (empty caches) sees the committed position too
    fresh = Archive(engine)
    third = await fresh.persist("RT", batch)
    assert (third.stored, third.skipped) == (0, 10)
    async with engine.connect() as conn:
        rows = (await conn.execute(select(models.events.c.stream_seq)
                                   .where(models.events.c.call_id == call_id))).scalars().all()
    assert sorted(rows) == list(range(1, 11))
    assert (await queries.verify_call(engine, call_id)).ok
    later = [Incoming("RT", 15, 1_700_000_000_000_000_015, f"rt.{call_id}.server.response.done", {},
                      b'{"type":"response.done"}')]
    with pytest.raises(ArchiveHole, match=r"11\.\.14"):  # never skipped silently
        await fresh.persist("RT", later)
    gap = await fresh.persist("RT", later, [Gap(11, 14, "expired or purged")])
    assert (gap.stored, gap.gap) == (1, 4)
    report = await queries.verify_call(engine, call_id)
    assert [(p.kind, p.stream_seq) for p in report.problems] == [("gap", 11)]
    assert "RT stream sequences 11..14 were never archived (expired or purged)" in report.problems[0].describe()
    # a gap with no message after it (yet), and a redelivered duplicate in the same batch
    only_gap = await fresh.persist("RT", [], [Gap(16, 20, "deleted")])
    assert (only_gap.stored, only_gap.gap, only_gap.last_stream_seq, only_gap.calls) == (0, 5, 20, {call_id})
    twice = [Incoming("RT", 21, 1_700_000_000_000_000_021, f"rt.{call_id}.server.response.done", {}, b"{}")]
    assert (await fresh.persist("RT", twice * 2)).stored == 1
    report = await queries.verify_call(engine, call_id)
    assert [(p.kind, p.stream_seq) for p in report.problems] == [("gap", 11), ("gap", 16)]


async def _archived_call(engine: AsyncEngine, call_id: str, n: int = 12) -> None:
    archive = Archive(engine)
    batch = [Incoming("RT", 100 + i, 1_700_000_000_000_000_000 + i, f"rt.{call_id}.client.input_audio_buffer.append",
                      {"Switchboard-Call-Id": call_id, "Switchboard-Seq": str(i + 1), "Switchboard-Source": "session"},
                      b'{"type":"input_audio_buffer.append","audio":"//8="}') for i in range(n)]
    await archive.persist("RT", batch[:5])
    await archive.persist("RT", batch[5:])


async def test_audit_names_an_altered_row(engine: AsyncEngine, unique: str) -> None:
    call_id = f"CAalt{unique}"
    await _archived_call(engine, call_id)
    async with engine.begin() as conn:
        await drop_guards(conn)
        await conn.execute(update(models.events).where(models.events.c.stream_seq == 104)
                           .where(models.events.c.call_id == call_id).values(body=b'{"type":"x"}'))
    report = await queries.verify_call(engine, call_id)
    assert [(p.kind, p.stream_seq, p.seq) for p in report.problems] == [("altered", 104, 5)]


async def test_audit_names_a_deleted_row(engine: AsyncEngine, unique: str) -> None:
    call_id = f"CAdel{unique}"
    await _archived_call(engine, call_id)
    async with engine.begin() as conn:
        await drop_guards(conn)
        await conn.execute(delete(models.events).where(models.events.c.stream_seq == 106)
                           .where(models.events.c.call_id == call_id))
    report = await queries.verify_call(engine, call_id)
    assert [(p.kind, p.chain_index) for p in report.problems] == [("missing", 7)]
    assert "session 7" in report.problems[0].detail and "stream_seq 105" in report.problems[0].detail


async def test_audit_names_swapped_rows(engine: AsyncEngine, unique: str) -> None:
    call_id = f"CAswp{unique}"
    await _archived_call(engine, call_id)
    ev = models.events
    async with engine.begin() as conn:  # swap the positions of stream seqs 102 and 103
        await drop_guards(conn)
        await conn.execute(update(ev).where(ev.c.call_id == call_id, ev.c.stream_seq == 102).values(stream_seq=-1))
        await conn.execute(update(ev).where(ev.c.call_id == call_id, ev.c.stream_seq == 103).values(stream_seq=102))
        await conn.execute(update(ev).where(ev.c.call_id == call_id, ev.c.stream_seq == -1).values(stream_seq=103))
    report = await queries.verify_call(engine, call_id)
    kinds = {(p.kind, p.stream_seq) for p in report.problems}
    assert ("reordered", 102) in kinds and ("reordered", 103) in kinds
    assert not report.ok


async def test_audit_names_rows_deleted_at_the_end(engine: AsyncEngine, unique: str) -> None:
    call_id = f"CAend{unique}"
    await _archived_call(engine, call_id)
    async with engine.begin() as conn:
        await drop_guards(conn)
        await conn.execute(delete(models.events).where(models.events.c.stream_seq >= 110)
                           .where(models.events.c.call_id == call_id))
    report = await queries.verify_call(engine, call_id)
    assert [(p.kind, p.chain_index) for p in report.problems] == [("missing", 11)]


async def test_migrations_match_the_models_and_are_idempotent(engine: AsyncEngine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect

    from services.recorder.db import migrate

    await migrate(engine)  # a second run is a no-op

    def diff(sync_conn: Any) -> Any:
        context = MigrationContext.configure(sync_conn, opts={"version_table": "alembic_version_recorder"})
        tables = set(inspect(sync_conn).get_table_names())
        return tables, compare_metadata(context, models.metadata)

    async with engine.connect() as conn:
        tables, differences = await conn.run_sync(diff)
    assert "alembic_version_recorder" in tables and "alembic_version" not in tables
    assert differences == []
