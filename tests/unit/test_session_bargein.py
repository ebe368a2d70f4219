"""Playback tracking from mark echoes: truncation point, cap, cleared echoes, waiting for playback."""

from __future__ import annotations

import asyncio
import base64

from services.session.bargein import PlaybackTracker


def _b64(n: int) -> str:
    return base64.b64encode(b"\xff" * n).decode()


async def test_played_ms_is_the_largest_uncleared_echo_capped_at_received() -> None:
    tracker = PlaybackTracker(8)
    for _ in range(5):
        tracker.on_audio_delta("item_a", "resp_1", _b64(800))  # 5 × 100 ms
    await tracker.on_mark("item_a", 800, False)
    await tracker.on_mark("item_a", 2400, False)
    await tracker.on_mark("item_a", 1600, False)  # out-of-order echo does not move it back
    await tracker.on_mark("item_a", 4000, True)   # cleared: not played
    assert tracker.played_ms("item_a") == 300
    await tracker.on_mark("item_a", 99_999, False)  # cannot exceed what was received
    assert tracker.played_ms("item_a") == 500
    assert tracker.played_ms("unknown") == 0


async def test_unplayed_and_response_items() -> None:
    tracker = PlaybackTracker(8)
    tracker.on_audio_delta("a", "r1", _b64(1600))
    tracker.on_audio_delta("b", "r1", _b64(800))
    tracker.on_audio_delta("c", "r2", _b64(800))
    assert tracker.current is not None and tracker.current.item_id == "c"
    assert tracker.response_items("r1") == ["a", "b"]
    await tracker.on_mark("a", 800, False)
    assert tracker.unplayed_ms(["a", "b"]) == 200
    await tracker.on_mark("b", 0, True)
    assert tracker.unplayed_ms(["a", "b"]) == 100


async def test_wait_played_wakes_on_echo_and_times_out_without() -> None:
    tracker = PlaybackTracker(8)
    tracker.on_audio_delta("a", "r1", _b64(1600))
    assert not await tracker.wait_played(["a"], timeout=0.05)
    waiter = asyncio.create_task(tracker.wait_played(["a"], timeout=5))
    await asyncio.sleep(0)
    await tracker.on_mark("a", 800, False)
    assert not waiter.done()
    await tracker.on_mark("a", 1600, False)
    assert await waiter


async def test_wait_settled_ends_on_a_cleared_echo() -> None:
    tracker = PlaybackTracker(8)
    tracker.on_audio_delta("a", "r1", _b64(1600))
    waiter = asyncio.create_task(tracker.wait_settled("a", timeout=5))
    await tracker.on_mark("a", 480, False)
    await tracker.on_mark("a", 960, True)
    assert await waiter
    assert tracker.played_ms("a") == 60
