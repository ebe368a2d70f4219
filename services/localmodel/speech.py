"""Speech output: text → espeak-ng audio in the session's output format, cut into delta-sized chunks.

Text is split into sentences; each is synthesised on a worker thread (:func:`shared.tts.synthesize_async`,
serialised by its lock), resampled from 22,050 Hz to the output rate and encoded, then cut into chunks of
``chunk_ms`` (20–100 ms). Each chunk carries the words of its sentence spoken during it (words are spread
over the sentence's chunks in proportion to their characters), so transcript deltas follow the audio.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from shared.audio import AudioFormat, encode, silence
from shared.tts import DEFAULT_RATE_WPM, DEFAULT_VOICE, resample, synthesize_async

__all__ = ["SpeechChunk", "speak", "split_sentences"]


@dataclass(frozen=True)
class SpeechChunk:
    """``audio`` bytes in the output format, the ``text`` spoken in it (may be empty), and the sentence it
    belongs to with its start/end on the item's audio timeline (ms)."""

    audio: bytes
    text: str
    sentence: str
    sentence_start_ms: float
    sentence_end_ms: float


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (split after ``.``, ``!``, ``?``), whitespace-normalised, empty ones dropped."""
    return [s for s in (" ".join(p.split()) for p in re.split(r"(?<=[.!?])\s+", text)) if s]


async def speak(text: str, fmt: AudioFormat, chunk_ms: int, voice: str = DEFAULT_VOICE,
                rate_wpm: int = DEFAULT_RATE_WPM) -> AsyncIterator[SpeechChunk]:
    """Yield the chunks speaking ``text`` in ``fmt``: every chunk is exactly ``chunk_ms`` long (audio carries
    over sentence boundaries) except the last, which is padded with silence to at least 20 ms. The first
    chunk is ready once the first sentence is synthesised.

    Raises:
        shared.tts.SynthesisError: the library failed.
    """
    chunk_bytes = max(fmt.sample_bytes, int(fmt.bytes_per_ms * chunk_ms) // fmt.sample_bytes * fmt.sample_bytes)
    carry = b""
    carry_start_ms = 0.0
    offset_ms = 0.0
    words: list[tuple[float, str]] = []  # (time the word starts, word) on the response timeline
    spans: list[tuple[float, float, str]] = []
    started = False

    def take_words(until_ms: float) -> str:
        nonlocal started
        spoken = []
        while words and words[0][0] < until_ms:
            spoken.append(words.pop(0)[1])
        if not spoken:
            return ""
        piece = (" " if started else "") + " ".join(spoken)
        started = True
        return piece

    def span_at(ms: float) -> tuple[float, float, str]:
        return next((sp for sp in spans if sp[0] <= ms < sp[1]), spans[-1])

    for sentence in split_sentences(text):
        samples, rate = await synthesize_async(sentence, voice, rate_wpm)
        audio = encode(fmt, resample(samples, rate, fmt.rate))
        if not audio:
            continue
        duration = len(audio) / fmt.bytes_per_ms
        total_chars = sum(len(w) + 1 for w in sentence.split()) or 1
        chars = 0
        for word in sentence.split():
            words.append((offset_ms + duration * chars / total_chars, word))
            chars += len(word) + 1
        spans.append((offset_ms, offset_ms + duration, sentence))
        offset_ms += duration
        carry += audio
        while len(carry) >= chunk_bytes:
            piece, carry = carry[:chunk_bytes], carry[chunk_bytes:]
            end_ms = carry_start_ms + chunk_ms
            sp = span_at(carry_start_ms)
            yield SpeechChunk(piece, take_words(end_ms), sp[2], sp[0], sp[1])
            carry_start_ms = end_ms
    if carry or words:
        min_bytes = int(fmt.bytes_per_ms * 20)
        if len(carry) < min_bytes:
            carry += silence(fmt, (min_bytes - len(carry)) / fmt.bytes_per_ms)
        sp = span_at(carry_start_ms) if spans else (0.0, 0.0, "")
        yield SpeechChunk(carry, take_words(float("inf")), sp[2], sp[0], sp[1])
