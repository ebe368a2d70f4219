"""The local model driven by the official openai SDK: voice turns, tool calls, barge-in, manual mode and bad
input. Every server event read is validated against ``openai.types.realtime`` (``RealtimeServerEvent``)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from openai import AsyncOpenAI

from services.localmodel.demo_tools import DEMO_INSTRUCTIONS, DEMO_TOOLS
from services.localmodel.server import LocalModelServer
from shared.tts import synthesize_format
from tests.integration.localmodel_support import EventLog, b64, frames, running_server, speech_ulaw

PCMU = {"type": "audio/pcmu"}


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[LocalModelServer]:
    async with running_server() as srv:
        for _ in range(600):
            if srv.ready:
                break
            await asyncio.sleep(0.05)
        assert srv.ready
        yield srv


@pytest.fixture(scope="module")
async def realtime_server() -> AsyncIterator[LocalModelServer]:
    async with running_server(pacing="realtime") as srv:
        yield srv


def client(srv: LocalModelServer) -> AsyncOpenAI:
    return AsyncOpenAI(api_key="x", websocket_base_url=f"ws://127.0.0.1:{srv.port}/v1")


def session(**audio_input: Any) -> Any:
    return {"type": "realtime", "instructions": DEMO_INSTRUCTIONS, "tools": DEMO_TOOLS,
            "audio": {"input": {"format": PCMU, "transcription": {"model": "whisper-1"}, **audio_input},
                      "output": {"format": PCMU, "voice": "marin"}}}


async def say(conn: Any, text: str) -> None:
    for frame in frames(speech_ulaw(text), 800):
        await conn.input_audio_buffer.append(audio=b64(frame))


async def test_voice_booking_dialogue_with_tool_calls(server: LocalModelServer) -> None:
    tomorrow = (dt.date.today() + dt.timedelta(days=1)).isoformat()
    async with client(server).realtime.connect(model="gpt-realtime") as conn:
        log = EventLog(conn)
        assert (await log.next())["type"] == "session.created"
        await conn.session.update(session=session())
        updated = await log.until("session.updated")
        assert updated["session"]["audio"]["output"]["format"] == PCMU
        await conn.response.create()
        done = await log.until("response.done")
        assert "Acme Dental" in done["response"]["output"][0]["content"][0]["transcript"]

        await say(conn, "Hi, I would like to book an appointment for tomorrow at ten")
        started = await log.until("input_audio_buffer.speech_started")
        stopped = await log.until("input_audio_buffer.speech_stopped")
        assert stopped["item_id"] == started["item_id"]
        assert 0 <= started["audio_start_ms"] < stopped["audio_end_ms"]
        done = await log.until("response.done")
        asked = done["response"]["output"][0]["content"][0]["transcript"]
        assert "name" in asked.lower()
        transcripts = [e["transcript"] for e in log.events
                       if e["type"] == "conversation.item.input_audio_transcription.completed"]
        assert "book an appointment" in transcripts[-1]

        await say(conn, "My name is John Smith")
        done = await log.until("response.done")
        assert "shall i go ahead" in done["response"]["output"][0]["content"][0]["transcript"].lower()

        await say(conn, "Yes please")
        args_done = await log.until("response.function_call_arguments.done")
        assert args_done["name"] == "book_appointment"
        args = json.loads(args_done["arguments"])
        assert args["date"] == tomorrow and args["time"] == "10:00" and args["name"].startswith("John")
        item_done = await log.until("response.output_item.done")
        assert item_done["item"]["type"] == "function_call" and item_done["item"]["status"] == "completed"
        await log.until("response.done")

        await conn.conversation.item.create(item={"type": "function_call_output", "call_id": args_done["call_id"],
                                                  "output": json.dumps({"appointment_id": 42})})
        await conn.response.create()
        done = await log.until("response.done")
        spoken = done["response"]["output"][0]["content"][0]["transcript"]
        assert "booked" in spoken and "anything else" in spoken.lower()
        deltas = [e for e in log.events if e["type"] == "response.output_audio.delta"
                  and e["response_id"] == done["response"]["id"]]
        assert deltas and all(20 * 8 <= len(base64.b64decode(d["delta"])) <= 100 * 8 for d in deltas[:-1])

        await say(conn, "No, thank you")
        args_done = await log.until("response.function_call_arguments.done")
        assert args_done["name"] == "end_call"
        await log.until("response.done")
        await conn.conversation.item.create(item={"type": "function_call_output", "call_id": args_done["call_id"],
                                                  "output": "{}"})
        await conn.response.create()
        done = await log.until("response.done")
        assert "goodbye" in done["response"]["output"][0]["content"][0]["transcript"].lower()
    ids = [e["event_id"] for e in log.events]
    assert len(ids) == len(set(ids))


async def test_text_item_reaches_read_only_tool_directly(server: LocalModelServer) -> None:
    async with client(server).realtime.connect(model="gpt-realtime") as conn:
        log = EventLog(conn)
        await conn.session.update(session=session(turn_detection=None))
        await log.until("session.updated")
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Could you check availability for tomorrow?"}]})
        added = await log.until("conversation.item.added")
        assert added["item"]["role"] == "user"
        await conn.response.create(event_id="evt_rc_1")
        call = await log.until("response.function_call_arguments.done")
        assert call["name"] == "check_availability"
        assert json.loads(call["arguments"]) == {"date": (dt.date.today() + dt.timedelta(days=1)).isoformat()}
        await log.until("response.done")
        await conn.conversation.item.create(item={"type": "function_call_output", "call_id": call["call_id"],
                                                  "output": json.dumps({"error": {"message": "the diary is closed"}})})
        await conn.response.create()
        done = await log.until("response.done")
        assert "the diary is closed" in done["response"]["output"][0]["content"][0]["transcript"]


async def test_manual_commit_transcribes_and_errors_carry_event_ids(server: LocalModelServer) -> None:
    async with client(server).realtime.connect(model="gpt-realtime") as conn:
        log = EventLog(conn)
        await conn.session.update(session=session(turn_detection=None))
        await log.until("session.updated")
        await conn.input_audio_buffer.commit(event_id="evt_commit_empty")
        err = await log.until("error")
        assert err["error"]["code"] == "input_audio_buffer_commit_empty"
        assert err["error"]["event_id"] == "evt_commit_empty"
        await conn.response.cancel(event_id="evt_cancel")
        err = await log.until("error")
        assert (err["error"]["code"], err["error"]["event_id"]) == ("response_cancel_not_active", "evt_cancel")

        await say(conn, "My name is John Smith")
        await conn.input_audio_buffer.commit()
        committed = await log.until("input_audio_buffer.committed")
        completed = await log.until("conversation.item.input_audio_transcription.completed",
                                    item_id=committed["item_id"])
        assert "name is john" in completed["transcript"]
        assert "input_audio_buffer.speech_started" not in log.types()

        await conn.response.create(event_id="evt_first")
        await conn.response.create(event_id="evt_second")
        err = await log.until("error")
        assert err["error"]["code"] == "conversation_already_has_active_response"
        assert err["error"]["event_id"] == "evt_second"
        await log.until("response.done")
        await conn.conversation.item.retrieve(item_id=committed["item_id"])
        retrieved = await log.until("conversation.item.retrieved")
        assert retrieved["item"]["content"][0]["audio"]
        await conn.conversation.item.delete(item_id=committed["item_id"])
        assert (await log.until("conversation.item.deleted"))["item_id"] == committed["item_id"]
        await conn.conversation.item.delete(item_id=committed["item_id"], event_id="evt_del")
        assert (await log.until("error"))["error"]["event_id"] == "evt_del"


async def test_bad_input_gets_errors_and_the_connection_stays_usable(server: LocalModelServer) -> None:
    async with client(server).realtime.connect(model="gpt-realtime") as conn:
        log = EventLog(conn)
        ws = conn._connection  # raw frames that the SDK would refuse to build
        await ws.send("{not json")
        assert (await log.until("error"))["error"]["code"] == "invalid_event"
        await ws.send(json.dumps({"type": "no.such.event", "event_id": "e1"}))
        err = await log.until("error")
        assert (err["error"]["code"], err["error"]["event_id"]) == ("invalid_event", "e1")
        await ws.send(json.dumps({"type": "conversation.item.truncate", "item_id": 5, "content_index": "x",
                                  "audio_end_ms": 1}))
        assert (await log.until("error"))["error"]["code"] == "invalid_type"
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "temperature": 0.7}}))
        err = await log.until("error")
        assert (err["error"]["code"], err["error"]["param"]) == ("unknown_parameter", "session.temperature")
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (21 * 1024 * 1024)}))
        assert (await log.until("error"))["error"]["code"] == "invalid_value"
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "!!notbase64"}))
        assert (await log.until("error"))["error"]["code"] == "invalid_value"
        await conn.session.update(session=cast(Any, {"type": "realtime", "instructions": "Greeting: Still here."}))
        await log.until("session.updated")
        await conn.response.create()
        done = await log.until("response.done")
        assert done["response"]["output"][0]["content"][0]["transcript"] == "Still here."


async def test_pcm24k_in_and_out(server: LocalModelServer) -> None:
    pcm = synthesize_format("Yes please", "audio/pcm;rate=24000")
    fmt = {"type": "audio/pcm", "rate": 24000}
    async with client(server).realtime.connect(model="gpt-realtime") as conn:
        log = EventLog(conn)
        await conn.session.update(session=cast(Any, {"type": "realtime", "audio": {
            "input": {"format": fmt, "transcription": {"model": "x"}}, "output": {"format": fmt}}}))
        await log.until("session.updated")
        audio = bytes(48 * 300) + pcm + bytes(48 * 900)
        for frame in frames(audio, 4800):
            await conn.input_audio_buffer.append(audio=b64(frame))
        completed = await log.until("conversation.item.input_audio_transcription.completed")
        assert completed["transcript"] == "yes please"
        delta = await log.until("response.output_audio.delta")
        assert len(base64.b64decode(delta["delta"])) % 2 == 0
        await log.until("response.done")


async def test_barge_in_cancels_and_truncate(realtime_server: LocalModelServer) -> None:
    long_greeting = "Greeting: " + " ".join(["Thank you for calling, we are very happy to hear from you."] * 4)
    async with client(realtime_server).realtime.connect(model="gpt-realtime") as conn:
        log = EventLog(conn)
        no_auto = {"type": "server_vad", "create_response": False, "interrupt_response": True}
        await conn.session.update(session=cast(Any, {**session(turn_detection=no_auto), "instructions": long_greeting}))
        await log.until("session.updated")
        await conn.response.create()
        first = await log.until("response.output_audio.delta")
        for _ in range(5):
            await log.until("response.output_audio.delta")
        await say(conn, "Wait, stop")
        started = await log.until("input_audio_buffer.speech_started")
        done = await log.until("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        assert log.events.index(started) < log.events.index(done)
        item = done["response"]["output"][0]
        assert item["status"] == "incomplete"
        await conn.conversation.item.truncate(item_id=first["item_id"], content_index=0, audio_end_ms=100)
        truncated = await log.until("conversation.item.truncated")
        assert truncated["audio_end_ms"] == 100
        await conn.conversation.item.truncate(item_id=first["item_id"], content_index=0, audio_end_ms=60_000,
                                              event_id="evt_trunc")
        err = await log.until("error")
        assert err["error"]["code"] == "invalid_value" and "shorter" in err["error"]["message"]
        assert err["error"]["event_id"] == "evt_trunc"
        await conn.response.create()
        await log.until("response.created")
        await conn.response.cancel()
        done = await log.until("response.done")
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
