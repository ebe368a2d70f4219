"""shared.health against real components: a nats-server that stops answering, a JetStream consumer that stops
advancing, a database that does not answer, readiness over HTTP (recorder) and over NATS."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
from sqlalchemy.ext.asyncio import create_async_engine

from services.recorder.api import create_app
from services.recorder.db import open_database
from services.recorder.service import Recorder
from shared import health, subjects
from shared.bus import Bus
from shared.config import load_settings
from shared.errors import ServiceCallError
from shared.health import CheckResult, Readiness
from switchboard import natsserver
from tests.integration.nats_support import freeze


@pytest.fixture
async def own_bus(own_nats: natsserver.EmbeddedNats) -> AsyncIterator[Bus]:
    bus = await Bus.connect(own_nats.url, name="test-health", source="recorder")
    yield bus
    await bus.close()


async def _until(readiness: Readiness, want: bool, rounds: int = 100) -> list[CheckResult]:
    """Evaluate until ready == want (bounded); returns the last results."""
    for _ in range(rounds):
        results = await readiness.evaluate()
        if readiness.ready == want:
            return results
        await asyncio.sleep(0.1)
    return readiness.results


async def test_a_frozen_server_is_not_ready_although_the_client_says_connected(
        own_nats: natsserver.EmbeddedNats, own_bus: Bus) -> None:
    readiness = Readiness([health.nats_connection(own_bus.nc, timeout=0.5)], timeout=1.0)
    await readiness.evaluate()
    assert readiness.ready, readiness.results
    await freeze(own_nats.process.pid)  # the socket stays open: nats-py still reports connected
    try:
        results = await readiness.evaluate()
        assert own_bus.nc.is_connected
        assert not readiness.ready and "no PONG" in results[0].detail
        assert readiness.report()["status"] == "not_ready"
    finally:
        os.kill(own_nats.process.pid, signal.SIGCONT)
    await _until(readiness, True)
    assert readiness.ready, readiness.results


async def test_a_stopped_server_is_not_ready(own_nats: natsserver.EmbeddedNats, own_bus: Bus) -> None:
    readiness = Readiness([health.nats_connection(own_bus.nc, timeout=0.5)], timeout=1.0)
    await readiness.evaluate()
    assert readiness.ready
    await asyncio.to_thread(own_nats.stop)
    results = await _until(readiness, False)
    assert not readiness.ready and not results[0].ok


async def test_a_consumer_with_a_backlog_and_no_progress_is_stalled(own_bus: Bus, unique: str) -> None:
    now = [1000.0]
    stream, durable, subject = f"HEALTH{unique}", f"d{unique}", f"health.{unique}"
    await own_bus.js.add_stream(StreamConfig(name=stream, subjects=[subject]))
    await own_bus.js.add_consumer(stream, ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT))
    check = health.jetstream_consumer(own_bus.js, stream, durable, stall_s=10, clock=lambda: now[0])
    assert (await check()).ok  # empty backlog
    for n in range(5):
        await own_bus.js.publish(subject, str(n).encode())
    now[0] += 30
    first = await check()
    assert first.ok  # the backlog just appeared: the clock starts now
    now[0] += 9
    assert (await check()).ok
    now[0] += 2
    stalled = await check()
    assert not stalled.ok and "5 pending" in stalled.detail and "no progress for 11 s" in stalled.detail
    sub = await own_bus.js.pull_subscribe(subject, durable, stream=stream)
    for msg in await sub.fetch(2, timeout=5):
        await msg.ack_sync()
    assert (await check()).ok  # progress: delivered and ack floor moved
    now[0] += 11
    assert not (await check()).ok  # 3 left, nothing moved for 11 s
    for msg in await sub.fetch(3, timeout=5):
        await msg.ack_sync()
    now[0] += 100
    assert (await check()).ok  # nothing pending: idle is healthy
    gone = health.jetstream_consumer(own_bus.js, stream, "no-such-consumer")
    with pytest.raises(Exception):  # noqa: B017 - nats-py's NotFoundError; Readiness reports it as failed
        await gone()


async def test_a_database_that_does_not_answer_is_not_ready(tmp_path: Path) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)  # accepts the connection, never speaks PostgreSQL

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dead = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/nothing")
    alive = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'ok.db'}")
    try:
        readiness = Readiness([health.database(alive, name="alive"),
                               health.database(dead, timeout=0.5, name="dead")], timeout=1.0)
        results = {r.name: r for r in await readiness.evaluate()}
        assert results["alive"].ok and not results["dead"].ok
        assert not readiness.ready
    finally:
        server.close()
        await dead.dispose()
        await alive.dispose()


async def test_readiness_is_answered_on_the_bus(bus: Bus, unique: str) -> None:
    accepting = [True]
    readiness = Readiness([health.flag("accepting", lambda: accepting[0], "draining"),
                           health.nats_connection(bus.nc)])
    readiness.start()
    await _until(readiness, True)
    sub = await health.answer_on_bus(bus, f"svc{unique}", readiness)
    try:
        reply = await bus.request(subjects.ready(f"svc{unique}"), b"", timeout=5)
        assert reply.json()["status"] == "ready"
        accepting[0] = False
        await _until(readiness, False)
        with pytest.raises(ServiceCallError) as refused:
            await bus.request(subjects.ready(f"svc{unique}"), b"", timeout=5)
        assert refused.value.code == 503 and "accepting: draining" in refused.value.message
    finally:
        await sub.unsubscribe()
        await readiness.stop()


async def test_recorder_readyz_goes_false_when_nats_stops_answering(
        own_nats: natsserver.EmbeddedNats, own_bus: Bus, tmp_path: Path, unique: str) -> None:
    await own_bus.ensure_streams(load_settings(js_max_age=600))
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'rec.db'}")
    recorder = Recorder(own_bus, engine, tmp_path, durable_prefix=f"ready{unique}", settle_s=0.2)
    await recorder.start()
    readiness = recorder.readiness()
    readiness.interval, readiness.timeout = 0.2, 1.0
    readiness.start()
    app = create_app(engine, api_token=None, bus=own_bus, ready=readiness)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client:
            async def status_becomes(code: int) -> httpx.Response:
                response = await client.get("/readyz")
                for _ in range(150):
                    if response.status_code == code:
                        break
                    await asyncio.sleep(0.1)
                    response = await client.get("/readyz")
                return response

            ready = await status_becomes(200)
            assert ready.status_code == 200, ready.json()
            names = {c["name"] for c in ready.json()["checks"]}
            assert {"nats", "database", "consumers bound", f"consumer CALLS/ready{unique}-calls"} <= names
            await freeze(own_nats.process.pid)
            try:
                frozen = await status_becomes(503)
                assert frozen.status_code == 503 and frozen.json()["status"] == "not_ready"
                assert own_bus.nc.is_connected  # what /readyz used to look at
            finally:
                os.kill(own_nats.process.pid, signal.SIGCONT)
            assert (await status_becomes(200)).status_code == 200
    finally:
        await readiness.stop()
        await recorder.stop()
        await engine.dispose()


async def test_a_probe_lost_in_a_reconnect_does_not_keep_the_check_failing(
        own_nats: natsserver.EmbeddedNats, own_bus: Bus) -> None:
    """A PING in flight when the server dies is dropped by nats-py on reconnect; its PONG never comes. The next
    round after the reconnect starts a new probe instead of waiting on the lost one (up to PONG_WAIT_S = 60 s)."""
    readiness = Readiness([health.nats_connection(own_bus.nc, timeout=0.3)], timeout=1.0)
    await readiness.evaluate()
    assert readiness.ready
    await freeze(own_nats.process.pid)
    assert not (await readiness.evaluate())[0].ok  # a probe is now in flight, waiting for its PONG
    own_nats.process.kill()
    own_nats.process.wait()
    restarted = await asyncio.to_thread(natsserver.start, own_nats.store_dir, port=own_nats.port)
    try:
        for _ in range(300):  # until reconnected; bounded well below PONG_WAIT_S
            if own_bus.nc.is_connected and own_bus.nc.stats["reconnects"] >= 1:
                break
            await asyncio.sleep(0.1)
        results = await _until(readiness, True, rounds=50)
        assert readiness.ready, results
    finally:
        restarted.stop()
