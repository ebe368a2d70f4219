"""The caller simulator's playback clock follows Twilio's mark semantics (https://www.twilio.com/docs/voice/media-streams/websocket-messages)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.audio import ulaw_encode
from switchboard.caller.playback import FRAME_BYTES, PlaybackClock
from switchboard.caller.recording import StereoRecorder


def test_marks_echo_when_the_audio_before_them_has_played() -> None:
    clock = PlaybackClock()
    assert clock.add_mark("early") == ["early"]  # nothing buffered: echoed at once
    clock.add_audio(b"\x01" * 400)
    assert clock.add_mark("a:400") == []
    clock.add_audio(b"\x02" * 100)
    assert clock.add_mark("a:500") == []
    ticks = [clock.tick() for _ in range(4)]
    assert [t.marks for t in ticks] == [[], [], ["a:400"], ["a:500"]]
    assert [t.audio_bytes for t in ticks] == [160, 160, 160, 20]
    assert ticks[2].played == b"\x01" * 80 + b"\x02" * 80
    assert all(len(t.played) == FRAME_BYTES for t in ticks)
    assert ticks[3].played == b"\x02" * 20 + b"\xff" * 140  # silence-padded once empty
    assert clock.idle and clock.played_ms_total == 62.5


def test_clear_drops_unplayed_audio_and_returns_pending_marks() -> None:
    clock = PlaybackClock()
    clock.add_audio(b"\x01" * 800)
    clock.add_mark("x:800")
    clock.add_audio(b"\x01" * 160)
    clock.add_mark("x:960")
    clock.tick()
    assert clock.buffered_ms == 100.0
    assert clock.clear() == ["x:800", "x:960"]
    assert clock.idle and clock.tick().audio_bytes == 0
    clock.add_audio(b"\x03" * 160)
    clock.add_mark("y:160")
    assert clock.tick().marks == ["y:160"]


@given(st.lists(st.one_of(st.integers(1, 500), st.just(0), st.just(-1)), max_size=40))
def test_every_mark_is_echoed_exactly_once(ops: list[int]) -> None:
    """Audio (n bytes), a mark (0) or a clear (-1), then ticks until idle: each mark comes back once."""
    clock = PlaybackClock()
    sent: list[str] = []
    echoed: list[str] = []
    for i, op in enumerate(ops):
        if op > 0:
            clock.add_audio(b"\x00" * op)
        elif op == 0:
            sent.append(f"m{i}")
            echoed += clock.add_mark(f"m{i}")
        else:
            echoed += clock.clear()
        echoed += clock.tick().marks
    while not clock.idle:
        echoed += clock.tick().marks
    assert echoed == sent


def test_stereo_recording(tmp_path: Path) -> None:
    rec = StereoRecorder()
    tone = ulaw_encode((np.sin(np.arange(160) / 3) * 10000).astype(np.int16))
    rec.add(tone, b"\xff" * 160)
    rec.add(b"\xff" * 160, tone)
    with pytest.raises(ValueError):
        rec.add(b"\xff", b"")
    assert rec.duration_ms == 40.0
    path = rec.write(tmp_path / "out" / "call.wav")
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth(), wav.getnframes()) == (2, 8000, 2, 320)
        samples = np.frombuffer(wav.readframes(320), dtype="<i2").reshape(-1, 2)
    assert np.abs(samples[:160, 0]).max() > 5000 and np.abs(samples[:160, 1]).max() < 10
    assert np.abs(samples[160:, 1]).max() > 5000 and np.abs(samples[160:, 0]).max() < 10
