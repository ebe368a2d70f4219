"""Audio batching for input_audio_buffer.append and the early-audio buffer."""

from __future__ import annotations

import base64
import json

from hypothesis import given
from hypothesis import strategies as st

from services.session.audio import AudioBatcher, append_event
from services.session.bargein import b64_decoded_len


def test_append_event_is_the_realtime_client_event() -> None:
    audio = bytes(range(256)) * 2
    event = json.loads(append_event(audio))
    assert event == {"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode()}


def test_batches_two_twenty_ms_frames_into_one_append() -> None:
    batcher = AudioBatcher(8, min_ms=40)
    batcher.ready = True
    assert batcher.push(b"\x01" * 160) is None
    chunk = batcher.push(b"\x02" * 160)
    assert chunk == b"\x01" * 160 + b"\x02" * 160
    assert batcher.buffered == 0


def test_early_audio_is_kept_in_order_until_ready_and_bounded() -> None:
    batcher = AudioBatcher(8, min_ms=40, max_buffer_ms=100)  # 800 bytes
    for n in range(10):
        assert batcher.push(bytes([n]) * 160) is None
    # 1600 bytes pushed, 800 kept: the oldest frames were dropped and counted
    assert batcher.buffered == 800
    assert batcher.dropped_bytes == 800
    batcher.ready = True
    assert b"".join(batcher.drain(max_chunk_bytes=300)) == b"".join(bytes([n]) * 160 for n in range(5, 10))


def test_requeued_chunk_goes_ahead_of_newer_audio() -> None:
    batcher = AudioBatcher(8)
    batcher.push(b"new")
    batcher.requeue(b"old")
    assert batcher.take() == b"oldnew"


@given(st.lists(st.binary(min_size=1, max_size=400), max_size=40), st.integers(1, 100))
def test_batching_loses_and_reorders_nothing(frames: list[bytes], min_ms: int) -> None:
    batcher = AudioBatcher(8, min_ms=min_ms)
    batcher.ready = True
    out: list[bytes] = []
    for frame in frames:
        chunk = batcher.push(frame)
        if chunk is not None:
            assert len(chunk) >= 8 * min_ms
            out.append(chunk)
    out.append(batcher.take())
    assert b"".join(out) == b"".join(frames)


@given(st.binary(max_size=2000))
def test_b64_decoded_len_matches_decoding(data: bytes) -> None:
    assert b64_decoded_len(base64.b64encode(data).decode()) == len(data)
