"""A stalled recorder process (SIGSTOP while most of a call is published, SIGCONT 3 s later) archives every
event exactly once, identical to an uninterrupted recorder, and records no gap. Whether the stall leaves a hole
in the delivered sequence depends on timing; the hole path itself is covered deterministically in
test_recorder_gaps.py."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from sqlalchemy import select

from services.recorder import models, queries
from services.recorder.db import open_database
from services.recorder.service import Recorder
from shared.bus import Bus
from switchboard import natsserver
from switchboard.testing.scripted import publish_call, script
from tests.conftest import NatsAuth
from tests.integration.test_recorder_restart import ARCHIVE_KEY, RecorderProcess, archived_rows, subprocess_vault


async def test_sigstop_mid_call_then_resume_archives_everything_once(
        buses: tuple[Bus, Bus], nats_url: str, nats_auth: NatsAuth, database_url: str, tmp_path: Path,
        unique: str) -> None:
    call_id = f"CAstall{unique}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWITCHBOARD_", "OTEL_"))}
    env.update({
        "SWITCHBOARD_NATS_URL": nats_url, "SWITCHBOARD_DATABASE_URL": database_url,
        "SWITCHBOARD_DATA_DIR": str(tmp_path / "stalled"), "SWITCHBOARD_RECORDER_PORT": str(natsserver.free_port()),
        "SWITCHBOARD_RECORDER_CONSUMER": f"stall{unique}", "PYTHONUNBUFFERED": "1",
        # the recorder's own NATS user (its permissions are part of what is tested); the streams as they are
        "SWITCHBOARD_NATS_NKEY_SEED": str(nats_auth.seeds["recorder"]), "SWITCHBOARD_JS_MAX_AGE": "3600",
        "SWITCHBOARD_ARCHIVE_KEY": ARCHIVE_KEY,
    })
    proc = RecorderProcess(env, tmp_path / "recorder.log")
    ref_engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'reference.db'}")
    reference = Recorder(buses[0], ref_engine, tmp_path / "reference", durable_prefix=f"sref{unique}",
                         settle_s=0.3)
    await reference.start()
    engine = await open_database(database_url)
    try:
        await proc.start()
        assert proc.proc is not None
        steps = script(call_id)
        third = len(steps) // 3
        await publish_call(*buses, call_id, speed=0, steps=steps[:third])
        proc.proc.send_signal(signal.SIGSTOP)
        try:
            await publish_call(*buses, call_id, speed=0, steps=steps[third:])
            for bus in buses:
                await bus.flush_acks(30)
            await asyncio.sleep(3)  # the stopped recorder's fetches expire on the server meanwhile
        finally:
            proc.proc.send_signal(signal.SIGCONT)
        for _ in range(600):
            call = await proc.get(f"/calls/{call_id}")
            if call and call["projected_ns"] and sum(call["events"].values()) == len(steps):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the resumed recorder did not finish: {call}")
        assert await proc.stop() == 0
        async with asyncio.timeout(60), reference.finalizer.done:
            await reference.finalizer.done.wait_for(lambda: call_id in reference.finalizer.finalized)
        rows = await archived_rows(engine, call_id, subprocess_vault())  # bodies opened: keys differ per archive
        async with engine.connect() as conn:
            gaps = (await conn.execute(select(models.chain_gaps))).all()
        reference_rows = await archived_rows(ref_engine, call_id, reference.vault)
        assert len(rows) == len(steps) and rows == reference_rows
        assert gaps == []
        assert (await queries.verify_call(engine, call_id, vault=subprocess_vault())).ok
    finally:
        if proc.proc is not None and proc.proc.returncode is None:
            proc.proc.send_signal(signal.SIGCONT)
            proc.proc.kill()
            await proc.proc.wait()
        await reference.stop()
        await ref_engine.dispose()
        await engine.dispose()
