"""The supervisor's live view of a call: Server-Sent Events fed from the bus.

``GET /calls/{id}/live/events`` first replays the transcript so far (from the archive), then forwards, as
they are published on NATS, the call's user transcripts, agent transcript deltas, tool calls, barge-ins and
its end. Event names: ``turn`` (``{role, text, item_id}``), ``delta`` (``{item_id, delta}``), ``tool``
(``{name, arguments}``), ``speech_started``, ``ended`` (``{reason}``); data is JSON (SSE spec:
https://html.spec.whatwg.org/multipage/server-sent-events.html).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from services.recorder.projections import project
from services.recorder.queries import call_events
from shared import subjects
from shared.bus import Bus, Envelope

__all__ = ["LIVE_SERVER_EVENTS", "live_stream", "sse"]

LIVE_SERVER_EVENTS = (
    "conversation.item.input_audio_transcription.completed",
    "response.output_audio_transcript.delta",
    "response.output_audio_transcript.done",
    "response.output_text.done",
    "response.function_call_arguments.done",
    "input_audio_buffer.speech_started",
)
"""Realtime server event types the live page follows."""


def sse(event: str, data: Any) -> bytes:
    """One Server-Sent Event frame (``event:`` + one ``data:`` line of JSON)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _translate(env: Envelope) -> tuple[str, dict[str, Any]] | None:
    try:
        body = env.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    parsed = subjects.parse(env.subject)
    if parsed.kind == "call":
        return ("ended", {"reason": body.get("reason")}) if parsed.rest == "ended" else None
    kind = parsed.rest
    item = body.get("item_id")
    if kind == "conversation.item.input_audio_transcription.completed":
        return "turn", {"role": "user", "text": body.get("transcript", ""), "item_id": item}
    if kind == "response.output_audio_transcript.delta":
        return "delta", {"item_id": item, "delta": body.get("delta", "")}
    if kind == "response.output_audio_transcript.done":
        return "turn", {"role": "assistant", "text": body.get("transcript", ""), "item_id": item}
    if kind == "response.output_text.done":
        return "turn", {"role": "assistant", "text": body.get("text", ""), "item_id": item}
    if kind == "response.function_call_arguments.done":
        return "tool", {"name": body.get("name"), "arguments": body.get("arguments")}
    if kind == "input_audio_buffer.speech_started":
        return "speech_started", {"item_id": item}
    return None


ENDED_GRACE_S = 0.3
"""After ``call.<id>.ended`` arrives, how long (s) the stream keeps forwarding events still in flight.

Each NATS subscription delivers through its own task, so a transcript delta published just before the end
may be handled after the end; the stream waits until no event has arrived for this long before ``ended``."""


async def live_stream(bus: Bus | None, engine: Any, call_id: str, *,
                      heartbeat_s: float = 15.0) -> AsyncIterator[bytes]:
    """SSE frames for ``call_id``: the archived transcript so far, then live events until the call ends
    (events still in flight when the end arrives are forwarded first, see :data:`ENDED_GRACE_S`)."""
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=10_000)
    subs = []

    async def handler(env: Envelope) -> None:
        item = _translate(env)
        if item is not None:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(item)

    try:
        if bus is not None:
            for kind in LIVE_SERVER_EVENTS:
                subs.append(await bus.subscribe(subjects.rt_server(call_id, kind), handler, traced=False))
            subs.append(await bus.subscribe(subjects.call_ended(call_id), handler, traced=False))
        events = await call_events(engine, call_id)
        projection = await asyncio.to_thread(project, events, with_audio=False)
        for turn in projection.turns:
            yield sse("turn", {"role": turn.role, "text": turn.text, "item_id": turn.item_id, "archived": True})
        if any(e.direction is None and e.type == "ended" for e in events):
            yield sse("ended", {"archived": True})
            return
        yield sse("live", {"call_id": call_id})
        while True:
            try:
                event, data = await asyncio.wait_for(queue.get(), heartbeat_s)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if event != "ended":
                yield sse(event, data)
                continue
            while True:
                try:
                    late, late_data = await asyncio.wait_for(queue.get(), ENDED_GRACE_S)
                except TimeoutError:
                    break
                if late != "ended":
                    yield sse(late, late_data)
            yield sse(event, data)
            return
    finally:
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
