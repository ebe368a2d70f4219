"""Crypto-shredding end to end (NATS → recorder → SQLite/PostgreSQL): caller content is sealed in the archive,
``DELETE /calls/{id}`` and ``switchboard erase`` destroy the call's key — content unreadable through the API,
replay, transcripts, console and recording — while every hash chain, the independent ``docs/verify_chain.py``
and the JetStream cross-check still pass and the erasure is archived in the call's chain; retention erases an
expired call and keeps a fresh one; a wrong or missing archive key fails with a message naming it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.analytics import db as analytics_db
from services.analytics.consumer import AnalyticsConsumer
from services.analytics.models import kpi_calls
from services.recorder import checkpoints, models, queries
from services.recorder.api import create_app
from services.recorder.crosscheck import crosscheck
from services.recorder.crypto import ERASED, PREFIX, LocalKms
from services.recorder.db import open_database
from services.recorder.erasure import Eraser, Retention
from services.recorder.replay import timeline
from services.recorder.service import Recorder
from services.recorder.vault import Vault
from shared import subjects
from shared.bus import Bus
from shared.config import load_settings
from switchboard import natsserver
from switchboard.testing.scripted import Step, publish_call, script

ROOT = Path(__file__).resolve().parents[2]
SPOKEN = ("I would like to book an appointment for tomorrow at ten", "No thanks, bye")
"""Caller sentences of the scripted call (switchboard/testing/scripted.py)."""
AUDIT_KEY = secrets.token_hex(32)
AUDIT_PUBLIC = checkpoints.public_hex(checkpoints.private_key(AUDIT_KEY))


def steps_for(call_id: str, agent: str = "receptionist") -> list[Step]:
    """The scripted call with ``agent`` in its ``call.<id>.started``."""
    out = []
    for step in script(call_id):
        if step.subject == subjects.call_started(call_id):
            step = dataclasses.replace(step, payload={**step.payload, "agent": agent})
        out.append(step)
    return out


@dataclasses.dataclass
class Stack:
    engine: AsyncEngine
    gateway: Bus
    session: Bus
    recorder: Recorder
    recordings: Path


@pytest.fixture
async def stack(nats_url: str, database_url: str, tmp_path: Path, unique: str) -> AsyncIterator[Stack]:
    gateway = await Bus.connect(nats_url, name="test-gateway", source="gateway")
    session = await Bus.connect(nats_url, name="test-session", source="session")
    await gateway.ensure_streams(load_settings(js_max_age=3600))
    engine = await open_database(database_url)
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / f"short{unique}.yaml").write_text(
        f"name: short{unique}\ninstructions: test\nretention_days: 0.00002\n")  # 1.7 s
    (agents / f"keep{unique}.yaml").write_text(f"name: keep{unique}\ninstructions: test\n")
    recorder = Recorder(gateway, engine, tmp_path, durable_prefix=f"era{unique}", settle_s=0.2,
                        retention=Retention(None, agents), retention_interval_s=0.3, audit_key=AUDIT_KEY)
    assert recorder.checkpointer is not None
    recorder.checkpointer.poll_s = 0.2
    await recorder.start()
    yield Stack(engine, gateway, session, recorder, tmp_path / "recordings")
    await recorder.stop()
    await engine.dispose()
    await gateway.close()
    await session.close()


async def archive_call(s: Stack, call_id: str, agent: str = "receptionist") -> None:
    await publish_call(s.gateway, s.session, call_id, speed=0, steps=steps_for(call_id, agent))
    async with asyncio.timeout(60), s.recorder.finalizer.done:
        await s.recorder.finalizer.done.wait_for(lambda: call_id in s.recorder.finalizer.finalized)


async def wait_erased_record(engine: AsyncEngine, call_id: str) -> dict[str, Any]:
    """The archived ``call.<id>.erased`` body, once the recorder has archived it."""
    async with asyncio.timeout(30):
        while True:
            found = [e for e in await queries.call_events(engine, call_id) if e.type == "erased"]
            if found:
                body = found[0].json()
                assert body is not None
                return body
            await asyncio.sleep(0.1)


async def stored_bodies(engine: AsyncEngine, call_id: str) -> list[tuple[str, bytes]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(models.events.c.type, models.events.c.body)
                                   .where(models.events.c.call_id == call_id))).all()
    return [(r[0], bytes(r[1])) for r in rows]


async def kpi_from_number(engine: AsyncEngine, call_id: str, *, until: str | None) -> None:
    """Wait until the analytics row of ``call_id`` holds ``until`` as the caller's number."""
    async with asyncio.timeout(30):
        while True:
            async with engine.connect() as conn:
                row = (await conn.execute(select(kpi_calls.c.from_number)
                                          .where(kpi_calls.c.call_id == call_id))).first()
            if row is not None and row[0] == until:
                return
            await asyncio.sleep(0.1)


