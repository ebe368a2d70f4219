"""The archive CLI as a user runs it (subprocesses): ``calls``, ``replay`` and ``audit verify`` through a
live recorder API, and ``audit verify --database`` directly; tampering makes ``audit verify`` exit 1 naming
the row."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.recorder import models
from services.recorder.api import create_app
from services.recorder.archive import Archive
from services.recorder.db import open_database
from services.recorder.records import Incoming
from shared.bus import Headers
from switchboard import natsserver
from switchboard.testing.scripted import script
from tests.integration.archive_support import drop_guards

ROOT = Path(__file__).resolve().parents[2]


async def archive_script(engine: AsyncEngine, call_id: str) -> None:
    """Archive the scripted call as the consumers would (stream sequences, headers, real-time stamps)."""
    archive = Archive(engine)
    batches: dict[str, list[Incoming]] = {"RT": [], "CALLS": []}
    now = 1_800_000_000_000_000_000
    seqs: dict[str, int] = {}
    for step in script(call_id):
        stream = "RT" if step.subject.startswith("rt.") else "CALLS"
        seqs[step.source] = seqs.get(step.source, 0) + 1
        headers = {Headers.CALL_ID: call_id, Headers.SOURCE: step.source,
                   Headers.SEQ: str(seqs[step.source]), Headers.TS: str(now),
                   Headers.MSG_ID: f"{call_id}:{step.source}:{seqs[step.source]}"}
        batches[stream].append(Incoming(stream, len(batches[stream]) + 1, now + 1, step.subject, headers,
                                        json.dumps(step.payload).encode()))
        now += int(step.after_ms * 1e6) + 1000
    for stream, batch in batches.items():
        for start in range(0, len(batch), 100):
            await archive.persist(stream, batch[start:start + 100])


async def cli(*args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env["COLUMNS"] = "200"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "switchboard.cli", *args, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[tuple[AsyncEngine, str]]:
    engine = await open_database(database_url)
    port = natsserver.free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine, api_token=None), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.05)
    yield engine, f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task
    await engine.dispose()


async def test_calls_replay_and_audit_through_the_api(api: tuple[AsyncEngine, str], unique: str) -> None:
    engine, url = api
    call_id = f"CAcli{unique}"
    await archive_script(engine, call_id)

    code, out = await cli("calls", "--api", url, "--json")
    assert code == 0, out
    assert call_id in [c["call_id"] for c in json.loads(out)]

    code, out = await cli("replay", call_id, "--api", url, "--json")
    assert code == 0, out
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[0]["type"] == "started" and rows[-1]["type"] == "ended"
    assert sum(r["count"] for r in rows) == len(script(call_id))

    code, out = await cli("replay", call_id, "--api", url)
    assert code == 0 and "book_appointment" in out and "caller_hangup" in out

    code, out = await cli("audit", "verify", call_id, "--api", url)
    assert code == 0 and "OK" in out, out
    code, out = await cli("audit", "verify", "--api", url, "--no-nats")
    assert code == 0 and "OK 1 call(s) verified, 0 failing, 0 stream-level gap(s)" in out, out

    code, out = await cli("replay", "CAnosuchcall", "--api", url)
    assert code == 1 and "no call" in out


async def test_audit_verify_fails_and_names_the_altered_row(api: tuple[AsyncEngine, str], database_url: str,
                                                            unique: str) -> None:
    engine, url = api
    call_id = f"CAtamper{unique}"
    await archive_script(engine, call_id)
    code, out = await cli("audit", "verify", call_id, "--database", database_url)
    assert code == 0 and "OK" in out, out
    async with engine.begin() as conn:
        await drop_guards(conn)
        ev = models.events
        await conn.execute(update(ev).where(ev.c.call_id == call_id, ev.c.stream == "RT", ev.c.stream_seq == 42)
                           .values(body=b'{"type":"x"}'))
    code, out = await cli("audit", "verify", call_id, "--database", database_url)
    assert code == 1, out
    assert "altered at stream_seq 42" in out
    code, out = await cli("audit", "verify", call_id, "--api", url, "--json")
    assert code == 1
    report = json.loads(out)
    assert [(p["kind"], p["stream"], p["stream_seq"]) for p in report["problems"]] == [("altered", "RT", 42)]
