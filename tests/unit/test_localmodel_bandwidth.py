"""The recogniser front end (services/localmodel/bandwidth.py): low-pass, then the 0–4 kHz band mirrored into
4–8 kHz; chunking-proof."""

from __future__ import annotations

import numpy as np
import pytest

from services.localmodel.bandwidth import FOLD_GAIN, SpectralFolder, TelephoneBand


def _band_power(x: np.ndarray, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 16000)
    return float(spectrum[(freqs >= lo) & (freqs < hi)].sum())


def test_a_tone_gets_its_mirror_image() -> None:
    t = np.arange(16000) / 16000
    tone = (8000 * np.sin(2 * np.pi * 3500 * t)).astype(np.int16)
    folded = SpectralFolder(0.5).process(tone)
    assert _band_power(tone, 4000, 8000) < 1e-6 * _band_power(tone, 0, 4000)
    image = _band_power(folded, 4400, 4600)  # 8000 - 3500 = 4500 Hz
    assert image == pytest.approx(0.25 * _band_power(folded, 3400, 3600), rel=0.01)


def test_chunking_does_not_change_the_output() -> None:
    rng = np.random.default_rng(7)
    audio = rng.integers(-3000, 3000, 4801).astype(np.int16)
    whole = SpectralFolder().process(audio)
    folder = SpectralFolder()
    pieces = [folder.process(audio[i:i + n]) for i, n in ((0, 161), (161, 320), (481, 1), (482, 4319))]
    assert np.array_equal(np.concatenate(pieces), whole)


def test_gain_is_validated_and_zero_is_identity() -> None:
    audio = np.arange(-50, 50, dtype=np.int16)
    assert np.array_equal(SpectralFolder(0.0).process(audio), audio)
    with pytest.raises(ValueError):
        SpectralFolder(1.5)


def test_the_front_end_band_limits_before_folding() -> None:
    """A 6 kHz tone (wideband PCM, or an upsampler's image in carrier L16) is gone; a 3 kHz tone gets its image."""
    t = np.arange(16000) / 16000
    high = (8000 * np.sin(2 * np.pi * 6000 * t)).astype(np.int16)
    low = (8000 * np.sin(2 * np.pi * 3000 * t)).astype(np.int16)
    out_high = TelephoneBand().process(high)[1600:]  # past the filter's onset
    out_low = TelephoneBand().process(low)[1600:]
    assert _band_power(out_high, 0, 8000) < 1e-6 * _band_power(high[1600:], 0, 8000)
    assert _band_power(out_low, 4900, 5100) == pytest.approx(FOLD_GAIN**2 * _band_power(out_low, 2900, 3100), rel=0.05)


def test_the_front_end_does_not_depend_on_chunking() -> None:
    rng = np.random.default_rng(3)
    audio = rng.integers(-3000, 3000, 4801).astype(np.int16)
    whole = TelephoneBand().process(audio)
    band = TelephoneBand()
    pieces = [band.process(audio[i:i + n]) for i, n in ((0, 161), (161, 320), (481, 0), (481, 1), (482, 4319))]
    assert np.array_equal(np.concatenate(pieces), whole)
    with pytest.raises(ValueError):
        TelephoneBand(cutoff_hz=8000)
