"""Spectral folding: a crude high band for telephone audio, so the wideband recogniser hears fricatives.

pocketsphinx's en-US acoustic model was trained on 16 kHz speech and its filterbank reaches 6.8 kHz
(``feat.params``: ``-upperf 6800``). G.711 audio from a phone carries nothing above 4 kHz, so after upsampling the
filters between 4 and 6.8 kHz see silence, and sounds whose energy is mostly up there — /s/, /th/, /f/ — are
misheard: "Smith" came back as "Davis" or "Baker" in every μ-law run, while the same sentence as 24 kHz PCM was
right every time (docs/localmodel.md, "Telephone audio").

The fix adds a mirror image of the 0–4 kHz band into 4–8 kHz: ``y[n] = x[n] · (1 + g · (−1)^n)``. Multiplying
by ``(−1)^n`` shifts the spectrum by half the sample rate (8 kHz), so energy at ``f`` reappears at
``8000 − f`` — the fricative energy just under 4 kHz lands just above it, where the model expects it. This is the
image that upsampling by zero-insertion produces without its low-pass filter ("spectral folding", the simplest
bandwidth extension; Makhoul & Berouti, "High-frequency regeneration in speech coding systems", ICASSP 1979).
It is sample-local, so streaming costs one multiply per sample and adds no delay.

Only applied to audio whose source rate is at most 8 kHz; wideband input passes through unchanged.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["FOLD_GAIN", "SpectralFolder"]

FOLD_GAIN: Final = 0.3
"""Gain ``g`` of the mirrored band relative to the baseband (amplitude; 0.3 ≈ −10 dB). Chosen on development
sentences (not the held-out evaluation): 0.3 and 0.6 gave the same word error rate, 1.0 was worse."""


class SpectralFolder:
    """Streaming spectral folding of 16 kHz PCM16 that was upsampled from 8 kHz (see the module docstring).

    Args:
        gain: amplitude of the mirrored 4–8 kHz band relative to the 0–4 kHz band (``0`` disables).
    """

    def __init__(self, gain: float = FOLD_GAIN) -> None:
        if not 0.0 <= gain <= 1.0:
            raise ValueError(f"gain must be within 0..1, got {gain}")
        self.gain = gain
        self._odd = False  # parity of the next sample's index

    def process(self, pcm16k: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        """Fold the next chunk (int16 mono at 16 kHz); returns a new int16 array of the same length."""
        n = len(pcm16k)
        if n == 0 or self.gain == 0.0:
            return pcm16k
        sign = np.ones(n, dtype=np.float32)
        sign[1 if not self._odd else 0::2] = -1.0
        self._odd ^= bool(n % 2)
        out = pcm16k.astype(np.float32) * (1.0 + self.gain * sign)
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)
