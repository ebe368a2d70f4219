"""Crash safety: the recorder as a subprocess (``python -m services.recorder``) is SIGKILLed mid-call and
restarted; its archive must equal that of an uninterrupted recorder fed the same streams — same rows and, once
opened, same bodies (each archive seals caller content under its own per-call keys, so ciphertexts and hence
hashes differ between two archives), no loss, no duplicates, chains intact — and the call must still be
finalized with the same recording."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.recorder import models, queries
from services.recorder.crypto import LocalKms
from services.recorder.db import open_database
from services.recorder.service import Recorder
from services.recorder.vault import Vault
from shared.bus import Bus
from switchboard import natsserver
from switchboard.testing.scripted import publish_call, script
from tests.conftest import NatsAuth

ROOT = Path(__file__).resolve().parents[2]


class RecorderProcess:
    """``python -m services.recorder`` with its own environment; logs to a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.base = f"http://127.0.0.1:{env['SWITCHBOARD_RECORDER_PORT']}"

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.recorder", cwd=ROOT, env=self.env, stdout=out, stderr=out)
        async with httpx.AsyncClient(base_url=self.base) as client:
            for _ in range(600):
                assert self.proc.returncode is None, self.log.read_text()[-3000:]
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"recorder not ready: {self.log.read_text()[-3000:]}")

    async def get(self, path: str) -> Any:
        async with httpx.AsyncClient(base_url=self.base) as client:
            response = await client.get(path)
            return response.json() if response.status_code == 200 else None

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.proc.wait(), 30)
        return self.proc.returncode or 0


ARCHIVE_KEY = secrets.token_hex(32)
"""The subprocess recorder's SWITCHBOARD_ARCHIVE_KEY (the test opens its archive with it)."""


def subprocess_vault() -> Vault:
    """The vault of the recorder subprocess (:data:`ARCHIVE_KEY`)."""
    return Vault(LocalKms.from_setting(ARCHIVE_KEY))


async def archived_rows(engine: AsyncEngine, call_id: str, vault: Vault) -> list[tuple[Any, ...]]:
    """The call's event rows in stream order without ``id`` and ``hash``, the body opened with ``vault``."""
    return [(e.stream, e.stream_seq, e.call_id, e.chain_index, e.subject, e.direction, e.type, e.source, e.seq,
             e.msg_id, e.ts_ns, e.stream_ts_ns, e.trace_id, e.headers, e.body)
            for e in await queries.call_events(engine, call_id, vault=vault)]


async def test_sigkill_mid_call_then_restart_matches_an_uninterrupted_run(
        buses: tuple[Bus, Bus], nats_url: str, nats_auth: NatsAuth, database_url: str, tmp_path: Path,
        unique: str) -> None:
    call_id = f"CAkill{unique}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWITCHBOARD_", "OTEL_"))}
    env.update({
        "SWITCHBOARD_NATS_URL": nats_url, "SWITCHBOARD_DATABASE_URL": database_url,
        "SWITCHBOARD_DATA_DIR": str(tmp_path / "killed"), "SWITCHBOARD_RECORDER_PORT": str(natsserver.free_port()),
        "SWITCHBOARD_RECORDER_CONSUMER": f"kill{unique}", "PYTHONUNBUFFERED": "1",
        # the recorder's own NATS user (its permissions are part of what is tested); the streams as they are
        "SWITCHBOARD_NATS_NKEY_SEED": str(nats_auth.seeds["recorder"]), "SWITCHBOARD_JS_MAX_AGE": "3600",
        "SWITCHBOARD_ARCHIVE_KEY": ARCHIVE_KEY,
    })
    vault = subprocess_vault()
    proc = RecorderProcess(env, tmp_path / "recorder.log")
    ref_engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'reference.db'}")
    reference = Recorder(buses[0], ref_engine, tmp_path / "reference", durable_prefix=f"ref{unique}",
                         settle_s=0.3)
    await reference.start()
    engine = await open_database(database_url)
    try:
        await proc.start()
        steps = script(call_id)
        half = len(steps) // 2
        await publish_call(*buses, call_id, speed=0, steps=steps[:half])
        for _ in range(300):  # kill as soon as the first rows are committed, while the rest is in flight
            call = await proc.get(f"/calls/{call_id}")
            if call and sum(call["events"].values()) > 0:
                break
            await asyncio.sleep(0.02)
        await proc.kill()
        archived_before = await queries.call_events(engine, call_id, vault=vault)
        await publish_call(*buses, call_id, speed=0, steps=steps[half:])
        await proc.start()
        for _ in range(600):
            call = await proc.get(f"/calls/{call_id}")
            if call and call["projected_ns"] and sum(call["events"].values()) == len(steps):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"restarted recorder did not finish: {call}")
        assert await proc.stop() == 0

        async with asyncio.timeout(60), reference.finalizer.done:
            await reference.finalizer.done.wait_for(lambda: call_id in reference.finalizer.finalized)
        killed_rows = await archived_rows(engine, call_id, vault)
        reference_rows = await archived_rows(ref_engine, call_id, reference.vault)
        assert 0 < len(archived_before) < len(steps), "the kill did not happen mid-call"
        assert len(killed_rows) == len(steps)
        assert killed_rows == reference_rows
        assert (await queries.verify_call(engine, call_id, vault=vault)).ok
        async with engine.connect() as conn:  # nothing was recorded as lost from the stream
            assert (await conn.execute(select(models.chain_gaps))).all() == []
        killed_call = await queries.get_call(engine, call_id)
        reference_call = await queries.get_call(ref_engine, call_id)
        assert killed_call is not None and reference_call is not None
        recordings = [await asyncio.to_thread(Path(c["recording_path"]).read_bytes)
                      for c in (killed_call, reference_call)]
        assert recordings[0] == recordings[1]
        assert await queries.stored_projection(engine, call_id) == await queries.stored_projection(ref_engine, call_id)
    finally:
        if proc.proc is not None and proc.proc.returncode is None:
            proc.proc.kill()
            await proc.proc.wait()
        await reference.stop()
        await ref_engine.dispose()
        await engine.dispose()
