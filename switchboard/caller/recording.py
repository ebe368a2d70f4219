"""Stereo WAV recording of a simulated call: caller on the left, agent on the right, 8 kHz PCM16.

Both channels are appended one 20 ms frame at a time on the simulator's clock, so they stay aligned:
frame k of each channel covers the same 20 ms of the call.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from shared.audio import ulaw_decode

__all__ = ["StereoRecorder"]


class StereoRecorder:
    """Accumulates μ-law frames for both channels; :meth:`write` saves ``<path>`` (PCM16 stereo 8000 Hz)."""

    def __init__(self) -> None:
        self._left: list[bytes] = []
        self._right: list[bytes] = []

    def add(self, caller: bytes, agent: bytes) -> None:
        """One aligned frame for each channel (μ-law bytes of equal length)."""
        if len(caller) != len(agent):
            raise ValueError("caller and agent frames must have the same length")
        self._left.append(caller)
        self._right.append(agent)

    @property
    def duration_ms(self) -> float:
        """Recorded length in ms."""
        return sum(len(f) for f in self._left) / 8.0

    def write(self, path: str | Path) -> Path:
        """Write the WAV file (creating parent directories); returns its path."""
        left = ulaw_decode(b"".join(self._left))
        right = ulaw_decode(b"".join(self._right))
        stereo = np.empty(left.size * 2, dtype="<i2")
        stereo[0::2] = left
        stereo[1::2] = right
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(target), "wb") as wav:
            wav.setnchannels(2)
            wav.setsampwidth(2)
            wav.setframerate(8000)
            wav.writeframes(stereo.tobytes())
        return target
