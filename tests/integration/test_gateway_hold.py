"""The gateway holds caller audio until the session listens (``audio.in`` is core NATS: nothing is kept for a
subscriber that comes later), then sends all of it, in order, before any newer audio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.gateway.call import CallBridge, CallStart
from shared import subjects
from shared.audio import PCMU
from shared.bus import Bus, Envelope
from tests.integration.gateway_support import AudioTap, wait_until


class NullSink:
    """A carrier socket that takes everything (this test looks at the bus side only)."""

    async def send_audio(self, audio: bytes) -> None:
        """Ignore audio."""

    async def send_mark(self, name: str) -> None:
        """Ignore marks."""

    async def send_clear(self) -> None:
        """Ignore clears."""

    async def close(self, code: int, reason: str) -> None:
        """Nothing to close."""


@pytest.fixture(name="tap")
async def tap_fixture(bus: Bus) -> AsyncIterator[AudioTap]:
    tap = await AudioTap().start(bus)
    yield tap
    await tap.stop()


async def test_audio_before_the_session_listens_arrives_in_order(gateway_bus: Bus, bus: Bus,
                                                                  tap: AudioTap) -> None:
    bridge = CallBridge(gateway_bus, NullSink(), CallStart(carrier="twilio", audio_format=PCMU, agent="echo"),
                        session_hold_s=600.0)
    await bridge.open()
    heard = tap.of(bridge.call_id)
    for n in range(4):  # two 40 ms audio.in messages, held
        await bridge.audio_in(bytes([n]) * 160)
    await gateway_bus.nc.flush()
    await bus.nc.flush()
    await asyncio.sleep(0.2)
    assert heard == []  # nobody listens yet: nothing was published into the void

    updated = {"type": "session.updated", "session": {"audio": {"output": {"format": {"type": "audio/pcmu"}}}}}
    await bus.publish(subjects.rt_server(bridge.call_id, "session.updated"), updated, call_id=bridge.call_id)
    await wait_until(lambda: len(heard) >= 2)
    for n in range(4, 6):  # after release: straight through
        await bridge.audio_in(bytes([n]) * 160)
    await wait_until(lambda: len(heard) >= 3)
    data: list[Envelope] = list(heard)
    assert b"".join(e.data for e in data) == b"".join(bytes([n]) * 160 for n in range(6))
    await bridge.end("caller_hangup")


async def test_held_audio_goes_out_when_the_call_ends(gateway_bus: Bus, tap: AudioTap) -> None:
    bridge = CallBridge(gateway_bus, NullSink(), CallStart(carrier="twilio", audio_format=PCMU, agent="echo"),
                        session_hold_s=600.0)
    await bridge.open()
    heard = tap.of(bridge.call_id)
    for n in range(3):  # one 40 ms message held for the session, one 20 ms frame held by the batcher
        await bridge.audio_in(bytes([n]) * 160)
    await bridge.end("caller_hangup")
    await wait_until(lambda: len(heard) >= 2)
    assert b"".join(e.data for e in heard) == b"".join(bytes([n]) * 160 for n in range(3))
