"""Audio formats, G.711 codecs and a streaming resampler.

Formats are named as the Realtime GA API names them
(https://platform.openai.com/docs/api-reference/realtime-client-events/session/update): ``audio/pcmu`` (G.711
μ-law, 8 kHz, 1 byte per sample), ``audio/pcma`` (G.711 A-law, 8 kHz) and ``audio/pcm;rate=N`` (PCM16 little-endian
mono at N Hz; the model only accepts N = 24000, browsers may send 16000 or 48000).

The G.711 codecs are table-driven numpy and bit-exact with CPython's ``audioop`` (``lin2ulaw``,
``ulaw2lin``, ``lin2alaw``, ``alaw2lin`` at width 2) for all 65,536 PCM16 inputs and all 256 codes; the tables
are built once at import from the ITU-T G.711 segment rules as ``audioop`` implements them (Sun's ``g711.c``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import soxr

__all__ = [
    "PCM24K",
    "PCMA",
    "PCMU",
    "AudioFormat",
    "Converter",
    "Resampler",
    "UnsupportedAudioFormatError",
    "alaw_decode",
    "alaw_encode",
    "bytes_for_ms",
    "convert",
    "decode",
    "encode",
    "ms_for_bytes",
    "parse_format",
    "pcm16_from_bytes",
    "pcm16_to_bytes",
    "silence",
    "ulaw_decode",
    "ulaw_encode",
]

PCMU: Final = "audio/pcmu"
PCMA: Final = "audio/pcma"
PCM24K: Final = "audio/pcm;rate=24000"

Int16Array = npt.NDArray[np.int16]


class UnsupportedAudioFormatError(ValueError):
    """An ``audio_format`` string that is not ``audio/pcmu``, ``audio/pcma`` or ``audio/pcm;rate=N``."""


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """A parsed audio format: ``encoding`` (``pcmu``/``pcma``/``pcm``), ``rate`` in Hz, bytes per sample."""

    name: str
    encoding: str
    rate: int
    sample_bytes: int

    @property
    def bytes_per_ms(self) -> float:
        """Bytes per millisecond (8 for G.711, 48 for PCM16 at 24 kHz)."""
        return self.rate * self.sample_bytes / 1000.0

    def realtime_format(self) -> dict[str, object]:
        """The Realtime GA session format object, e.g. ``{"type": "audio/pcmu"}`` (https://platform.openai.com/docs/api-reference/realtime-client-events/session/update)."""
        if self.encoding == "pcm":
            return {"type": "audio/pcm", "rate": self.rate}
        return {"type": f"audio/{self.encoding}"}


_PCM_RE = re.compile(r"audio/pcm;\s*rate=(\d{4,6})")


def parse_format(name: str) -> AudioFormat:
    """Parse ``audio/pcmu`` | ``audio/pcma`` | ``audio/pcm;rate=N`` (8000 ≤ N ≤ 48000).

    Raises:
        UnsupportedAudioFormatError: any other string.
    """
    if name == PCMU:
        return AudioFormat(name, "pcmu", 8000, 1)
    if name == PCMA:
        return AudioFormat(name, "pcma", 8000, 1)
    match = _PCM_RE.fullmatch(name)
    if match and 8000 <= int(match.group(1)) <= 48000:
        rate = int(match.group(1))
        return AudioFormat(f"audio/pcm;rate={rate}", "pcm", rate, 2)
    raise UnsupportedAudioFormatError(f"unsupported audio format {name!r}")


def bytes_for_ms(fmt: str | AudioFormat, ms: float) -> int:
    """Bytes holding ``ms`` milliseconds of ``fmt`` audio, rounded down to a whole sample."""
    f = parse_format(fmt) if isinstance(fmt, str) else fmt
    samples = int(ms * f.rate / 1000.0)
    return samples * f.sample_bytes


def ms_for_bytes(fmt: str | AudioFormat, n_bytes: int) -> float:
    """Milliseconds of audio in ``n_bytes`` bytes of ``fmt`` (G.711: bytes / 8)."""
    f = parse_format(fmt) if isinstance(fmt, str) else fmt
    return n_bytes / f.bytes_per_ms


def silence(fmt: str | AudioFormat, ms: float) -> bytes:
    """``ms`` milliseconds of digital silence in ``fmt`` (μ-law 0xFF, A-law 0xD5, PCM zeros)."""
    f = parse_format(fmt) if isinstance(fmt, str) else fmt
    n = bytes_for_ms(f, ms)
    if f.encoding == "pcmu":
        return b"\xff" * n
    if f.encoding == "pcma":
        return b"\xd5" * n
    return bytes(n)


def pcm16_from_bytes(data: bytes) -> Int16Array:
    """View little-endian PCM16 bytes as an int16 array (copy-free; odd trailing byte dropped)."""
    usable = len(data) - (len(data) % 2)
    return np.frombuffer(data, dtype="<i2", count=usable // 2).astype(np.int16, copy=False)


def pcm16_to_bytes(samples: npt.NDArray[np.generic]) -> bytes:
    """Little-endian PCM16 bytes from an int16 array (or a float array in [-1, 1], clipped)."""
    arr = np.asarray(samples)
    if arr.dtype.kind == "f":
        arr = np.clip(np.round(arr * 32767.0), -32768, 32767)
    return np.asarray(arr, dtype="<i2").tobytes()


# --- G.711 tables (bit-exact with audioop) ------------------------------------------------------------


def _segment(values: npt.NDArray[np.int32], ends: tuple[int, ...]) -> npt.NDArray[np.int32]:
    """Index of the first segment end >= value (8 when above all), as audioop's ``search``."""
    return np.searchsorted(np.asarray(ends, dtype=np.int32), values, side="left").astype(np.int32)


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2  # 14-bit, arithmetic shift as audioop
    mask = np.where(pcm < 0, 0x7F, 0xFF).astype(np.int32)
    mag = np.minimum(np.abs(pcm), 8159) + (0x84 >> 2)
    seg = _segment(mag, (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF))
    shifted = mag >> np.minimum(seg + 1, 15)
    uval = np.where(seg >= 8, 0x7F, (seg << 4) | (shifted & 0xF))
    table = (uval ^ mask).astype(np.uint8)
    # index by the uint16 bit pattern of the sample
    return np.roll(table, -32768)


def _build_ulaw_decode() -> Int16Array:
    u = (~np.arange(256, dtype=np.int32)) & 0xFF
    t = ((u & 0x0F) << 3) + 0x84
    t = t << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3  # 13-bit
    mask = np.where(pcm >= 0, 0xD5, 0x55).astype(np.int32)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = _segment(mag, (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF))
    quant = np.where(seg < 2, (mag >> 1) & 0xF, (mag >> np.clip(seg, 0, 15)) & 0xF)
    aval = np.where(seg >= 8, 0x7F, (seg << 4) | quant)
    table = (aval ^ mask).astype(np.uint8)
    return np.roll(table, -32768)


def _build_alaw_decode() -> Int16Array:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


_ULAW_ENC: Final = _build_ulaw_encode()
_ULAW_DEC: Final = _build_ulaw_decode()
_ALAW_ENC: Final = _build_alaw_encode()
_ALAW_DEC: Final = _build_alaw_decode()


def _as_int16(pcm: bytes | Int16Array) -> Int16Array:
    return pcm16_from_bytes(pcm) if isinstance(pcm, bytes | bytearray | memoryview) else pcm


def ulaw_encode(pcm: bytes | Int16Array) -> bytes:
    """PCM16 (LE bytes or int16 array) → G.711 μ-law bytes, one byte per sample (= ``audioop.lin2ulaw``)."""
    samples = _as_int16(pcm)
    return _ULAW_ENC[samples.view(np.uint16)].tobytes()


def ulaw_decode(data: bytes) -> Int16Array:
    """G.711 μ-law bytes → int16 samples (= ``audioop.ulaw2lin(data, 2)``)."""
    return _ULAW_DEC[np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(pcm: bytes | Int16Array) -> bytes:
    """PCM16 (LE bytes or int16 array) → G.711 A-law bytes (= ``audioop.lin2alaw``)."""
    samples = _as_int16(pcm)
    return _ALAW_ENC[samples.view(np.uint16)].tobytes()


def alaw_decode(data: bytes) -> Int16Array:
    """G.711 A-law bytes → int16 samples (= ``audioop.alaw2lin(data, 2)``)."""
    return _ALAW_DEC[np.frombuffer(data, dtype=np.uint8)]


def decode(fmt: AudioFormat, data: bytes) -> Int16Array:
    """Bytes in ``fmt`` → int16 samples at ``fmt.rate``."""
    if fmt.encoding == "pcmu":
        return ulaw_decode(data)
    if fmt.encoding == "pcma":
        return alaw_decode(data)
    return pcm16_from_bytes(data)


def encode(fmt: AudioFormat, samples: Int16Array) -> bytes:
    """int16 samples at ``fmt.rate`` → bytes in ``fmt``."""
    if fmt.encoding == "pcmu":
        return ulaw_encode(samples)
    if fmt.encoding == "pcma":
        return alaw_encode(samples)
    return pcm16_to_bytes(samples)


# --- streaming resampling -----------------------------------------------------------------------------

RESAMPLE_QUALITY: Final = "QQ"
"""soxr quality used for streaming: "QQ" (quick cubic) has no look-ahead burst; soxr's HQ/MQ/VHQ buffer
40–150 ms. ``bench/audio.py`` / ``tests/unit/test_audio.py`` measure the delay (see :class:`Resampler`)."""


class Resampler:
    """Streaming PCM16 mono resampler over ``soxr.ResampleStream`` at low-delay quality ("QQ").

    Feed chunks of any size with :meth:`process`; each call returns the samples soxr could produce so far
    (``int16`` array). With quality "QQ" the output lags the input by a few samples only
    (``tests/unit/test_audio.py`` bounds it), where HQ releases output in bursts tens of ms apart.
    Call :meth:`flush` at end of stream to drain what soxr still holds.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError("sample rates must be positive (Hz)")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=RESAMPLE_QUALITY)

    def process(self, samples: Int16Array) -> Int16Array:
        """Resample one chunk; returns what is ready (possibly empty)."""
        if self.in_rate == self.out_rate:
            return samples
        out = self._stream.resample_chunk(np.ascontiguousarray(samples, dtype=np.int16), last=False)
        return np.asarray(out, dtype=np.int16)

    def flush(self) -> Int16Array:
        """End of stream: returns the samples soxr still holds."""
        if self.in_rate == self.out_rate:
            return np.zeros(0, dtype=np.int16)
        out = self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        return np.asarray(out, dtype=np.int16)


class Converter:
    """Streaming conversion between two audio formats (decode → resample → encode), state kept per stream.

    Identical formats pass bytes through untouched (the μ-law phone path never converts).
    """

    def __init__(self, src: str | AudioFormat, dst: str | AudioFormat) -> None:
        self.src = parse_format(src) if isinstance(src, str) else src
        self.dst = parse_format(dst) if isinstance(dst, str) else dst
        self._resampler = Resampler(self.src.rate, self.dst.rate)
        self.passthrough = self.src == self.dst

    def convert(self, data: bytes) -> bytes:
        """Convert one chunk of ``src`` bytes to ``dst`` bytes (may be shorter while soxr fills)."""
        if self.passthrough:
            return data
        return encode(self.dst, self._resampler.process(decode(self.src, data)))

    def flush(self) -> bytes:
        """Bytes still held by the resampler at end of stream."""
        if self.passthrough:
            return b""
        return encode(self.dst, self._resampler.flush())


def convert(data: bytes, src: str, dst: str) -> bytes:
    """One-shot conversion of a whole buffer between formats (not for streams: no state kept)."""
    conv = Converter(src, dst)
    return conv.convert(data) + conv.flush()
