"""Server VAD on the audio timeline (webrtcvad), as the Realtime ``server_vad`` turn detection behaves.

Time is the **audio timeline**: milliseconds of input audio received since the session started (not wall
time), so audio sent faster than real time is segmented exactly as real-time audio. The detector consumes
16 kHz PCM16 in 20 ms frames (320 samples).

``threshold`` (0–1) maps to webrtcvad's aggressiveness ``min(3, int(threshold * 4))`` (0.5 → 2) plus an
energy gate: a frame counts as speech only when webrtcvad says so AND its RMS level is above
``-60 + 40 * threshold`` dBFS (0.5 → -40 dBFS), so low-level line noise never starts a turn.

- speech starts after :data:`START_FRAMES` consecutive speech frames; ``audio_start_ms`` = first speech
  frame's start − ``prefix_padding_ms`` (not below 0);
- speech stops after ``silence_duration_ms`` of consecutive non-speech; ``audio_end_ms`` = the end of that
  silence (it includes the silence duration, as OpenAI's does);
- a *tentative end* is reported once silence has lasted :data:`TENTATIVE_FRACTION` of ``silence_duration_ms``,
  so the caller may start recognition early (and discard it if speech resumes).
- ``idle_timeout_ms``: no speech for that long since the last turn ended → an idle event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import webrtcvad

__all__ = ["FRAME_MS", "FRAME_SAMPLES", "VadEvent", "VadParams", "VoiceActivityDetector"]

FRAME_MS: Final = 20
FRAME_SAMPLES: Final = 320
START_FRAMES: Final = 3
TENTATIVE_FRACTION: Final = 0.4


@dataclass(frozen=True)
class VadParams:
    """``server_vad`` parameters: threshold 0–1, durations in ms
    (https://platform.openai.com/docs/api-reference/realtime-client-events/session/update)."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    idle_timeout_ms: int | None = None


@dataclass(frozen=True)
class VadEvent:
    """``kind``: ``start`` (``ms`` = audio_start_ms), ``tentative_end`` / ``resumed`` / ``stop`` (``ms`` =
    audio_end_ms for stop, the current position otherwise), ``idle`` (``ms`` = current position)."""

    kind: Literal["start", "tentative_end", "resumed", "stop", "idle"]
    ms: int


class VoiceActivityDetector:
    """Feed 16 kHz int16 audio with :meth:`feed`; returns the turn events it caused, in order."""

    def __init__(self, params: VadParams) -> None:
        self.params = params
        self._vad = webrtcvad.Vad(min(3, int(params.threshold * 4)))
        self._energy_floor = 10 ** ((-60.0 + 40.0 * params.threshold) / 20.0) * 32768.0
        self._pending = np.zeros(0, dtype=np.int16)
        self.position_ms = 0
        """Audio received so far (ms), in whole frames."""
        self.in_speech = False
        self._run = 0
        self._silence_ms = 0
        self._tentative = False
        self._idle_since = 0
        self._idle_fired = False

    def is_speech(self, frame: npt.NDArray[np.int16]) -> bool:
        """Whether one 20 ms frame is speech (webrtcvad and the energy gate)."""
        rms = float(np.sqrt(np.mean(frame.astype(np.float64) ** 2))) if len(frame) else 0.0
        if rms < self._energy_floor:
            return False
        return bool(self._vad.is_speech(frame.astype("<i2").tobytes(), 16000))

    def reset_turn(self) -> None:
        """Forget a turn in progress (``input_audio_buffer.clear``): the next speech starts a new one."""
        self.in_speech = False
        self._run = 0
        self._silence_ms = 0
        self._tentative = False
        self.reset_idle()

    def reset_idle(self) -> None:
        """Restart the idle timer at the current position (e.g. when a response finished)."""
        self._idle_since = self.position_ms
        self._idle_fired = False

    def feed(self, pcm16k: npt.NDArray[np.int16]) -> list[VadEvent]:
        """Process audio; returns the events it produced."""
        data = np.concatenate([self._pending, pcm16k]) if len(self._pending) else pcm16k
        events: list[VadEvent] = []
        n = len(data) // FRAME_SAMPLES
        for k in range(n):
            frame = data[k * FRAME_SAMPLES:(k + 1) * FRAME_SAMPLES]
            start_ms = self.position_ms
            self.position_ms += FRAME_MS
            self._step(self.is_speech(frame), start_ms, events)
        self._pending = data[n * FRAME_SAMPLES:].copy()
        return events

    def _step(self, speech: bool, start_ms: int, events: list[VadEvent]) -> None:
        p = self.params
        if not self.in_speech:
            self._run = self._run + 1 if speech else 0
            if self._run >= START_FRAMES:
                self.in_speech = True
                self._silence_ms = 0
                self._tentative = False
                first = start_ms - (START_FRAMES - 1) * FRAME_MS
                events.append(VadEvent("start", max(0, first - p.prefix_padding_ms)))
            elif (p.idle_timeout_ms is not None and not self._idle_fired
                  and self.position_ms - self._idle_since >= p.idle_timeout_ms):
                self._idle_fired = True
                events.append(VadEvent("idle", self.position_ms))
            return
        if speech:
            if self._tentative:
                events.append(VadEvent("resumed", self.position_ms))
            self._silence_ms = 0
            self._tentative = False
            return
        self._silence_ms += FRAME_MS
        if self._silence_ms >= max(FRAME_MS, p.silence_duration_ms):
            self.in_speech = False
            self._run = 0
            self._tentative = False
            self._idle_since = self.position_ms
            self._idle_fired = False
            events.append(VadEvent("stop", self.position_ms))
        elif not self._tentative and self._silence_ms >= max(FRAME_MS, p.silence_duration_ms * TENTATIVE_FRACTION):
            self._tentative = True
            events.append(VadEvent("tentative_end", self.position_ms))
