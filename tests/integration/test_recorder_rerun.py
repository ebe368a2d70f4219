"""``replay --rerun`` against a real WebSocket server speaking the Realtime GA protocol on loopback: the
logged session.update and caller audio are sent, the model's function call is answered with the output the
original call got, and the verdict follows the tool calls the server makes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from services.recorder.rerun import (
    agent_session_update,
    compare,
    extract_run,
    logged_audio_format,
    logged_session_update,
    rerun,
)
from switchboard.testing.scripted import script
from tests.unit.test_recorder_projections import events_from


class FakeModel:
    """Answers session.update, and after ``turn_frames`` appended frames calls ``tool(args)``."""

    def __init__(self, args: dict[str, Any], turn_frames: int = 80) -> None:
        self.args = args
        self.turn_frames = turn_frames
        self.received: list[dict[str, Any]] = []
        self.headers: dict[str, str] = {}

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.headers = dict(ws.request.headers)
        frames = 0
        n = 0

        async def send(kind: str, **fields: Any) -> None:
            nonlocal n
            n += 1
            await ws.send(json.dumps({"type": kind, "event_id": f"ev{n}", **fields}))

        async for raw in ws:
            msg = json.loads(raw)
            self.received.append(msg)
            if msg["type"] == "session.update":
                await send("session.updated", session=msg["session"])
            elif msg["type"] == "input_audio_buffer.append":
                frames += 1
                if frames == self.turn_frames:
                    await send("conversation.item.input_audio_transcription.completed", item_id="u1",
                               content_index=0, transcript="I would like to book an appointment for tomorrow at ten")
                    await send("response.created", response={"id": "r1", "status": "in_progress"})
                    await send("response.output_item.done", response_id="r1", output_index=0, item={
                        "id": "fc9", "type": "function_call", "status": "completed", "name": "book_appointment",
                        "call_id": "call_other_id", "arguments": json.dumps(self.args)})
                    await send("response.done", response={"id": "r1", "status": "completed"})
            elif msg["type"] == "response.create":
                await send("response.created", response={"id": "r2", "status": "in_progress"})
                await send("response.output_audio_transcript.done", response_id="r2", item_id="a9", output_index=0,
                           content_index=0, transcript="Your appointment is booked for tomorrow at ten.")
                await send("response.done", response={"id": "r2", "status": "completed"})


@pytest.fixture
async def model_url(request: pytest.FixtureRequest) -> AsyncIterator[tuple[FakeModel, str]]:
    model = FakeModel(request.param)
    async with serve(model.handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield model, f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"


@pytest.mark.parametrize("model_url", [{"date": "tomorrow", "time": "10:00"}], indirect=True)
async def test_rerun_with_the_same_tool_call_is_equivalent(model_url: tuple[FakeModel, str]) -> None:
    model, url = model_url
    events = events_from(script("CArr1"), "CArr1")
    result = await rerun(events, url, headers={"Authorization": "Bearer local"}, speed=50, idle_s=0.5, timeout_s=60)
    assert model.headers.get("authorization") == "Bearer local"
    assert model.received[0]["type"] == "session.update"
    appends = [m for m in model.received if m["type"] == "input_audio_buffer.append"]
    logged = [e for e in events if e.type == "input_audio_buffer.append"]
    assert [a["audio"] for a in appends] == [json.loads(e.body)["audio"] for e in logged]
    output = next(m for m in model.received if m["type"] == "conversation.item.create")
    assert output["item"] == {"type": "function_call_output", "call_id": "call_other_id",
                              "output": '{"booked":true,"ref":"A1"}'}
    verdict = compare(extract_run(events), result)
    assert verdict.equivalent, verdict.differences
    assert verdict.agent_similarity < 1.0  # the rerun's agent said less than the original


@pytest.mark.parametrize("model_url", [{"date": "tomorrow", "time": "11:00"}], indirect=True)
async def test_rerun_with_other_arguments_is_not_equivalent(model_url: tuple[FakeModel, str]) -> None:
    _, url = model_url
    events = events_from(script("CArr2"), "CArr2")
    result = await rerun(events, url, speed=50, idle_s=0.5, timeout_s=60)
    verdict = compare(extract_run(events), result)
    assert not verdict.equivalent
    assert "11:00" in verdict.differences[0]


async def test_rerun_refuses_a_call_without_audio() -> None:
    events = [e for e in events_from(script("CArr3"), "CArr3") if e.type != "input_audio_buffer.append"]
    with pytest.raises(ValueError, match="caller audio"):
        await rerun(events, "ws://127.0.0.1:9/none")


async def test_current_agent_session_update_reuses_the_session_services_spec(tmp_path: Path, nats_url: str) -> None:
    agent = tmp_path / "agent.yaml"
    agent.write_text("name: frontdesk\ninstructions: Be brief and kind.\nvoice: cedar\n"
                     "tools: [book_appointment]\n", encoding="utf-8")
    events = events_from(script("CArr4"), "CArr4")
    logged = logged_session_update(events)
    update = await agent_session_update(agent, nats_url, audio_format=logged_audio_format(events), model=None,
                                        logged=logged)
    session = update["session"]
    assert update["type"] == "session.update" and session["type"] == "realtime"
    assert session["instructions"] == "Be brief and kind."
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["voice"] == "cedar"
    # no tool worker registered book_appointment on this NATS: its schema comes from the logged session.update
    assert [t["name"] for t in session["tools"]] == ["book_appointment"]
