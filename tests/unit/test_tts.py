"""shared.tts: espeak-ng through espeakng-loader (real synthesis, no I/O)."""

from __future__ import annotations

import numpy as np
import pytest

from shared import tts
from shared.audio import ulaw_decode


def test_synthesize_returns_int16_speech_at_native_rate() -> None:
    samples, rate = tts.synthesize("Hello, thank you for calling.")
    assert rate == 22050
    assert samples.dtype == np.int16
    assert 0.8 < len(samples) / rate < 4.0
    assert np.abs(samples.astype(np.int32)).max() > 1000


def test_synthesize_format_pcmu_has_one_byte_per_sample_at_8k() -> None:
    text = "Yes please"
    samples, rate = tts.synthesize(text)
    ulaw = tts.synthesize_format(text, "audio/pcmu")
    assert abs(len(ulaw) - len(samples) * 8000 / rate) < 80
    assert np.abs(ulaw_decode(ulaw).astype(np.int32)).max() > 1000


def test_pcm24k_is_two_bytes_per_sample() -> None:
    pcm = tts.synthesize_format("Okay", "audio/pcm;rate=24000")
    samples, rate = tts.synthesize("Okay")
    assert len(pcm) % 2 == 0
    assert abs(len(pcm) / 2 - len(samples) * 24000 / rate) < 240


def test_slower_rate_gives_longer_audio_and_voice_change_works() -> None:
    fast, _ = tts.synthesize("one two three four five", rate_wpm=300)
    slow, _ = tts.synthesize("one two three four five", voice="en-us", rate_wpm=120)
    assert len(slow) > len(fast) * 1.5


def test_empty_text_and_bad_arguments() -> None:
    samples, _ = tts.synthesize("   ")
    assert len(samples) == 0
    with pytest.raises(ValueError):
        tts.synthesize("hi", rate_wpm=10)
    with pytest.raises(tts.SynthesisError):
        tts.synthesize("hi", voice="no-such-voice-xx")
    # the engine still works after a failed voice change
    assert len(tts.synthesize("hi")[0]) > 0


async def test_async_wrapper_matches_sync() -> None:
    data = await tts.synthesize_format_async("Goodbye", "audio/pcma")
    reference = tts.synthesize_format("Goodbye", "audio/pcma")
    assert abs(len(data) - len(reference)) <= len(reference) * 0.05
