"""The supervisor's live view of a call: Server-Sent Events fed from the bus.

``GET /calls/{id}/live/events`` first replays the transcript and tool calls so far (from the archive, in
time order), then forwards, as they are published on NATS, the call's user transcripts, agent transcript
deltas, tool calls and results, barge-ins and its end. Event names: ``turn`` (``{role, text, item_id}``),
``delta`` (``{item_id, delta}``), ``tool`` (``{name, arguments, tool_call_id}``, archived ones with
``output``), ``tool_result`` (``{tool_call_id, output}``), ``speech_started``, ``ended`` (``{reason}``); data
is JSON (SSE spec: https://html.spec.whatwg.org/multipage/server-sent-events.html).

No duplicates: the subscriptions start before the archive is read, so an event can be both archived and
queued; a queued session event whose ``Switchboard-Seq`` is at or below the highest archived session seq is
dropped. A page opened mid-turn therefore gets the turn's archived text once, then only the newer deltas
(``delta`` appends to the turn with the same ``item_id``; ``turn`` replaces its text).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from services.recorder.projections import project
from services.recorder.queries import call_events
from services.recorder.vault import Vault
from shared import subjects
from shared.bus import Bus, Envelope
from shared.contracts import CallEnded, ContractError

__all__ = ["LIVE_CLIENT_EVENTS", "LIVE_SERVER_EVENTS", "live_stream", "sse"]

LIVE_CLIENT_EVENTS = ("conversation.item.create",)
"""Realtime client event types the live page follows (tool results: ``function_call_output`` items)."""
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
        if parsed.rest != "ended":
            return None
        try:
            return "ended", {"reason": CallEnded.parse(body).reason}
        except ContractError:
            return "ended", {"reason": None}
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
        return "tool", {"name": body.get("name"), "arguments": body.get("arguments"),
                        "tool_call_id": body.get("call_id")}
    if kind == "conversation.item.create":
        created = body.get("item")
        if isinstance(created, dict) and created.get("type") == "function_call_output":
            return "tool_result", {"tool_call_id": created.get("call_id"), "output": created.get("output")}
        return None
    if kind == "input_audio_buffer.speech_started":
        return "speech_started", {"item_id": item}
    return None


ENDED_GRACE_S = 0.3
"""After ``call.<id>.ended`` arrives, how long (s) the stream keeps forwarding events still in flight.

Each NATS subscription delivers through its own task, so a transcript delta published just before the end
may be handled after the end; the stream waits until no event has arrived for this long before ``ended``."""


async def live_stream(bus: Bus | None, engine: Any, call_id: str, *,
                      heartbeat_s: float = 15.0, vault: Vault | None = None) -> AsyncIterator[bytes]:
    """SSE frames for ``call_id``: the archived transcript so far (content opened with ``vault``), then live
    events until the call ends (events still in flight when the end arrives are forwarded first, see
    :data:`ENDED_GRACE_S`)."""
    queue: asyncio.Queue[tuple[str, dict[str, Any], int | None]] = asyncio.Queue(maxsize=10_000)
    subs = []

    async def handler(env: Envelope) -> None:
        item = _translate(env)
        if item is not None:
            seq = env.seq if env.source == "session" else None
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait((item[0], item[1], seq))

    try:
        if bus is not None:
            for kind in LIVE_SERVER_EVENTS:
                subs.append(await bus.subscribe(subjects.rt_server(call_id, kind), handler, traced=False))
            for kind in LIVE_CLIENT_EVENTS:
                subs.append(await bus.subscribe(subjects.rt_client(call_id, kind), handler, traced=False))
            subs.append(await bus.subscribe(subjects.call_ended(call_id), handler, traced=False))
        events = await call_events(engine, call_id, vault=vault)
        projection = await asyncio.to_thread(project, events, with_audio=False)
        archived_seq = max((e.seq or 0 for e in events if e.source == "session"), default=0)
        replay: list[tuple[int, int, str, dict[str, Any]]] = [
            (t.start_ms if t.start_ms is not None else 1 << 62, i, "turn",
             {"role": t.role, "text": t.text, "item_id": t.item_id, "archived": True})
            for i, t in enumerate(projection.turns)]
        replay += [(c.requested_ms if c.requested_ms is not None else 1 << 62, len(replay) + i, "tool",
                    {"name": c.name, "arguments": c.arguments, "tool_call_id": c.tool_call_id, "output": c.output,
                     "archived": True}) for i, c in enumerate(projection.tool_calls)]
        for _, _, event_name, data in sorted(replay, key=lambda r: (r[0], r[1])):
            yield sse(event_name, data)
        if any(e.direction is None and e.type == "ended" for e in events):
            yield sse("ended", {"archived": True})
            return
        yield sse("live", {"call_id": call_id})
        while True:
            try:
                event, data, seq = await asyncio.wait_for(queue.get(), heartbeat_s)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if seq is not None and seq <= archived_seq:
                continue  # already in the archived replay
            if event != "ended":
                yield sse(event, data)
                continue
            while True:
                try:
                    late, late_data, late_seq = await asyncio.wait_for(queue.get(), ENDED_GRACE_S)
                except TimeoutError:
                    break
                if late != "ended" and (late_seq is None or late_seq > archived_seq):
                    yield sse(late, late_data)
            yield sse(event, data)
            return
    finally:
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