def client_for(app: object, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://recorder",  # type: ignore[arg-type]
                             headers=headers)


async def test_content_is_sealed_and_erasure_destroys_it_everywhere(stack: Stack, unique: str,
                                                                   database_url: str) -> None:
    call_id = f"call_era{unique}"
    await archive_call(stack, call_id)
    # sealed at rest: no caller sentence, number or tool argument in any stored body, the audio sealed
    bodies = await stored_bodies(stack.engine, call_id)
    raw = b"".join(body for _, body in bodies)
    for text in (*SPOKEN, "+15551230001"):
        assert text.encode() not in raw
    appends = [json.loads(body) for type_, body in bodies if type_ == "input_audio_buffer.append"]
    assert appends and all(a["audio"].startswith(PREFIX) for a in appends)
    # the analytics service, sharing the database, holds the caller's number until it consumes the erasure
    await analytics_db.migrate(stack.engine)
    analytics = AnalyticsConsumer(stack.session.js, stack.engine, durable_prefix=f"eran{unique}")
    stopping = asyncio.Event()
    consuming = asyncio.create_task(analytics.run(stopping))
    await kpi_from_number(stack.engine, call_id, until="+15551230001")
    token = secrets.token_hex(8)
    app = create_app(stack.engine, api_token=token, bus=stack.gateway, eraser=stack.recorder.eraser,
                     recordings_dir=stack.recordings)
    wav = stack.recordings / f"{call_id}.wav"
    async with client_for(app, token) as client:
        turns = (await client.get(f"/calls/{call_id}/transcript")).json()["turns"]
        assert SPOKEN[0] in [t["text"] for t in turns]  # readable with the key
        assert (await client.get(f"/calls/{call_id}/recording.wav")).status_code == 200 and wav.is_file()
        async with client_for(app) as anonymous:
            assert (await anonymous.delete(f"/calls/{call_id}")).status_code == 401
        erased = await client.delete(f"/calls/{call_id}", headers={"X-Switchboard-Actor": "dpo@example"})
        assert erased.status_code == 200, erased.text
        assert erased.json()["erased_by"] == "api:dpo@example" and not erased.json()["already"]
        assert str(wav) in erased.json()["recordings_deleted"] and not wav.exists()
        assert (await client.delete(f"/calls/{call_id}")).json()["already"] is True
        assert (await client.delete("/calls/call_nosuchcall")).status_code == 404

        # unreadable everywhere
        assert (await client.get(f"/calls/{call_id}/transcript")).status_code == 410
        gone = await client.get(f"/calls/{call_id}/recording.wav")
        assert gone.status_code == 410 and gone.json()["detail"]["erased"]["erased_by"] == "api:dpo@example"
        assert not wav.exists()  # not rendered again
        assert (await client.get(f"/calls/{call_id}/live/events")).status_code == 410
        events_text = (await client.get(f"/calls/{call_id}/events")).text
        for text in SPOKEN:
            assert text not in events_text
        lines = [json.loads(line) for line in events_text.splitlines()]
        done = [e for e in lines if e["type"] == "conversation.item.input_audio_transcription.completed"]
        assert done and all(e["body"]["transcript"] == ERASED for e in done)
        call = (await client.get(f"/calls/{call_id}")).json()
        assert call["erased_ns"] and call["from_number"] is None and call["recording_path"] is None
        listed = (await client.get("/calls", params={"limit": 1000})).json()
        assert next(c for c in listed if c["call_id"] == call_id)["erased_by"] == "api:dpo@example"
        page = await client.get(f"/ui/calls/{call_id}")
        assert page.status_code == 200 and "<td>erased</td>" in page.text and "Erased " in page.text
        for text in SPOKEN:
            assert text not in page.text
        listing = (await client.get("/ui/")).text
        row = listing[listing.index(f'data-call-id="{call_id}"'):]
        assert row[:row.index("</tr>")].count("<td>erased</td>") == 1

        # the erasure is an event of the call's CALLS chain, and every chain still verifies
        record = await wait_erased_record(stack.engine, call_id)
        assert record["erased_by"] == "api:dpo@example" and record["reason"] == "request"
        audit = (await client.get(f"/calls/{call_id}/audit")).json()
        assert audit["ok"], audit["problems"]
        assert audit["erased"]["erased_by"] == "api:dpo@example"
    # a final signed checkpoint covers the chains with the erasure record
    async with asyncio.timeout(30):
        while True:
            rows = await queries.chain_rows(stack.engine, call_id)
            signed = await checkpoints.checked(stack.gateway.js, call_id, rows, AUDIT_PUBLIC, ended_ns=None)
            if signed["ok"] and signed.get("final"):
                break
            await asyncio.sleep(0.1)
    await kpi_from_number(stack.engine, call_id, until=None)  # analytics erased its copy on call.<id>.erased
    stopping.set()
    await consuming
    rows = [r.to_dict() for r in timeline(await queries.call_events(stack.engine, call_id), collapse=False)]
    assert not any(text in json.dumps(rows) for text in SPOKEN)
    async with stack.engine.connect() as conn:
        assert (await conn.execute(select(models.call_keys).where(models.call_keys.c.call_id == call_id))).first() \
            is None
        for table in (models.transcript_turns, models.tool_calls):
            assert (await conn.execute(select(table).where(table.c.call_id == call_id))).first() is None
    # the JetStream cross-check: everything the stream holds for the erased call is still in the archive
    archived: dict[str, set[int]] = {}
    for ev in await queries.call_events(stack.engine, call_id):
        archived.setdefault(ev.stream, set()).add(ev.stream_seq)
    checks = await crosscheck(stack.gateway.js, call_id, archived)
    assert all(c.ok for c in checks) and sum(c.in_stream for c in checks) == sum(map(len, archived.values()))
    if database_url.startswith("sqlite"):  # the independent verifier, without Switchboard's code
        path = database_url.split("///", 1)[1]
        out = await asyncio.to_thread(subprocess.run, [sys.executable, str(ROOT / "docs" / "verify_chain.py"), path],
                                      capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"ok {call_id} CALLS" in out.stdout
        # the triggers still refuse rewriting the sealed events
        with sqlite3.connect(path) as db, pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM events WHERE call_id = ?", (call_id,))


async def test_content_arriving_after_an_erasure_is_unreadable_from_the_start(stack: Stack, unique: str) -> None:
    call_id = f"call_mid{unique}"
    steps = steps_for(call_id)
    half = len(steps) // 2
    await publish_call(stack.gateway, stack.session, call_id, speed=0, steps=steps[:half])
    async with asyncio.timeout(30):
        while len(await stored_bodies(stack.engine, call_id)) < half:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await stack.recorder.eraser.erase(call_id, by="test", reason="request")  # while the call is in progress
    await publish_call(stack.gateway, stack.session, call_id, speed=0, steps=steps[half:])
    async with asyncio.timeout(60), stack.recorder.finalizer.done:
        await stack.recorder.finalizer.done.wait_for(lambda: call_id in stack.recorder.finalizer.finalized)
    await wait_erased_record(stack.engine, call_id)
    events = await queries.call_events(stack.engine, call_id)
    assert len([e for e in events if e.type != "erased"]) == len(steps)
    late = [e for e in events if e.type == "conversation.item.input_audio_transcription.completed"]
    assert late and all((e.json() or {}).get("transcript") == ERASED for e in late)
    async with stack.engine.connect() as conn:  # sealed under keys that were never stored
        assert (await conn.execute(select(models.call_keys).where(models.call_keys.c.call_id == call_id))).first() \
            is None
        for table in (models.transcript_turns, models.tool_calls):
            assert (await conn.execute(select(table).where(table.c.call_id == call_id))).first() is None
    assert not (stack.recordings / f"{call_id}.wav").exists()
    assert (await queries.verify_call(stack.engine, call_id)).ok


async def test_retention_erases_the_expired_call_and_keeps_the_fresh_one(stack: Stack, unique: str) -> None:
    short, keep = f"call_short{unique}", f"call_keep{unique}"
    await archive_call(stack, short, f"short{unique}")
    await archive_call(stack, keep, f"keep{unique}")
    # the decision at a given time, with SWITCHBOARD_RETENTION_DAYS=1 for agents without retention_days
    kept = await queries.get_call(stack.engine, keep)
    assert kept is not None and kept["ended_ns"]
    daily = Eraser(stack.engine, stack.recorder.vault, stack.gateway, stack.recordings,
                   retention=Retention(1.0, stack.recorder.eraser.retention.agents_dir))
    assert keep not in await daily.expired(kept["ended_ns"] + 12 * 3600 * 10**9)  # fresh: half a day old
    assert keep in await daily.expired(kept["ended_ns"] + 36 * 3600 * 10**9)  # old: a day and a half
    # the recorder's periodic sweep erases it by itself
    async with asyncio.timeout(30):
        while (await queries.get_call(stack.engine, short) or {}).get("erased_ns") is None:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    record = await wait_erased_record(stack.engine, short)
    assert record["reason"] == "retention" and record["erased_by"] == "retention"
    assert not (stack.recordings / f"{short}.wav").exists()
    assert (await queries.verify_call(stack.engine, short)).ok
    kept = await queries.get_call(stack.engine, keep)
    assert kept is not None and kept["erased_ns"] is None  # its agent sets no retention, no default
    assert (stack.recordings / f"{keep}.wav").is_file()
    assert keep not in await stack.recorder.eraser.expired(2**62)


async def test_wrong_or_missing_archive_key_is_named(stack: Stack, unique: str, tmp_path: Path) -> None:
    call_id = f"call_key{unique}"
    await archive_call(stack, call_id)
    other = Vault(LocalKms(bytes(32)))
    app = create_app(stack.engine, api_token=None, vault=other, recordings_dir=tmp_path / "cache")
    async with client_for(app) as client:
        response = await client.get(f"/calls/{call_id}/events")
        assert response.status_code == 500
        assert "SWITCHBOARD_ARCHIVE_KEY" in response.json()["detail"]
        assert stack.recorder.vault.kms.key_id in response.json()["detail"]
    missing = Vault.from_settings(None, tmp_path / "nowhere", create=False)
    report = await queries.verify_call(stack.engine, call_id, vault=missing)
    assert [p.kind for p in report.problems] == ["projection"]
    assert "no archive key" in report.problems[0].detail and "nowhere" in report.problems[0].detail
    assert not (tmp_path / "nowhere").exists()


async def cli(*args: str) -> tuple[int, str]:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", "PYTHONPATH": str(ROOT), "HOME": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "switchboard.cli", *args, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


async def test_switchboard_erase_and_the_cli_views_of_an_erased_call(stack: Stack, unique: str) -> None:
    call_id = f"call_cli{unique}"
    await archive_call(stack, call_id)
    port = natsserver.free_port()
    server = uvicorn.Server(uvicorn.Config(
        create_app(stack.engine, api_token=None, bus=stack.gateway, eraser=stack.recorder.eraser,
                   recordings_dir=stack.recordings), host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.05)
        api = f"http://127.0.0.1:{port}"
        code, out = await cli("erase", "call_nosuchcall", "--yes", "--api", api)
        assert code == 1, out
        code, out = await cli("erase", call_id, "--yes", "--api", api)
        assert code == 0 and "erased" in out and "by api:cli:" in out, out
        code, out = await cli("calls", "--api", api, "--json", "--limit", "1000")
        row = next(c for c in json.loads(out) if c["call_id"] == call_id)
        assert row["erased_by"].startswith("api:cli:")
        code, out = await cli("calls", "--api", api, "--limit", "1000")
        assert code == 0 and "erased" in out
        code, out = await cli("replay", call_id, "--api", api, "--json", "--all")
        assert code == 0 and ERASED in out, out
        assert not any(text in out for text in SPOKEN)
        await wait_erased_record(stack.engine, call_id)
        code, out = await cli("audit", "verify", call_id, "--api", api, "--no-nats")
        assert code == 0 and "erased at" in out, out
    finally:
        server.should_exit = True
        await task
