"""A cancelled caller never breaks the recorder's NATS connection (issue 20, item 2).

Each ``GET /calls/<id>/live/events`` subscribes seven times, and ``Bus.subscribe`` waits for the server's PONG.
Before ``shared.bus.wire.flush_shielded``, a browser that went away during that wait cancelled nats-py's PONG
future; the PONG then hit the cancelled future (``InvalidStateError`` in ``_process_pong``) and the connection's
read loop ended: the recorder stayed "connected" and read nothing, its consumers stalled and events went
unarchived until nats-py's stale-connection check (minutes later). Here 500 live-event streams are opened and
dropped at once while calls are being published; the recorder's connection must keep reading (a JetStream API
request on it is answered) and every published event must be archived.
"""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

import httpx
import pytest
import uvicorn

from services.recorder import queries
from services.recorder.api import create_app
from services.recorder.db import open_database
from services.recorder.service import Recorder
from shared.bus import Bus
from shared.config import load_settings
from switchboard import natsserver
from switchboard.testing.scripted import publish_call

STREAMS = 500
"""Live-event streams opened and dropped."""
AT_ONCE = 25
"""Streams open at the same time."""


async def _drop_one(client: httpx.AsyncClient, call_id: str, rng: random.Random) -> None:
    """Open the live stream, then go away after 0–25 ms (mostly while the server is still subscribing)."""
    async def open_stream() -> None:
        async with client.stream("GET", f"/calls/{call_id}/live/events") as response:
            async for _ in response.aiter_bytes():
                pass

    task = asyncio.create_task(open_stream())
    await asyncio.sleep(rng.uniform(0, 0.025))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_cancelled_live_streams_never_break_the_recorder_connection(
        nats_url: str, database_url: str, tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="nats.aio.client")
    recorder_bus = await Bus.connect(nats_url, name="test-recorder", source="recorder")
    gateway = await Bus.connect(nats_url, name="test-gateway", source="gateway")
    session = await Bus.connect(nats_url, name="test-session", source="session")
    await gateway.ensure_streams(load_settings(js_max_age=3600))
    engine = await open_database(database_url)
    recorder = Recorder(recorder_bus, engine, tmp_path, durable_prefix=f"cancel{unique}", settle_s=0.2)
    await recorder.start()
    port = natsserver.free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine, api_token=None, bus=recorder_bus), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    published: dict[str, int] = {}
    storm_over = asyncio.Event()

    async def publish_calls() -> None:
        n = 0
        while not storm_over.is_set() or n == 0:
            call_id = f"CAcancel{unique}n{n}"
            published[call_id] = await publish_call(gateway, session, call_id, speed=4.0)
            n += 1

    try:
        for _ in range(600):
            if server.started:
                break
            await asyncio.sleep(0.05)
        assert server.started
        publisher = asyncio.create_task(publish_calls())
        rng = random.Random(20)
        gate = asyncio.Semaphore(AT_ONCE)

        async def drop(i: int) -> None:
            async with gate:
                await _drop_one(client, f"CAcancel{unique}n{i % 2}", rng)

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                     limits=httpx.Limits(max_connections=AT_ONCE * 2)) as client:
            await asyncio.gather(*(drop(i) for i in range(STREAMS)))
        storm_over.set()
        await publisher
        await gateway.flush_acks(30)
        await session.flush_acks(30)
        assert gateway.failed_publishes == [] and session.failed_publishes == []

        # the recorder's connection still reads: a JetStream API request on it is answered
        assert recorder_bus.nc.is_connected
        await recorder_bus.js.account_info()

        archived: dict[str, int] = {}
        for _ in range(1200):  # bounded wait for the consumers to catch up; not a timing assertion
            archived = {cid: len(await queries.call_events(engine, cid)) for cid in published}
            if archived == published:
                break
            await asyncio.sleep(0.1)
        assert archived == published
        assert not [r for r in caplog.records if r.name == "nats.aio.client"], "nats-py's read loop failed"
    finally:
        storm_over.set()
        server.should_exit = True
        await serving
        await recorder.stop()
        await engine.dispose()
        await recorder_bus.close()
        await gateway.close()
        await session.close()


async def test_subscribes_cancelled_while_waiting_for_the_pong_leave_the_connection_reading(
        bus: Bus, unique: str, caplog: pytest.LogCaptureFixture) -> None:
    """The same at the bus level: 200 ``Bus.subscribe`` calls cancelled right after they sent SUB + PING."""
    caplog.set_level(logging.ERROR, logger="nats.aio.client")

    async def handler(_: object) -> None:
        return None

    cancelled = 0
    for i in range(200):
        task = asyncio.create_task(bus.subscribe(f"cancel.{unique}.{i}", handler))
        for _ in range(i % 4):  # cancel at different points of the subscribe
            await asyncio.sleep(0)
        task.cancel()
        done = await asyncio.gather(task, return_exceptions=True)
        cancelled += isinstance(done[0], asyncio.CancelledError)
    assert cancelled > 0
    assert bus.nc.is_connected
    await bus.js.account_info()  # answered: the read loop still runs
    assert not [r for r in caplog.records if r.name == "nats.aio.client"], "nats-py's read loop failed"
