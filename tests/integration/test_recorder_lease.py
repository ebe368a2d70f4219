"""The recorder is a single writer (issue 22 item 6): a KV lease with a TTL, taken by compare-and-set.

- two leases on one key: the second waits until the first is released, then takes it;
- a holder whose renewals stop loses the lease after the TTL; its next renewal fails and :meth:`valid` is false
  before the key can expire;
- two ``python -m services.recorder`` processes on one archive: the second binds nothing and writes nothing
  while the first runs; SIGTERM of the first (which commits, acks, releases) hands the archive to the second.
Real nats-server (with the recorder's own NATS user for the processes) and SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from services.recorder import queries
from services.recorder.db import open_database
from services.recorder.lease import WriterLease
from services.recorder.vault import Vault
from shared.bus import Bus
from switchboard import natsserver
from switchboard.testing.scripted import publish_call, script
from tests.conftest import NatsAuth
from tests.integration.test_recorder_restart import ARCHIVE_KEY, RecorderProcess, subprocess_vault


async def wait_for_line(log: Path, text: str, timeout: float = 60.0) -> None:
    """Poll ``log`` every 50 ms until it contains ``text``."""
    for _ in range(int(timeout / 0.05)):
        if await asyncio.to_thread(lambda: log.exists() and text in log.read_text()):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} not in {log}")


async def wait_for_events(engine: AsyncEngine, call_id: str, n: int, vault: Vault,
                          timeout: float = 60.0) -> None:
    """Poll the archive every 100 ms until ``call_id`` has ``n`` events (opened with ``vault``)."""
    for _ in range(int(timeout / 0.1)):
        if len(await queries.call_events(engine, call_id, vault=vault)) >= n:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{call_id}: fewer than {n} events archived")


async def test_second_lease_waits_until_the_first_is_released(buses: tuple[Bus, Bus], unique: str) -> None:
    first = WriterLease(buses[0].js, f"lease{unique}", holder="first")
    second = WriterLease(buses[1].js, f"lease{unique}", holder="second")
    stopping = asyncio.Event()
    assert await first.try_acquire() and first.valid()
    waiting = asyncio.create_task(second.acquire(stopping))
    await asyncio.sleep(1.0)  # several acquisition attempts
    assert not waiting.done() and not second.held
    assert await first.renew() and await first.current_holder() == "first"
    await first.release()
    assert await asyncio.wait_for(waiting, 10) is True
    assert second.valid() and await second.current_holder() == "second"
    assert not first.held and not await first.try_acquire()
    await second.release()


async def test_a_lease_not_renewed_expires_and_the_old_holder_is_fenced(buses: tuple[Bus, Bus], unique: str) -> None:
    ttl = 1.0
    old = WriterLease(buses[0].js, f"fence{unique}", holder="old", ttl_s=ttl)
    new = WriterLease(buses[1].js, f"fence{unique}", holder="new", ttl_s=ttl)
    assert await old.try_acquire()
    assert not await new.try_acquire()
    await asyncio.sleep(ttl - old.interval_s)
    assert not old.valid()  # stopped writing before the key can expire
    for _ in range(100):
        if await new.try_acquire():
            break
        await asyncio.sleep(0.1)
    assert not await old.renew() and old.lost.is_set()
    assert new.valid()
    await old.release()  # a lost lease is not deleted from under its new holder
    assert await new.current_holder() == "new"
    await new.release()


async def test_second_recorder_process_waits_for_the_first_to_stop(
        buses: tuple[Bus, Bus], nats_url: str, nats_auth: NatsAuth, tmp_path: Path, unique: str) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'archive.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWITCHBOARD_", "OTEL_"))}
    env.update({"SWITCHBOARD_NATS_URL": nats_url, "SWITCHBOARD_DATABASE_URL": database_url,
                "SWITCHBOARD_DATA_DIR": str(tmp_path / "data"), "SWITCHBOARD_RECORDER_CONSUMER": f"one{unique}",
                "PYTHONUNBUFFERED": "1", "SWITCHBOARD_NATS_NKEY_SEED": str(nats_auth.seeds["recorder"]),
                "SWITCHBOARD_JS_MAX_AGE": "3600", "SWITCHBOARD_ARCHIVE_KEY": ARCHIVE_KEY})
    vault = subprocess_vault()
    first = RecorderProcess({**env, "SWITCHBOARD_RECORDER_PORT": str(natsserver.free_port())}, tmp_path / "a.log")
    second = RecorderProcess({**env, "SWITCHBOARD_RECORDER_PORT": str(natsserver.free_port())}, tmp_path / "b.log")
    engine = await open_database(database_url)
    probe = WriterLease(buses[0].js, f"one{unique}")
    try:
        await first.start()
        holder = await probe.current_holder()
        assert holder is not None and holder.endswith(f":{first.proc.pid}")  # type: ignore[union-attr]
        waiting = asyncio.create_task(second.start())
        await wait_for_line(second.log, "holds the writer lease; waiting")
        await asyncio.sleep(1.0)  # several more acquisition attempts
        assert not waiting.done(), "the second recorder became ready while the first held the lease"
        call_id = f"CAlease{unique}"
        steps = script(call_id)
        await publish_call(*buses, call_id, speed=0, steps=steps)
        await wait_for_events(engine, call_id, len(steps), vault)
        assert await first.stop() == 0
        await asyncio.wait_for(waiting, 60)  # took over once the first released the lease
        holder = await probe.current_holder()
        assert holder is not None and holder.endswith(f":{second.proc.pid}")  # type: ignore[union-attr]
        assert len(await queries.call_events(engine, call_id, vault=vault)) == len(steps)  # nothing written twice
        assert (await queries.verify_call(engine, call_id)).ok
        assert await second.stop() == 0
    finally:
        for proc in (first, second):
            if proc.proc is not None and proc.proc.returncode is None:
                proc.proc.kill()
                await proc.proc.wait()
        with contextlib.suppress(Exception):
            await engine.dispose()
