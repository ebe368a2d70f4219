"""The local model answers a sentence the VAD split at a pause ("Good afternoon." + a request) with the request's
next step, and a text "Say hello." with a greeting (over a real WebSocket). The race where the second segment
cancels the first one's response before it starts (it used to leave the session silent for good) is exercised
by bench/hearing.py's cases, not reproduced deterministically here."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from services.localmodel.demo_tools import DEMO_INSTRUCTIONS, DEMO_TOOLS
from tests.integration.localmodel_support import running_server, speech_ulaw, validate


async def until(ws: ClientConnection, kind: str, seen: list[dict[str, Any]], timeout: float = 60) -> dict[str, Any]:
    """Read (and validate) server events until one of type ``kind``."""
    while True:
        event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        validate(event)
        seen.append(event)
        if event["type"] == kind:
            return event


SESSION = {"type": "realtime", "instructions": DEMO_INSTRUCTIONS, "tools": DEMO_TOOLS,
           "audio": {"input": {"format": {"type": "audio/pcmu"}, "transcription": {"model": "whisper-1"},
                               "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}},
                     "output": {"format": {"type": "audio/pcmu"}}}}


async def test_a_sentence_split_at_a_pause_is_one_request() -> None:
    async with running_server() as server, connect(f"ws://127.0.0.1:{server.port}/v1/realtime") as ws:
        seen: list[dict[str, Any]] = []
        await ws.send(json.dumps({"type": "session.update", "session": SESSION}))
        await until(ws, "session.updated", seen)
        # "Good afternoon." + 600 ms pause (longer than silence_duration_ms) + the request, sent at once
        audio = speech_ulaw("Good afternoon", tail_ms=600) + speech_ulaw(
            "I would like to book an appointment for tomorrow at ten", pad_ms=0)
        for i in range(0, len(audio), 800):
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(audio[i:i + 800]).decode()}))
        transcripts: list[str] = []
        while True:
            event = await until(ws, "response.done", seen)
            transcripts = [e["transcript"] for e in seen
                           if e["type"] == "response.output_audio_transcript.done"]
            if event["response"]["status"] == "completed":
                break
        committed = [e for e in seen if e["type"] == "input_audio_buffer.committed"]
        assert len(committed) == 2, [e["type"] for e in seen]
        assert transcripts[-1] == "May I have your name, please?"  # the booking request was understood


async def test_say_hello_text_item_gets_a_greeting() -> None:
    async with running_server() as server, connect(f"ws://127.0.0.1:{server.port}/v1/realtime") as ws:
        seen: list[dict[str, Any]] = []
        session = dict(SESSION, output_modalities=["text"])
        await ws.send(json.dumps({"type": "session.update", "session": session}))
        await until(ws, "session.updated", seen)
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}}))
        await ws.send(json.dumps({"type": "response.create"}))
        done = await until(ws, "response.done", seen)
        text = done["response"]["output"][0]["content"][0]
        assert "Hello! How can I help you today?" in json.dumps(text)
