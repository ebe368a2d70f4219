"""``docs/verify_chain.py`` — the independent verifier shipped for users — recomputes the archive's chains.

A call (events and a gap record) archived by the recorder's own code into SQLite verifies with the script and
its printed heads equal the committed chain heads; the database refuses UPDATE/DELETE on archived rows; an
owner who drops the triggers and edits a body is caught by the script.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.recorder import models
from services.recorder.archive import Archive
from services.recorder.db import open_database
from services.recorder.records import Gap, Incoming
from tests.integration.archive_support import drop_guards

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "verify_chain.py"


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, Path]]:
    path = tmp_path / "archive.db"
    engine = await open_database(f"sqlite+aiosqlite:///{path}")
    yield engine, path
    await engine.dispose()


def _verify(path: Path) -> tuple[int, str]:
    out = subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True, text=True, timeout=60,
                         check=False)
    return out.returncode, out.stdout + out.stderr


async def _archive(engine: AsyncEngine, call_id: str) -> None:
    archive = Archive(engine)
    headers = {"Switchboard-Call-Id": call_id, "Switchboard-Source": "session"}
    rt = [Incoming("RT", 10 + i, 1_700_000_000_000_000_000 + i, f"rt.{call_id}.server.response.output_audio.delta",
                   {**headers, "Switchboard-Seq": str(i + 1)}, b'{"type":"response.output_audio.delta","d":"\xc3\xa9"}')
          for i in range(6)]
    await archive.persist("RT", rt[:3])
    await archive.persist("RT", rt[3:], [Gap(16, 17, "expired or purged")])
    calls = [Incoming("CALLS", 1, 1_700_000_000_000_000_000, f"call.{call_id}.started",
                      {"Switchboard-Call-Id": call_id, "Switchboard-Source": "gateway", "Switchboard-Seq": "1"},
                      b'{"call_id":"%s","from":"+15550001111"}' % call_id.encode())]
    await archive.persist("CALLS", calls)


async def test_independent_script_recomputes_every_chain(sqlite: tuple[AsyncEngine, Path], unique: str) -> None:
    engine, path = sqlite
    call_id = f"call_v{unique}"
    await _archive(engine, call_id)
    code, out = _verify(path)
    assert code == 0, out
    async with engine.connect() as conn:
        heads = (await conn.execute(select(models.chain_heads).where(models.chain_heads.c.call_id == call_id))).all()
    assert len(heads) == 2
    for head in heads:
        assert f"ok {call_id} {head.stream} {head.chain_index} records head {head.hash}" in out, out


async def test_database_refuses_rewrites_and_the_script_catches_an_owner_who_bypasses(
        sqlite: tuple[AsyncEngine, Path], unique: str) -> None:
    engine, path = sqlite
    call_id = f"call_t{unique}"
    await _archive(engine, call_id)
    ev = models.events
    for statement in (update(ev).where(ev.c.call_id == call_id).values(body=b"{}"),
                      delete(ev).where(ev.c.call_id == call_id),
                      delete(models.chain_gaps)):
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(statement)
    async with engine.begin() as conn:
        await drop_guards(conn)
        await conn.execute(update(ev).where(ev.c.call_id == call_id, ev.c.stream_seq == 12)
                           .values(body=b'{"type":"response.output_audio.delta","d":"FORGED"}'))
    code, out = _verify(path)
    assert code == 1
    assert f"BROKEN {call_id} RT at chain index 3 (stream_seq 12)" in out, out
