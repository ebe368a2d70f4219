"""The recording leaves out agent audio and commands of a stale owner epoch (issue 22): after a takeover the
previous owner's late audio and ``command.clear`` were dropped by the gateway, so the caller never heard them."""

from __future__ import annotations

import base64

import orjson

from services.recorder.recording import render
from services.recorder.records import ArchivedEvent, classify
from shared.bus import Headers
from shared.fencing import OwnerFence
from switchboard.testing.scripted import tone

T0 = 1_800_000_000_000_000_000
CALL = "CAepoch"


def _event(i: int, at_ms: float, subject: str, body: dict[str, object], epoch: int | None) -> ArchivedEvent:
    cid, direction, kind = classify(subject, {})
    headers = {} if epoch is None else {Headers.EPOCH: str(epoch)}
    ts = T0 + int(at_ms * 1_000_000)
    return ArchivedEvent("RT" if subject.startswith("rt.") else "CALLS", i, cid, i, subject, direction, kind,
                         "session", i, None, ts, ts, None, headers, orjson.dumps(body))


def _delta(item: str, ms: int) -> dict[str, object]:
    return {"type": "response.output_audio.delta", "item_id": item,
            "delta": base64.b64encode(tone(440, ms)).decode()}


def _call(stale_epoch: int) -> list[ArchivedEvent]:
    """2 s of caller audio; epoch 1 answers, epoch 2 takes over and answers; then ``stale_epoch`` sends audio and
    a clear."""
    events = [_event(0, 0, f"call.{CALL}.started", {"call_id": CALL, "audio_format": "audio/pcmu"}, None)]
    frame = base64.b64encode(tone(300, 20)).decode()
    for n in range(100):
        events.append(_event(1 + n, 20.0 * n, f"rt.{CALL}.client.input_audio_buffer.append",
                             {"type": "input_audio_buffer.append", "audio": frame}, 1))
    events += [
        _event(200, 100, f"rt.{CALL}.server.response.output_audio.delta", _delta("item_1", 300), 1),
        _event(201, 1000, f"rt.{CALL}.server.response.output_audio.delta", _delta("item_2", 400), 2),
        _event(202, 1100, f"rt.{CALL}.server.response.output_audio.delta", _delta("item_late", 400), stale_epoch),
        _event(203, 1200, f"call.{CALL}.command.clear", {}, stale_epoch),
    ]
    return events


def test_stale_owner_audio_and_clear_are_not_in_the_recording() -> None:
    timeline = render(_call(stale_epoch=1))
    assert "item_late" not in timeline.items
    item_2 = timeline.items["item_2"]
    assert (item_2.played_bytes, item_2.interrupted) == (3200, False)  # 400 ms of μ-law, not cut by the clear


def test_the_current_owner_audio_and_clear_still_count() -> None:
    timeline = render(_call(stale_epoch=2))
    assert "item_late" in timeline.items
    assert timeline.items["item_2"].interrupted  # the owner's clear cut its queued reply


def test_fence_follows_the_highest_epoch_and_passes_unstamped_messages() -> None:
    fence = OwnerFence()
    assert fence.current({})
    assert fence.current({Headers.EPOCH: "2"})
    assert not fence.current({Headers.EPOCH: "1"})
    assert not fence.current({Headers.EPOCH: "junk"})
    assert fence.current({})  # the gateway's own messages carry no epoch
    assert fence.current({Headers.EPOCH: "3"}) and fence.epoch == 3
    assert fence.ignored == 2


def test_caller_audio_both_owners_appended_during_a_handover_is_laid_down_once() -> None:
    """Epoch 1 appends 2 s; from 1 s on, epoch 2 (the peer taking the call over) appends the same live audio
    while epoch 1 still does: the caller track is 2 s long, not 3 s. (Each frame reaches the new owner first
    here; when the old owner's copy of the first shared frame comes first, that one frame is laid down twice.)"""
    events = [_event(0, 0, f"call.{CALL}.started", {"call_id": CALL, "audio_format": "audio/pcmu"}, None)]
    frame = base64.b64encode(tone(300, 20)).decode()
    seq = 1
    for n in range(100):
        epochs = (1,) if n < 50 else (1, 2)
        for epoch in epochs:
            events.append(_event(seq, 20.0 * n + 0.05 * (2 - epoch), f"rt.{CALL}.client.input_audio_buffer.append",
                                 {"type": "input_audio_buffer.append", "audio": frame}, epoch))
            seq += 1
    timeline = render(events)
    assert len(timeline.caller) == 2 * 8000  # 8 kHz μ-law: 2 s, each frame once
