"""Server VAD on the audio timeline and the speech chunker (real espeak-ng audio, no I/O)."""

from __future__ import annotations

import numpy as np

from services.localmodel.audio_in import InputAudio
from services.localmodel.speech import split_sentences
from services.localmodel.vad import VadParams
from shared.audio import parse_format
from shared.tts import synthesize_format


def run(params: VadParams, frame_bytes: int) -> list[tuple[str, int]]:
    speech = synthesize_format("I would like to book an appointment", "audio/pcmu")
    audio = b"\xff" * 8000 + speech + b"\xff" * 8000  # 1 s silence, speech, 1 s silence
    buf = InputAudio(parse_format("audio/pcmu"), params)
    events: list[tuple[str, int]] = []
    for i in range(0, len(audio), frame_bytes):
        events += [(e.kind, e.ms) for e in buf.append(audio[i:i + frame_bytes])]
    return events


def test_events_and_timeline_do_not_depend_on_chunking() -> None:
    params = VadParams(prefix_padding_ms=300, silence_duration_ms=500)
    small = run(params, 160)
    big = run(params, 8000)  # 1 s per append ("faster than real time")
    assert small == big
    kinds = [k for k, _ in small]
    assert kinds[0] == "start" and kinds[-1] == "stop"
    start = small[0][1]
    stop = small[-1][1]
    assert 500 <= start <= 1000  # speech begins at 1000 ms, minus 300 ms padding
    speech_ms = len(synthesize_format("I would like to book an appointment", "audio/pcmu")) / 8
    assert stop >= 1000 + speech_ms - 200 + 500 - 100


def test_silence_duration_and_idle_timeout() -> None:
    short = run(VadParams(silence_duration_ms=200), 160)
    long = run(VadParams(silence_duration_ms=800), 160)
    assert short[-1][1] < long[-1][1]
    buf = InputAudio(parse_format("audio/pcmu"), VadParams(idle_timeout_ms=500))
    events = buf.append(b"\xff" * 8 * 700)
    assert [(e.kind, e.ms) for e in events] == [("idle", 500)]


def test_silence_only_and_manual_mode() -> None:
    buf = InputAudio(parse_format("audio/pcm;rate=24000"), VadParams())
    assert buf.append(bytes(48 * 2000)) == []
    assert buf.buffered_ms <= 2000
    manual = InputAudio(parse_format("audio/pcmu"), None)
    manual.append(b"\xff" * 800)
    raw, pcm, start = manual.take()
    assert len(raw) == 800 and abs(len(pcm) - 1600) <= 8 and start == 0 and manual.buffered_ms == 0
    assert np.all(pcm == pcm)


def test_split_sentences() -> None:
    assert split_sentences("Hello there.  How are you? Fine!") == ["Hello there.", "How are you?", "Fine!"]


def test_a_clear_mid_speech_forgets_the_turn_and_the_next_speech_starts_a_new_one() -> None:
    """``input_audio_buffer.clear`` while the caller speaks (a broken carrier stream): the half-heard turn is gone
    and the next utterance gets its own start and stop."""
    speech = synthesize_format("I would like to book an appointment", "audio/pcmu")
    buf = InputAudio(parse_format("audio/pcmu"), VadParams(silence_duration_ms=500))
    first = [e.kind for e in buf.append(b"\xff" * 8000 + speech[:len(speech) // 2])]
    assert first == ["start"]
    buf.clear()
    again = [e.kind for e in buf.append(b"\xff" * 1600 + speech + b"\xff" * 8000)]
    assert again[0] == "start" and again[-1] == "stop"
