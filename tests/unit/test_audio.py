"""G.711 codecs bit-exact with CPython's audioop; format arithmetic; the streaming resampler's delay."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import numpy as np
import pytest

from shared import audio


def _audioop() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return importlib.import_module("audioop")
        except ImportError:
            pytest.skip("audioop is not in this Python (removed in 3.13)")


ALL_PCM = np.arange(-32768, 32768, dtype=np.int16).tobytes()
ALL_CODES = bytes(range(256))


def test_ulaw_bit_exact_with_audioop() -> None:
    audioop = _audioop()
    assert audio.ulaw_encode(ALL_PCM) == audioop.lin2ulaw(ALL_PCM, 2)
    assert audio.ulaw_decode(ALL_CODES).tobytes() == audioop.ulaw2lin(ALL_CODES, 2)


def test_alaw_bit_exact_with_audioop() -> None:
    audioop = _audioop()
    assert audio.alaw_encode(ALL_PCM) == audioop.lin2alaw(ALL_PCM, 2)
    assert audio.alaw_decode(ALL_CODES).tobytes() == audioop.alaw2lin(ALL_CODES, 2)


def test_codecs_accept_arrays_and_round_trip_closely() -> None:
    x = (np.sin(np.arange(800) / 5.0) * 12000).astype(np.int16)
    for enc, dec in ((audio.ulaw_encode, audio.ulaw_decode), (audio.alaw_encode, audio.alaw_decode)):
        y = dec(enc(x)).astype(np.int32)
        assert np.max(np.abs(y - x)) <= 12000 // 16 + 64


def test_formats() -> None:
    assert audio.parse_format("audio/pcmu").bytes_per_ms == 8
    assert audio.parse_format("audio/pcm;rate=24000").bytes_per_ms == 48
    assert audio.bytes_for_ms("audio/pcmu", 20) == 160
    assert audio.bytes_for_ms("audio/pcm;rate=24000", 20) == 960
    assert audio.ms_for_bytes("audio/pcma", 160) == 20
    assert audio.parse_format("audio/pcm;rate=24000").realtime_format() == {"type": "audio/pcm", "rate": 24000}
    assert audio.silence("audio/pcmu", 20) == b"\xff" * 160
    for bad in ("audio/wav", "audio/pcm", "audio/pcm;rate=100", "pcm16"):
        with pytest.raises(audio.UnsupportedAudioFormatError):
            audio.parse_format(bad)


@pytest.mark.parametrize(("src", "dst"), [(8000, 16000), (8000, 24000), (24000, 8000), (48000, 24000)])
def test_streaming_resampler_has_low_delay(src: int, dst: int) -> None:
    """The streaming resampler lags by under 2 ms (soxr "QQ"), and its output length tracks the input."""
    resampler = audio.Resampler(src, dst)
    chunk = src // 50  # 20 ms
    x = (np.sin(np.arange(src) * 2 * np.pi * 440 / src) * 10000).astype(np.int16)
    produced = sum(len(resampler.process(x[i:i + chunk])) for i in range(0, len(x), chunk))
    lag_ms = (dst - produced) / dst * 1000
    assert 0 <= lag_ms < 2.0
    tail = resampler.flush()
    assert abs(produced + len(tail) - dst) <= 2


def test_converter_passthrough_and_conversion() -> None:
    frame = audio.silence("audio/pcmu", 20)
    assert audio.Converter("audio/pcmu", "audio/pcmu").convert(frame) is frame
    conv = audio.Converter("audio/pcmu", "audio/pcm;rate=24000")
    out = b"".join(conv.convert(frame) for _ in range(50)) + conv.flush()
    assert abs(len(out) - 48 * 1000) <= 8
