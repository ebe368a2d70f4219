"""When to move a call to another gateway during a drain (issue 22): at a quiet moment, not mid-word.

A draining gateway closes each resumable Twilio stream with the resume marker and Twilio follows the TwiML
``<Redirect>`` to another gateway (:meth:`services.gateway.call.CallBridge.detach`). For the second or so that
takes, caller audio is lost on the line (Twilio sends no media without a stream) and agent audio queued at this
gateway is gone. So once the drain time is up, each call is detached at its first quiet moment — the caller
silent for :data:`QUIET_MS` and every agent chunk sent to the carrier played (its mark echoed) — or after
:data:`QUIET_WAIT_S` at the latest. Caller speech is judged by level alone (RMS over each inbound frame above
:data:`SPEECH_RMS`), and only while a drain is looking for the moment, so nothing is paid per frame otherwise.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import numpy as np

from shared.audio import AudioFormat, decode

__all__ = ["QUIET_MS", "QUIET_WAIT_S", "SPEECH_RMS", "CallerLevel", "detach_when_quiet"]

QUIET_MS = 300.0
"""Caller silence (ms) that makes a moment quiet."""
QUIET_WAIT_S = 5.0
"""Longest wait for a quiet moment once the drain time is up (s); then the call is detached anyway."""
SPEECH_RMS = 500.0
"""A frame whose RMS (PCM16 units, about −36 dBFS) is above this is caller speech."""
_POLL_S = 0.02


class CallerLevel:
    """Caller speech by level: fed the caller's frames (carrier format), tells how long the caller was silent."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.fmt = fmt
        self.since = time.monotonic()
        self.last_speech: float | None = None

    def feed(self, frame: bytes) -> None:
        """One inbound frame (any length; carrier format)."""
        samples = decode(self.fmt, frame).astype(np.float32)
        if len(samples) and float(np.sqrt(np.mean(samples * samples))) > SPEECH_RMS:
            self.last_speech = time.monotonic()

    def silent_s(self) -> float:
        """Seconds since the last speech frame (since watching began when none)."""
        return time.monotonic() - (self.last_speech if self.last_speech is not None else self.since)


class Detachable(Protocol):
    """What :func:`detach_when_quiet` needs of a call (:class:`services.gateway.call.CallBridge`)."""

    ended: asyncio.Event
    level: CallerLevel | None

    def agent_audio_unplayed(self) -> bool: ...

    def carrier_format(self) -> AudioFormat: ...

    async def detach(self, reason: str) -> None: ...


async def detach_when_quiet(bridge: Detachable, reason: str, max_wait_s: float = QUIET_WAIT_S) -> bool:
    """Detach ``bridge`` at its first quiet moment (module docstring), at most ``max_wait_s`` s from now.
    Returns True when a quiet moment was found (False: detached at the time limit, or the call ended first)."""
    bridge.level = CallerLevel(bridge.carrier_format())
    deadline = time.monotonic() + max_wait_s
    quiet = False
    while not bridge.ended.is_set() and time.monotonic() < deadline:
        if bridge.level.silent_s() * 1000.0 >= QUIET_MS and not bridge.agent_audio_unplayed():
            quiet = True
            break
        await asyncio.sleep(_POLL_S)
    await bridge.detach(reason)
    return quiet
