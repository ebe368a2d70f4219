"""The response gate: never two concurrent response.create."""

from __future__ import annotations

from typing import Any

from services.session.model import ModelClosedError
from services.session.responses import ResponseGate


class Recorder:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.down = False

    async def __call__(self, event: dict[str, Any]) -> None:
        if self.down:
            raise ModelClosedError("down")
        self.sent.append(event)


async def test_sends_when_idle_and_queues_while_busy() -> None:
    rec = Recorder()
    gate = ResponseGate(rec)
    first = await gate.request({"instructions": "greet"})
    assert [e["event_id"] for e in rec.sent] == [first]
    assert rec.sent[0] == {"type": "response.create", "event_id": first, "response": {"instructions": "greet"}}
    second = await gate.request()
    third = await gate.request()  # identical plain create is coalesced
    assert second == third
    assert len(rec.sent) == 1 and gate.queued == 1
    assert await gate.on_created("resp_1") == first
    await gate.on_done("resp_1")
    assert [e["event_id"] for e in rec.sent] == [first, second]
    assert await gate.on_created("resp_2") == second


async def test_server_started_response_blocks_the_gate_too() -> None:
    rec = Recorder()
    gate = ResponseGate(rec)
    assert await gate.on_created("resp_vad") is None  # server VAD response, not ours
    await gate.request()
    assert rec.sent == []
    await gate.on_done("resp_vad")
    assert len(rec.sent) == 1


async def test_active_response_error_requeues_our_create() -> None:
    rec = Recorder()
    gate = ResponseGate(rec)
    eid = await gate.request()
    await gate.on_error("conversation_already_has_active_response", eid)
    assert gate.queued == 1 and len(rec.sent) == 1
    await gate.on_done("resp_x")
    assert [e["event_id"] for e in rec.sent] == [eid, eid]


async def test_other_errors_drop_the_create_and_unrelated_errors_are_ignored() -> None:
    rec = Recorder()
    gate = ResponseGate(rec)
    eid = await gate.request()
    await gate.on_error("invalid_value", "someone_else")
    assert gate.busy
    await gate.on_error("invalid_value", eid)
    assert not gate.busy and gate.queued == 0


async def test_create_is_kept_when_the_model_is_down() -> None:
    rec = Recorder()
    rec.down = True
    gate = ResponseGate(rec)
    eid = await gate.request()
    assert gate.queued == 1 and not gate.busy and gate.sent_ids == []
    rec.down = False
    await gate.pump()
    assert [e["event_id"] for e in rec.sent] == [eid]
    gate.reset()
    assert not gate.busy
