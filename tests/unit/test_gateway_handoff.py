"""A draining gateway detaches each call at a quiet moment (``services/gateway/handoff.py``): not while the
caller speaks, not while agent audio is still to be played; at the time limit otherwise."""

from __future__ import annotations

import asyncio

from services.gateway.handoff import QUIET_MS, CallerLevel, detach_when_quiet
from shared.audio import AudioFormat, parse_format, ulaw_encode
from switchboard.testing.scripted import tone

ULAW = parse_format("audio/pcmu")
SPEECH = ulaw_encode(tone(300, 20, amplitude=8000))
SILENCE = ulaw_encode(tone(300, 20, amplitude=0))


class FakeCall:
    def __init__(self, unplayed: bool = False) -> None:
        self.ended = asyncio.Event()
        self.level: CallerLevel | None = None
        self.unplayed = unplayed
        self.detached: list[str] = []
        self.frames_before_detach: list[bytes] = []

    def agent_audio_unplayed(self) -> bool:
        return self.unplayed

    def carrier_format(self) -> AudioFormat:
        return ULAW

    async def detach(self, reason: str) -> None:
        self.detached.append(reason)


async def caller(call: FakeCall, frames: list[bytes]) -> None:
    """Feed ``frames`` in real time while the call is not detached."""
    for frame in frames:
        if call.detached:
            return
        if call.level is not None:
            call.level.feed(frame)
            call.frames_before_detach.append(frame)
        await asyncio.sleep(0.02)


def test_level_tells_speech_from_silence() -> None:
    level = CallerLevel(ULAW)
    level.feed(SILENCE)
    assert level.last_speech is None
    level.feed(SPEECH)
    assert level.last_speech is not None


async def test_waits_for_the_caller_to_stop_speaking() -> None:
    call = FakeCall()
    drain = asyncio.create_task(detach_when_quiet(call, "gateway_drain", max_wait_s=10.0))
    await asyncio.sleep(0)  # the drain starts listening before the first frame
    await caller(call, [SPEECH] * 25 + [SILENCE] * 100)
    assert await drain
    assert call.detached == ["gateway_drain"]
    assert call.frames_before_detach.count(SPEECH) == 25  # every word was heard on this gateway
    assert call.frames_before_detach.count(SILENCE) >= QUIET_MS / 20 - 1


async def test_agent_audio_still_playing_holds_it_until_the_limit() -> None:
    call = FakeCall(unplayed=True)
    assert not await detach_when_quiet(call, "gateway_drain", max_wait_s=0.2)
    assert call.detached == ["gateway_drain"]


async def test_a_call_that_ends_meanwhile_is_not_waited_for() -> None:
    call = FakeCall()
    call.ended.set()
    assert not await detach_when_quiet(call, "gateway_drain", max_wait_s=10.0)
