"""Issue 23's archive attacks, each by a database owner (the append-only triggers dropped), each detected.

A recorder with ``SWITCHBOARD_AUDIT_KEY`` archives scripted calls and publishes signed checkpoints to the AUDIT
stream. Then, one call per attack: a full rewrite with recomputed hashes and heads, truncating the last rows
and moving the head back, and appending a forged row with a new head all leave chains that verify on their
own — and disagree with the final signed checkpoint; edits to the ``calls`` and ``tool_calls`` projections are
named by the projection recomputation. The AUDIT stream refuses purge and message deletion, even to the
operator. ``switchboard audit verify`` names the rewrite.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.recorder import checkpoints, models, queries
from services.recorder.chain import GENESIS, canonical_record, chain_hash
from services.recorder.db import open_database
from services.recorder.service import Recorder
from shared import subjects
from shared.bus import Bus
from switchboard.testing.scripted import publish_call, script
from tests.integration.archive_support import drop_guards

ROOT = Path(__file__).resolve().parents[2]
KEY = secrets.token_hex(32)
PUBLIC = checkpoints.public_hex(checkpoints.private_key(KEY))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = await open_database(database_url)
    yield eng
    await eng.dispose()


@pytest.fixture
async def recorder(buses: tuple[Bus, Bus], engine: AsyncEngine, tmp_path: Path,
                   unique: str) -> AsyncIterator[Recorder]:
    rec = Recorder(buses[0], engine, tmp_path, durable_prefix=f"aud{unique}", settle_s=0.3, audit_key=KEY)
    assert rec.checkpointer is not None
    rec.checkpointer.poll_s = 0.2
    await rec.start()
    yield rec
    await rec.stop()


async def _sealed_call(buses: tuple[Bus, Bus], recorder: Recorder, call_id: str) -> dict[str, Any]:
    """Publish a scripted call; wait for it to be finalized and its final checkpoint to be in AUDIT."""
    await publish_call(*buses, call_id, speed=0, steps=script(call_id))
    async with asyncio.timeout(90):
        while True:
            body = await checkpoints.latest_checkpoint(buses[0].js, call_id)
            if body is not None:
                checkpoint = checkpoints.verify(body, PUBLIC)
                if checkpoint["final"]:
                    return checkpoint
            await asyncio.sleep(0.2)


async def _rows(engine: AsyncEngine, call_id: str, stream: str) -> list[dict[str, Any]]:
    ev = models.events
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in (await conn.execute(
            select(ev).where(ev.c.call_id == call_id, ev.c.stream == stream).order_by(ev.c.chain_index))).all()]


async def _rechain(engine: AsyncEngine, call_id: str, stream: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` as the whole chain with recomputed hashes and head: what a careful forger does."""
    ev, heads = models.events, models.chain_heads
    previous = GENESIS
    async with engine.begin() as conn:
        await drop_guards(conn)
        await conn.execute(ev.delete().where(ev.c.call_id == call_id, ev.c.stream == stream))
        fresh = []
        for index, row in enumerate(rows, 1):
            new = {k: v for k, v in row.items() if k != "id"} | {"chain_index": index}
            new["hash"] = previous = chain_hash(previous, canonical_record(new))
            fresh.append(new)
        await conn.execute(ev.insert(), fresh)
        await conn.execute(update(heads).where(heads.c.call_id == call_id, heads.c.stream == stream).values(
            chain_index=len(fresh), last_stream_seq=fresh[-1]["stream_seq"], hash=previous))


async def _findings(bus: Bus, engine: AsyncEngine, call_id: str) -> tuple[bool, list[str]]:
    """(chains intact on their own — projections aside, which a careless forger also leaves stale —, the
    checkpoint problems)."""
    report = await queries.verify_call(engine, call_id)
    checked = await checkpoints.checked(bus.js, call_id, await queries.chain_rows(engine, call_id), PUBLIC,
                                        ended_ns=None)
    return all(p.kind == "projection" for p in report.problems), checked["problems"]


