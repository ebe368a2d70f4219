"""Speech synthesis with espeak-ng, loaded with ctypes from the ``espeakng-loader`` wheel.

The wheel ships ``libespeak-ng.so`` and its ``espeak-ng-data``; no system ``espeak-ng`` binary is used.
libespeak-ng keeps per-process global state (voice, rate, callback), so every call into it holds
:data:`_LOCK`: synthesis is serialised within a process. :func:`synthesize_async` runs it on a worker thread
(ctypes releases the GIL while the C code runs), so the event loop is never blocked.

Units: samples are signed 16-bit mono at the library's native rate (22,050 Hz for the bundled voices);
``rate_wpm`` is espeak's speaking rate in words per minute (80–450, default 175).

API reference: espeak-ng ``speak_lib.h`` (``espeak_Initialize``, ``espeak_SetSynthCallback``,
``espeak_SetVoiceByName``, ``espeak_SetParameter``, ``espeak_Synth``) —
https://github.com/espeak-ng/espeak-ng/blob/master/src/include/espeak-ng/speak_lib.h
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from shared.audio import AudioFormat, Resampler, encode, parse_format

__all__ = [
    "DEFAULT_RATE_WPM",
    "DEFAULT_VOICE",
    "SynthesisError",
    "synthesize",
    "synthesize_async",
    "synthesize_format",
    "synthesize_format_async",
]

DEFAULT_VOICE: Final = "en-us+klatt"
"""espeak-ng voice name (language + variant); ``en-us+klatt`` is far easier for pocketsphinx to recognise."""
DEFAULT_RATE_WPM: Final = 175
"""espeak-ng's default speaking rate, words per minute."""

_AUDIO_OUTPUT_SYNCHRONOUS: Final = 2
_ESPEAK_RATE: Final = 1
_ESPEAK_CHARS_UTF8: Final = 1
_EE_OK: Final = 0
_BUFFER_MS: Final = 100
_MAX_TEXT_CHARS: Final = 10_000

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

Int16Array = npt.NDArray[np.int16]


class SynthesisError(RuntimeError):
    """libespeak-ng could not be loaded/initialised, the voice is unknown, or synthesis failed."""


@dataclass
class _Engine:
    lib: Any
    sample_rate: int
    callback: Any  # keeps the ctypes callback alive for the library's lifetime
    chunks: list[Int16Array]
    voice: str | None = None
    rate_wpm: int | None = None


_LOCK = threading.Lock()
_engine: _Engine | None = None


def _load() -> _Engine:
    """Load and initialise libespeak-ng once per process (caller holds ``_LOCK``)."""
    global _engine
    if _engine is not None:
        return _engine
    import espeakng_loader

    try:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
    except OSError as exc:
        raise SynthesisError(f"cannot load libespeak-ng from espeakng-loader: {exc}") from exc
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.restype = ctypes.c_int
    data_dir = espeakng_loader.get_data_path().encode()
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, data_dir, 0)
    if rate <= 0:
        raise SynthesisError(f"espeak_Initialize failed ({rate}) with data at {data_dir.decode()}")
    chunks: list[Int16Array] = []

    def on_audio(wav: Any, n_samples: int, _events: Any) -> int:
        if n_samples > 0 and wav:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).astype(np.int16, copy=True))
        return 0  # 0 = continue synthesis

    callback = _CALLBACK(on_audio)
    lib.espeak_SetSynthCallback(callback)
    _engine = _Engine(lib, int(rate), callback, chunks)
    return _engine


def synthesize(text: str, voice: str = DEFAULT_VOICE, rate_wpm: int = DEFAULT_RATE_WPM) -> tuple[Int16Array, int]:
    """Synthesise ``text`` (UTF-8, ≤ 10,000 characters) with espeak-ng.

    Returns:
        ``(samples, sample_rate_hz)``: int16 mono samples at the library's native rate (22,050 Hz).
        Empty or whitespace-only text gives an empty array.

    Raises:
        ValueError: ``text`` is too long or ``rate_wpm`` is outside 80–450 words per minute.
        SynthesisError: the library failed to load, the voice is unknown, or synthesis failed.
    """
    if len(text) > _MAX_TEXT_CHARS:
        raise ValueError(f"text too long for one synthesis ({len(text)} > {_MAX_TEXT_CHARS} characters)")
    if not 80 <= rate_wpm <= 450:
        raise ValueError(f"rate_wpm must be within 80..450 words per minute, got {rate_wpm}")
    with _LOCK:
        engine = _load()
        if not text.strip():
            return np.zeros(0, dtype=np.int16), engine.sample_rate
        if engine.voice != voice:
            if engine.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                engine.voice = None
                raise SynthesisError(f"unknown espeak-ng voice {voice!r}")
            engine.voice = voice
            engine.rate_wpm = None  # a voice change resets the rate
        if engine.rate_wpm != rate_wpm:
            engine.lib.espeak_SetParameter(_ESPEAK_RATE, rate_wpm, 0)
            engine.rate_wpm = rate_wpm
        engine.chunks.clear()
        data = text.encode("utf-8")
        status = engine.lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _ESPEAK_CHARS_UTF8, None, None)
        engine.lib.espeak_Synchronize()
        if status != _EE_OK:
            raise SynthesisError(f"espeak_Synth failed with status {status}")
        samples = np.concatenate(engine.chunks) if engine.chunks else np.zeros(0, dtype=np.int16)
        engine.chunks.clear()
        return samples, engine.sample_rate


def resample(samples: Int16Array, in_rate: int, out_rate: int) -> Int16Array:
    """Resample a whole int16 buffer (``shared.audio.Resampler``, flushed at the end)."""
    if in_rate == out_rate:
        return samples
    resampler = Resampler(in_rate, out_rate)
    head = resampler.process(samples)
    return np.concatenate([head, resampler.flush()]).astype(np.int16, copy=False)


def synthesize_format(text: str, fmt: str | AudioFormat, voice: str = DEFAULT_VOICE,
                      rate_wpm: int = DEFAULT_RATE_WPM) -> bytes:
    """Synthesise ``text`` and return it encoded in ``fmt`` (``audio/pcmu``, ``audio/pcma``,
    ``audio/pcm;rate=N``): e.g. μ-law 8 kHz bytes, one byte per sample.

    Raises:
        ValueError, SynthesisError: as :func:`synthesize`;
        shared.audio.UnsupportedAudioFormatError: unknown ``fmt``.
    """
    target = parse_format(fmt) if isinstance(fmt, str) else fmt
    samples, rate = synthesize(text, voice=voice, rate_wpm=rate_wpm)
    return encode(target, resample(samples, rate, target.rate))


async def synthesize_async(text: str, voice: str = DEFAULT_VOICE,
                           rate_wpm: int = DEFAULT_RATE_WPM) -> tuple[Int16Array, int]:
    """:func:`synthesize` on a worker thread (never blocks the event loop); same result and errors."""
    return await asyncio.to_thread(synthesize, text, voice, rate_wpm)


async def synthesize_format_async(text: str, fmt: str | AudioFormat, voice: str = DEFAULT_VOICE,
                                  rate_wpm: int = DEFAULT_RATE_WPM) -> bytes:
    """:func:`synthesize_format` on a worker thread; same result and errors."""
    return await asyncio.to_thread(synthesize_format, text, fmt, voice, rate_wpm)
