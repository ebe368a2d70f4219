"""The simulated phone's playback clock: agent audio is "played" 20 ms at a time, marks echo on time.

Twilio semantics (https://www.twilio.com/docs/voice/media-streams/websocket-messages): outbound media is
buffered and played in order; a ``mark`` is
echoed when the audio queued before it has finished playing; ``clear`` empties the buffer and echoes every
pending mark at once. :class:`PlaybackClock` reproduces that on a virtual clock advanced by :meth:`tick`
(one tick = 20 ms of μ-law 8 kHz = 160 bytes), so the simulator's WAV recording and its mark echoes are
aligned on the same clock as the caller audio it sends.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

__all__ = ["FRAME_BYTES", "FRAME_MS", "SILENCE_FRAME", "PlaybackClock", "TickResult"]

FRAME_MS = 20
"""One tick of the clock, in ms."""
FRAME_BYTES = 160
"""μ-law bytes per tick (8000 Hz × 20 ms)."""
SILENCE_FRAME = b"\xff" * FRAME_BYTES
"""One tick of μ-law digital silence."""


@dataclass(frozen=True, slots=True)
class TickResult:
    """What one tick played (always 160 bytes, silence-padded) and the marks now due for echo."""

    played: bytes
    marks: list[str]
    audio_bytes: int
    """Bytes of real agent audio in ``played`` (0–160; the rest is padding)."""


class PlaybackClock:
    """Buffer of agent audio with marks at byte positions; :meth:`tick` plays 20 ms."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._marks: collections.deque[tuple[int, str]] = collections.deque()
        self._received = 0
        self._played = 0

    @property
    def idle(self) -> bool:
        """True when every byte received has been played (or cleared) and no mark is waiting."""
        return not self._buffer and not self._marks

    @property
    def played_ms_total(self) -> float:
        """Agent audio played so far on this clock (ms)."""
        return self._played / 8.0

    @property
    def buffered_ms(self) -> float:
        """Agent audio received and not yet played (ms)."""
        return len(self._buffer) / 8.0

    def add_audio(self, audio: bytes) -> None:
        """Queue agent audio (μ-law bytes) behind what is buffered."""
        self._buffer += audio
        self._received += len(audio)

    def add_mark(self, name: str) -> list[str]:
        """A mark after the audio received so far; returned at once (to echo) when nothing is buffered."""
        if not self._buffer and not self._marks:
            return [name]
        self._marks.append((self._received, name))
        return []

    def clear(self) -> list[str]:
        """Drop unplayed audio; returns every pending mark (Twilio echoes them at once)."""
        self._received -= len(self._buffer)
        self._buffer.clear()
        names = [name for _, name in self._marks]
        self._marks.clear()
        return names

    def tick(self) -> TickResult:
        """Play the next 20 ms (silence when empty) and return the marks whose audio has now played."""
        n = min(FRAME_BYTES, len(self._buffer))
        played = bytes(self._buffer[:n])
        del self._buffer[:n]
        self._played += n
        due: list[str] = []
        while self._marks and self._marks[0][0] <= self._played:
            due.append(self._marks.popleft()[1])
        return TickResult(played + SILENCE_FRAME[n:], due, n)