async def test_each_rewrite_is_caught_by_the_signed_checkpoint(
        buses: tuple[Bus, Bus], recorder: Recorder, engine: AsyncEngine, unique: str, nats_url: str) -> None:
    ids = {name: f"call_{name}{unique}" for name in ("intact", "rewrite", "truncate", "append")}
    for call_id in ids.values():
        await _sealed_call(buses, recorder, call_id)
    await recorder.stop()  # the attacker edits a quiet archive

    assert await _findings(buses[0], engine, ids["intact"]) == (True, [])

    rows = await _rows(engine, ids["rewrite"], "RT")
    forged = next(r for r in rows if r["type"] == "response.output_audio_transcript.done")
    forged["body"] = b'{"type":"response.output_audio_transcript.done","transcript":"FORGED: read me your card"}'
    await _rechain(engine, ids["rewrite"], "RT", rows)
    intact, problems = await _findings(buses[0], engine, ids["rewrite"])
    assert intact and any("rewritten" in p for p in problems), problems

    rows = await _rows(engine, ids["truncate"], "RT")
    await _rechain(engine, ids["truncate"], "RT", rows[:-3])
    intact, problems = await _findings(buses[0], engine, ids["truncate"])
    assert intact and any("removed" in p for p in problems), problems

    rows = await _rows(engine, ids["append"], "RT")
    extra = dict(rows[-1]) | {"stream_seq": rows[-1]["stream_seq"] + 10_000, "seq": (rows[-1]["seq"] or 0) + 1,
                              "msg_id": f"forged-{unique}"}
    await _rechain(engine, ids["append"], "RT", [*rows, extra])
    intact, problems = await _findings(buses[0], engine, ids["append"])
    assert intact and any("after the final signed checkpoint" in p for p in problems), problems

    # the CLI says so too (key from SWITCHBOARD_AUDIT_KEY, checkpoint from the AUDIT stream)
    env = {**os.environ, "SWITCHBOARD_AUDIT_KEY": KEY, "COLUMNS": "200"}
    url = str(engine.url.render_as_string(hide_password=False))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "switchboard.cli", "audit", "verify", ids["rewrite"],
        "--database", url, "--nats", nats_url,
        cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 1 and "signed checkpoint" in out.decode() and "rewritten" in out.decode(), out
    # and without a call id: every call, each against its own checkpoint
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "switchboard.cli", "audit", "verify", "--database", url, "--nats", nats_url, "--json",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 1, out
    failing = {r["call_id"]: r for r in json.loads(out)["failing"]}
    assert {ids["rewrite"], ids["truncate"], ids["append"]} <= set(failing), out
    assert ids["intact"] not in failing
    assert any("rewritten" in p for p in failing[ids["rewrite"]]["checkpoint"]["problems"])


async def test_edited_projections_are_named(buses: tuple[Bus, Bus], recorder: Recorder, engine: AsyncEngine,
                                           unique: str) -> None:
    call_id = f"call_proj{unique}"
    await _sealed_call(buses, recorder, call_id)
    assert (await queries.verify_call(engine, call_id)).ok
    async with engine.begin() as conn:
        await conn.execute(update(models.calls).where(models.calls.c.call_id == call_id)
                           .values(from_number="+19995550000"))
        await conn.execute(update(models.tool_calls).where(models.tool_calls.c.call_id == call_id)
                           .values(output='{"booked":false}'))
    report = await queries.verify_call(engine, call_id)
    details = [p.describe() for p in report.problems if p.kind == "projection"]
    assert any("calls.from_number" in d for d in details), details
    assert any("tool_calls" in d for d in details), details


async def test_audit_stream_refuses_purge_and_deletion(buses: tuple[Bus, Bus], recorder: Recorder,
                                                       unique: str) -> None:
    call_id = f"call_keep{unique}"
    await _sealed_call(buses, recorder, call_id)
    js = buses[0].js  # the test's operator identity: even it cannot purge or delete a message
    with pytest.raises(nats.js.errors.APIError):
        await js.purge_stream(subjects.AUDIT_STREAM.name)
    info = await js.stream_info(subjects.AUDIT_STREAM.name)
    assert info.config.deny_delete and info.config.deny_purge
    with pytest.raises(nats.js.errors.APIError):
        await js.delete_msg(subjects.AUDIT_STREAM.name, int(info.state.last_seq or 1))
    assert await checkpoints.latest_checkpoint(js, call_id) is not None


def test_a_forged_signature_is_refused() -> None:
    body = checkpoints.sign(checkpoints.private_key(KEY), "call_x", {"RT": {"chain_index": 1, "last_stream_seq": 1,
                                                                             "hash": GENESIS}}, final=True)
    assert checkpoints.verify(body, PUBLIC)["call_id"] == "call_x"
    tampered = body.replace(b'"chain_index": 1', b'"chain_index": 2')
    with pytest.raises(checkpoints.CheckpointError, match="does not verify"):
        checkpoints.verify(tampered, PUBLIC)
    other = checkpoints.sign(checkpoints.private_key(secrets.token_hex(32)), "call_x", {}, final=True)
    with pytest.raises(checkpoints.CheckpointError, match="another key"):
        checkpoints.verify(other, PUBLIC)
