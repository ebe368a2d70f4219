"""The bus across a paused nats-server: a flush that timed out and a subscribe made during the pause leave the
connection reading once the server answers again.

nats-py's ``flush`` cancels its PONG future when its timeout fires; the late PONG then made ``_process_pong``
raise ``InvalidStateError`` and ended the read loop (the client still said connected and read nothing). A
subscribe during the pause raised ``FlushTimeoutError`` and ended the call that made it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import nats.errors
import pytest

from shared.bus import Bus, Envelope
from switchboard import natsserver
from tests.integration.nats_support import freeze

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def bus(own_nats: natsserver.EmbeddedNats) -> AsyncIterator[Bus]:
    b = await Bus.connect(own_nats.url, name="test-outage", source="gateway")
    yield b
    await b.close()


async def _received(got: asyncio.Queue[Envelope], publisher: Bus, subject: str) -> Envelope:
    await publisher.publish(subject, {"n": 1})
    return await asyncio.wait_for(got.get(), 10)


async def test_a_timed_out_flush_and_a_subscribe_during_a_pause_leave_the_connection_reading(
        own_nats: natsserver.EmbeddedNats, bus: Bus) -> None:
    got: asyncio.Queue[Envelope] = asyncio.Queue()

    async def handler(env: Envelope) -> None:
        await got.put(env)

    await freeze(own_nats.process.pid)
    try:
        with pytest.raises(nats.errors.FlushTimeoutError):
            await bus.nc.flush(timeout=1)
        sub = await bus.subscribe("outage.during", handler)  # returns: the server confirms it later
    finally:
        os.kill(own_nats.process.pid, signal.SIGCONT)
    publisher = await Bus.connect(own_nats.url, name="test-outage-pub", source="session")
    try:
        await bus.nc.flush(timeout=5)  # the late PONGs were read without ending the read loop
        assert bus.nc.is_connected
        env = await _received(got, publisher, "outage.during")
        assert env.json() == {"n": 1}
        await sub.unsubscribe()
        await bus.subscribe("outage.after", handler)
        assert (await _received(got, publisher, "outage.after")).subject == "outage.after"
    finally:
        await publisher.close()
