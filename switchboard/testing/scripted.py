"""A scripted, realistic call published through the bus — for the recorder's tests, benchmark and docs.

:func:`script` yields the steps of one μ-law Twilio call exactly as the gateway and the session publish
them (docs/architecture.md, "Subjects and streams"; Realtime GA shapes from
https://platform.openai.com/docs/api-reference/realtime): ``call.<id>.started``, the
session's ``session.disclosure`` (completed) and ``session.update``, caller audio as
``input_audio_buffer.append`` (20 ms frames of real G.711
μ-law of a tone), VAD events, an input transcription, a ``book_appointment`` function call and its output,
an agent audio reply with transcript and marks, a barge-in (``speech_started`` → ``command.clear`` →
``conversation.item.truncate`` → cleared mark → ``response.done`` cancelled), the session summary and
``call.<id>.ended``. :func:`publish_call` publishes them with ``Bus.publish_event``, pacing audio at
``speed`` × real time.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from shared import audio, subjects
from shared.bus import Bus
from shared.contracts import (
    CallEnded,
    CallStarted,
    CarrierMark,
    CommandClear,
    SessionDisclosure,
    SessionModelConnected,
    SessionSummary,
)

__all__ = ["FRAME_BYTES", "Step", "publish_call", "script", "tone"]

FRAME_BYTES = 160
"""One 20 ms μ-law frame at 8 kHz."""

USAGE: dict[str, Any] = {"total_tokens": 253, "input_tokens": 132, "output_tokens": 121,
         "input_token_details": {"text_tokens": 119, "audio_tokens": 13, "image_tokens": 0, "cached_tokens": 64,
                                 "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0}},
         "output_token_details": {"text_tokens": 30, "audio_tokens": 91}}


def tone(freq_hz: float, ms: int, amplitude: int = 8000) -> bytes:
    """``ms`` milliseconds of a sine at ``freq_hz`` as G.711 μ-law (8 kHz)."""
    n = ms * 8
    samples = (amplitude * np.sin(2 * np.pi * freq_hz * np.arange(n) / 8000.0)).astype(np.int16)
    return audio.ulaw_encode(samples)


@dataclass(frozen=True, slots=True)
class Step:
    """Publish ``payload`` on ``subject`` as ``source`` (``gateway``/``session``), then wait ``after_ms``."""

    source: str
    subject: str
    payload: dict[str, Any]
    after_ms: float = 0.0


def _frames(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), FRAME_BYTES):
        yield data[i:i + FRAME_BYTES]


def script(call_id: str, *, run_id: str = "scripted") -> list[Step]:
    """The steps of the scripted call (see the module docstring)."""
    steps: list[Step] = []
    ev = 0

    def server(kind: str, after_ms: float = 0.0, **fields: Any) -> None:
        nonlocal ev
        ev += 1
        steps.append(Step("session", subjects.rt_server(call_id, kind),
                          {"type": kind, "event_id": f"event_{ev}", **fields}, after_ms))

    def client(kind: str, after_ms: float = 0.0, **fields: Any) -> None:
        steps.append(Step("session", subjects.rt_client(call_id, kind), {"type": kind, **fields}, after_ms))

    def caller_audio(data: bytes) -> None:
        for frame in _frames(data):
            client("input_audio_buffer.append", 20.0, audio=base64.b64encode(frame).decode())

    def agent_audio(resp: str, item: str, data: bytes, text: str) -> None:
        words = text.split(" ")
        for i, frame in enumerate(_frames(data)):
            server("response.output_audio.delta", response_id=resp, item_id=item, output_index=0,
                   content_index=0, delta=base64.b64encode(frame).decode())
            if i < len(words):
                server("response.output_audio_transcript.delta", response_id=resp, item_id=item, output_index=0,
                       content_index=0, delta=(" " if i else "") + words[i])

    fmt = {"type": "audio/pcmu"}
    steps.append(Step("gateway", subjects.call_started(call_id), CallStarted(
        call_id=call_id, carrier="twilio", agent="receptionist", audio_format="audio/pcmu",
        from_="+15551230001", to="+15559870000", carrier_call_id="CA" + "0" * 32,
        stream_id="MZ" + "1" * 32, custom_parameters={"run_id": run_id},
        started_at=datetime.now(UTC).isoformat()).encode()))
    steps.append(Step("session", subjects.session_event(call_id, "model_connected"), SessionModelConnected(
        call_id=call_id, session_id="sess_1", model="gpt-realtime", billed=True, agent="receptionist").encode()))
    steps.append(Step("session", subjects.session_disclosure(call_id), SessionDisclosure(
        call_id=call_id, status="completed", text="You are speaking with an AI assistant.",
        item_id=f"disclosure_{call_id}", audio_format="audio/pcmu", audio_bytes=16000, audio_ms=2000,
        played_bytes=16000, played_ms=2000, started_at=time.time(), finished_at=time.time(),
        gate_recording=True).encode()))
    client("session.update", session={
        "type": "realtime", "model": "gpt-realtime", "instructions": "You are a receptionist.",
        "output_modalities": ["audio"],
        "audio": {"input": {"format": fmt, "turn_detection": {"type": "server_vad"}},
                  "output": {"format": fmt, "voice": "marin"}},
        "tools": [{"type": "function", "name": "book_appointment", "description": "Book",
                   "parameters": {"type": "object", "properties": {"time": {"type": "string"}}}}]})
    server("session.created", session={"type": "realtime", "id": "sess_1"})
    server("session.updated", session={"type": "realtime", "id": "sess_1"})
    # turn 1: caller asks; the model calls a tool
    caller_audio(tone(440, 1000) + audio.silence(audio.PCMU, 600))
    server("input_audio_buffer.speech_started", audio_start_ms=0, item_id="item_u1")
    server("input_audio_buffer.speech_stopped", audio_end_ms=1500, item_id="item_u1")
    server("input_audio_buffer.committed", item_id="item_u1", previous_item_id=None)
    server("conversation.item.input_audio_transcription.completed", item_id="item_u1", content_index=0,
           transcript="I would like to book an appointment for tomorrow at ten")
    server("response.created", response={"id": "resp_1", "status": "in_progress", "output": [], "usage": None})
    args = '{"date":"tomorrow","time":"10:00"}'
    server("response.output_item.added", response_id="resp_1", output_index=0, item={
        "id": "item_fc1", "type": "function_call", "status": "in_progress", "name": "book_appointment",
        "call_id": "call_abc", "arguments": ""})
    server("response.function_call_arguments.done", response_id="resp_1", item_id="item_fc1", output_index=0,
           call_id="call_abc", name="book_appointment", arguments=args)
    server("response.done", 30.0, response={"id": "resp_1", "status": "completed", "usage": USAGE})
    client("conversation.item.create", item={"type": "function_call_output", "call_id": "call_abc",
                                             "output": '{"booked":true,"ref":"A1"}'})
    client("response.create")
    # the agent confirms (1 s of audio), the caller stays silent meanwhile
    server("response.created", response={"id": "resp_2", "status": "in_progress", "output": [], "usage": None})
    text = "Your appointment is booked for tomorrow at ten."
    agent_audio("resp_2", "item_a1", tone(300, 1000), text)
    server("response.output_audio.done", response_id="resp_2", item_id="item_a1", output_index=0, content_index=0)
    server("response.output_audio_transcript.done", response_id="resp_2", item_id="item_a1", output_index=0,
           content_index=0, transcript=text)
    server("response.done", response={"id": "resp_2", "status": "completed", "usage": USAGE})
    caller_audio(audio.silence(audio.PCMU, 1000))
    steps.append(Step("gateway", subjects.carrier_mark(call_id),
                      CarrierMark(name="m1", item_id="item_a1", played_bytes=8000, cleared=False).encode()))
    # turn 2: the agent speaks 2 s; the caller barges in after 0.5 s
    server("response.created", response={"id": "resp_3", "status": "in_progress", "output": [], "usage": None})
    agent_audio("resp_3", "item_a2", tone(350, 2000), "Is there anything else I can help you with today?")
    caller_audio(audio.silence(audio.PCMU, 500) + tone(500, 600))
    server("input_audio_buffer.speech_started", audio_start_ms=3600, item_id="item_u2")
    steps.append(Step("session", subjects.command(call_id, "clear"),
                      CommandClear(reason="barge_in", item_id="item_a2", response_id="resp_3").encode()))
    client("conversation.item.truncate", item_id="item_a2", content_index=0, audio_end_ms=500)
    steps.append(Step("gateway", subjects.carrier_mark(call_id),
                      CarrierMark(name="m2", item_id="item_a2", played_bytes=4000, cleared=True).encode()))
    server("conversation.item.truncated", item_id="item_a2", content_index=0, audio_end_ms=500)
    server("response.done", response={"id": "resp_3", "status": "cancelled",
                                      "status_details": {"type": "cancelled", "reason": "turn_detected"},
                                      "usage": USAGE})
    caller_audio(audio.silence(audio.PCMU, 400))
    server("input_audio_buffer.speech_stopped", audio_end_ms=4700, item_id="item_u2")
    server("conversation.item.input_audio_transcription.completed", item_id="item_u2", content_index=0,
           transcript="No thanks, bye")
    steps.append(Step("session", subjects.session_event(call_id, "summary"), SessionSummary(
        call_id=call_id, agent="receptionist", turns={"user": 2, "assistant": 3, "responses": {"completed": 2,
                                                                                             "cancelled": 1}},
        barge_ins=1, ended_reason="caller_hangup").encode()))
    steps.append(Step("gateway", subjects.call_ended(call_id), CallEnded(
        reason="caller_hangup", duration_ms=6000, carrier="twilio", carrier_call_id="CA" + "0" * 32,
        stream_id="MZ" + "1" * 32).encode()))
    return steps


async def publish_call(gateway: Bus, session: Bus, call_id: str, *, speed: float = 1.0,
                       steps: list[Step] | None = None) -> int:
    """Publish the scripted call (JetStream, acks checked off-path); returns how many events were published.

    Sleeps ``after_ms / speed`` after a step; with ``speed <= 0`` nothing sleeps (as fast as possible).
    """
    count = 0
    for step in steps if steps is not None else script(call_id):
        bus = gateway if step.source == "gateway" else session
        await bus.publish_event(step.subject, step.payload, call_id=call_id)
        count += 1
        if step.after_ms and speed > 0:
            await asyncio.sleep(step.after_ms / 1000.0 / speed)
    return count
