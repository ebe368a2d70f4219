"""The input audio buffer of one session: raw bytes in the session's input format plus a 16 kHz copy for
recognition (band-limited to telephone audio with a folded high band whatever the format,
:mod:`.bandwidth`; VAD is fed the plain resampled audio), on the audio timeline (ms of audio received since
the session started).

While no speech is under way (server VAD), only the last ``prefix_padding_ms`` + 1 s is kept, so an idle
caller streaming silence for an hour uses constant memory; in manual mode (``turn_detection: null``) the buffer
holds everything since the last commit/clear, up to :data:`MAX_BUFFER_MS`.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from services.localmodel.bandwidth import TelephoneBand
from services.localmodel.vad import VadEvent, VadParams, VoiceActivityDetector
from shared.audio import AudioFormat, Resampler, decode

__all__ = ["MAX_BUFFER_MS", "InputAudio"]

MAX_BUFFER_MS: Final = 5 * 60 * 1000
"""Longest buffered input (ms); older audio is dropped from the front."""


class InputAudio:
    """Buffer + resampler + VAD for one input format."""

    def __init__(self, fmt: AudioFormat, vad: VadParams | None, start_ms: float = 0.0) -> None:
        self.fmt = fmt
        self.vad = VoiceActivityDetector(vad) if vad else None
        if self.vad is not None:
            self.vad.position_ms = int(start_ms)
        self._resampler = None if fmt.rate == 16000 else Resampler(fmt.rate, 16000)
        self._band = TelephoneBand()
        """The recogniser's front end for every format (:mod:`.bandwidth`); VAD sees the audio plain."""
        self.raw = bytearray()
        self.pcm16k: list[npt.NDArray[np.int16]] = []
        self.last_pcm16k: npt.NDArray[np.int16] = np.zeros(0, dtype=np.int16)
        """The 16 kHz samples the last :meth:`append` added."""
        self.base_ms = start_ms
        """Timeline position (ms) of the first buffered byte."""
        self.position_ms = start_ms
        """Audio received so far on the session timeline (ms)."""

    @property
    def buffered_ms(self) -> float:
        """Milliseconds of audio in the buffer."""
        return len(self.raw) / self.fmt.bytes_per_ms

    def append(self, data: bytes) -> list[VadEvent]:
        """Add audio; returns VAD events (empty in manual mode)."""
        usable = len(data) - len(data) % self.fmt.sample_bytes
        data = data[:usable]
        self.raw.extend(data)
        self.position_ms += len(data) / self.fmt.bytes_per_ms
        samples = decode(self.fmt, data)
        pcm = self._resampler.process(samples) if self._resampler else samples
        heard = self._band.process(pcm.astype(np.int16, copy=False))
        self.last_pcm16k = heard.astype(np.int16, copy=False)
        self.pcm16k.append(self.last_pcm16k)
        events = self.vad.feed(pcm) if self.vad else []
        in_speech = self.vad is not None and self.vad.in_speech
        keep_ms = MAX_BUFFER_MS if (self.vad is None or in_speech) else self.vad.params.prefix_padding_ms + 1000
        if self.buffered_ms > keep_ms + 1000 and not events:
            self.drop_before(self.position_ms - keep_ms)
        return events

    def drop_before(self, ms: float) -> None:
        """Forget buffered audio before timeline position ``ms``."""
        cut_ms = max(0.0, ms - self.base_ms)
        cut = int(cut_ms * self.fmt.rate / 1000) * self.fmt.sample_bytes
        if cut <= 0:
            return
        del self.raw[:cut]
        self.base_ms += cut / self.fmt.bytes_per_ms
        pcm = self._joined()
        drop16 = min(len(pcm), int(cut_ms * 16))
        self.pcm16k = [pcm[drop16:]]

    def _joined(self) -> npt.NDArray[np.int16]:
        if len(self.pcm16k) != 1:
            self.pcm16k = [np.concatenate(self.pcm16k) if self.pcm16k else np.zeros(0, dtype=np.int16)]
        return self.pcm16k[0]

    def segment(self, start_ms: float, end_ms: float) -> tuple[bytes, npt.NDArray[np.int16]]:
        """Raw bytes and 16 kHz samples between two timeline positions (clipped to the buffer)."""
        a = max(0.0, start_ms - self.base_ms)
        b = max(a, min(end_ms, self.position_ms) - self.base_ms)
        ra = int(a * self.fmt.rate / 1000) * self.fmt.sample_bytes
        rb = int(b * self.fmt.rate / 1000) * self.fmt.sample_bytes
        pcm = self._joined()
        return bytes(self.raw[ra:rb]), pcm[int(a * 16):int(b * 16)].copy()

    def take(self, end_ms: float | None = None) -> tuple[bytes, npt.NDArray[np.int16], float]:
        """Remove and return the buffer up to ``end_ms`` (default: all): (raw, 16 kHz, start ms)."""
        end = self.position_ms if end_ms is None else end_ms
        start = self.base_ms
        raw, pcm = self.segment(start, end)
        self.drop_before(end)
        return raw, pcm, start

    def clear(self) -> None:
        """Empty the buffer and forget a turn in progress (the timeline keeps counting)."""
        if self.vad is not None:
            self.vad.reset_turn()
        self.raw.clear()
        self.pcm16k = []
        self.base_ms = self.position_ms
