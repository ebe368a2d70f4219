"""One call's caller audio on its way to the bus: ``call.<id>.audio.in`` (core NATS, raw carrier-native bytes, in
order, header ``Switchboard-Audio-Format``), batched to ``audio_in_ms`` per message.

Held until the session listens: ``audio.in`` is core NATS, and the session subscribes to it only after it has
taken ``call.<id>.started``, so frames published in between would reach nobody. Batches are kept (in order) until
:meth:`CallerAudio.release` (the bridge calls it on the first ``rt.<id>.server.session.updated``: the session
subscribes before it opens the model connection, so by then it listens), until ``session_hold_s`` passed, or until
the call ends, whichever comes first; later audio waits for the held audio to go out first. The session buffers
early audio until its model is ready anyway, so holding it here adds no delay.

Kept for replay: the audio published in the last :data:`~services.gateway.resume.KEEP_MS` is kept by byte offset,
so a session that took the call over after a crash can ask for what nobody heard (``command.replay``,
docs/operations.md "Rollouts and crashes").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from services.gateway.resume import KEEP_MS, KeptAudio
from shared import subjects
from shared.audio import parse_format
from shared.audio_batch import AudioBatcher
from shared.bus import Bus, Headers

__all__ = ["CallerAudio"]

log = logging.getLogger(__name__)


class CallerAudio:
    """Caller audio of one call → ``call.<id>.audio.in`` (see the module docstring).

    Args:
        bus: the gateway's bus.
        call_id: the call.
        audio_format: the carrier's audio format (``shared.audio`` name, e.g. ``audio/pcmu``).
        audio_in_ms: audio per ``audio.in`` message (ms).
        session_hold_s: how long (s) audio is held at most waiting for the session; 0: not held.

    Raises:
        ValueError: an unknown ``audio_format``.
    """

    def __init__(self, bus: Bus, call_id: str, audio_format: str, *, audio_in_ms: int,
                 session_hold_s: float) -> None:
        fmt = parse_format(audio_format)
        self.bus = bus
        self.call_id = call_id
        self.bytes_in = 0
        """Caller audio taken so far (bytes)."""
        self._headers = {Headers.AUDIO_FORMAT: audio_format}
        self._subject = subjects.call_audio_in(call_id)
        self._batcher = AudioBatcher(int(fmt.bytes_per_ms), min_ms=audio_in_ms, ready=True)
        self._held: list[bytes] | None = [] if session_hold_s > 0 else None
        """Batches held until the session listens (None once released)."""
        self._hold_until = time.monotonic() + session_hold_s
        self._hold_timer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._kept = KeptAudio(fmt.bytes_per_ms, KEEP_MS)

    @property
    def holding(self) -> bool:
        """True while audio is held for the session."""
        return self._held is not None

    async def push(self, audio: bytes) -> None:
        """Take one inbound frame; publish once at least ``audio_in_ms`` of audio is batched (at once when a frame
        alone is that long)."""
        self.bytes_in += len(audio)
        chunk = self._batcher.push(audio)
        if chunk is None:
            return
        if self._held is not None:
            if time.monotonic() < self._hold_until:
                self._held.append(chunk)
                if self._hold_timer is None:
                    self._hold_timer = asyncio.create_task(self._release_after(self._hold_until))
                return
            await self.release()
        elif self._lock.locked():  # the held audio (or a replay) is still going out: keep the order
            async with self._lock:
                pass
        await self._publish(chunk)

    async def release(self) -> None:
        """Publish the audio held until the session listens, in order; later calls do nothing."""
        async with self._lock:
            held, self._held = self._held, None
            for chunk in held or ():
                await self._publish(chunk)

    async def flush(self) -> None:
        """At the end of the call: the held audio and the last partial batch go out (the caller's last words
        before ``ended``); the hold timer stops."""
        await self.release()  # waits for a release in progress (the hold timer's) to finish
        rest = self._batcher.take()
        if rest:
            await self._publish(rest)
        if self._hold_timer is not None and self._hold_timer is not asyncio.current_task():
            self._hold_timer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._hold_timer

    async def replay(self, from_bytes: int) -> int:
        """``command.replay``: publish again the caller audio kept (the last ``KEEP_MS``) from byte offset
        ``from_bytes`` of this call's ``audio.in`` on, in order before any later frame, each chunk with header
        ``Switchboard-Replay`` (an empty one when nothing is kept); returns the bytes sent.

        A session that took the call over after a crash asks for it from the offset its log shows appended, so
        what the caller said while no session listened is heard."""
        async with self._lock:  # later frames wait (push) until the replay is out
            sent = 0
            for offset, part in self._kept.since(from_bytes):  # nothing kept: one empty marker
                await self.bus.publish(self._subject, part, call_id=self.call_id,
                                       headers={**self._headers, Headers.REPLAY: str(offset)})
                sent += len(part)
        log.info("call %s: replayed %d bytes of caller audio from offset %d", self.call_id, sent, from_bytes)
        return sent

    async def _release_after(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        await self.release()

    async def _publish(self, audio: bytes) -> None:
        await self.bus.publish(self._subject, audio, call_id=self.call_id, headers=self._headers)
        self._kept.add(audio)
