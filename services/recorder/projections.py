"""Projections of one call's archived events: transcript turns, tool calls, barge-ins and usage.

Pure functions over :class:`~services.recorder.records.ArchivedEvent` lists (no I/O), used when a call ends
(stored in ``transcript_turns``, ``tool_calls``, ``barge_ins``, ``calls``) and on demand for calls still in
progress. Event shapes: protocols.md §1.4–1.9 (Realtime GA); times are ms from the call's start.

- User turns: ``input_audio_buffer.speech_started/stopped`` (``audio_start_ms``/``audio_end_ms``, counted from
  the first caller frame) and ``conversation.item.input_audio_transcription.completed`` (``transcript``) per
  ``item_id``; typed user messages from ``conversation.item.create`` (``input_text``).
- Assistant turns: ``response.output_audio_transcript.done`` (or the deltas) / ``response.output_text.done``
  per ``item_id``, timed by the recording's playout (:mod:`services.recorder.recording`); ``interrupted`` when
  the item was cut.
- Tool calls: ``response.function_call_arguments.done`` (``name``, ``arguments``, ``call_id``) joined with
  the client's ``conversation.item.create`` of a ``function_call_output`` (same ``call_id``); an output that is
  a JSON object with an ``error`` key is the error.
- Disclosure: ``call.<id>.session.disclosure`` (services/session/disclosure.py) gives its ``status``
  (``completed``, ``interrupted``, ``unconfirmed``, ``failed``; None: the agent has none) and ``played_ms``.
- Barge-ins: a ``speech_started`` followed, before the next one, by a ``command.clear`` and/or a
  ``conversation.item.truncate``; the latency is speech_started → clear.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from services.recorder.pricing import Usage, estimate_cost
from services.recorder.recording import Timeline, render
from services.recorder.records import ArchivedEvent

__all__ = ["BargeIn", "Projection", "ToolCall", "Turn", "parse_arguments", "project"]


def parse_arguments(arguments: str) -> Any:
    """Function-call arguments as JSON (the raw string when they do not parse)."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


@dataclass(slots=True)
class Turn:
    """One transcript turn; ``role`` is ``user`` or ``assistant``."""

    role: str
    text: str
    item_id: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    interrupted: bool = False


@dataclass(slots=True)
class ToolCall:
    """One function call: ``arguments`` is the JSON string the model produced; latency in ms."""

    name: str
    arguments: str
    tool_call_id: str | None = None
    output: str | None = None
    error: str | None = None
    requested_ms: int | None = None
    completed_ms: int | None = None
    latency_ms: float | None = None

    def parsed_arguments(self) -> Any:
        """The arguments as JSON (the raw string when they do not parse)."""
        return parse_arguments(self.arguments)


@dataclass(slots=True)
class BargeIn:
    """The caller interrupted the agent at ``at_ms``."""

    at_ms: int
    item_id: str | None = None
    audio_end_ms: int | None = None
    clear_latency_ms: float | None = None


@dataclass(slots=True)
class Projection:
    """Everything projected from one call's events."""

    turns: list[Turn] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    barge_ins: list[BargeIn] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    model: str = "gpt-realtime"
    billed: bool = True
    """False when the session said ``billed: false`` in ``session.model_connected`` (no API key: local model)."""
    cost_usd: float | None = 0.0
    """Estimate in USD (:mod:`services.recorder.pricing`); None when the model is unpriced."""
    timeline: Timeline | None = None
    disclosure: str | None = None
    """Status of the call's disclosure (``session.disclosure``); None when none was logged."""
    disclosure_played_ms: int | None = None
    """Disclosure audio the carrier confirmed played (ms)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON shape (turns, tool_calls, barge_ins, usage, cost_usd, disclosure, disclosure_played_ms)."""
        return {"turns": [asdict(t) for t in self.turns], "tool_calls": [asdict(t) for t in self.tool_calls],
                "barge_ins": [asdict(b) for b in self.barge_ins], "usage": asdict(self.usage),
                "model": self.model, "billed": self.billed, "cost_usd": self.cost_usd,
                "disclosure": self.disclosure, "disclosure_played_ms": self.disclosure_played_ms}


def _ms(ev: ArchivedEvent, t0_ns: int) -> int:
    return int((ev.time_ns - t0_ns) // 1_000_000)


def project(events: Sequence[ArchivedEvent], *, with_audio: bool = True) -> Projection:
    """Build the :class:`Projection` of one call from its events (any order; sorted by time here).

    ``with_audio`` renders the audio timeline (needed for assistant turn timing and the recording); without
    it assistant turns are timed by their first and last audio delta.
    """
    ordered = sorted(events, key=lambda e: (e.time_ns, e.stream, e.stream_seq))
    out = Projection()
    if not ordered:
        return out
    timeline = render(ordered) if with_audio else None
    out.timeline = timeline
    t0 = timeline.t0_ns if timeline else next(
        (e.time_ns for e in ordered if e.direction is None and e.type == "started"), ordered[0].time_ns)
    caller_start = timeline.caller_start_ms if timeline and timeline.caller_start_ms is not None else None

    user: dict[str, Turn] = {}
    assistant: dict[str, Turn] = {}
    tools: dict[str, ToolCall] = {}
    tool_order: list[ToolCall] = []
    barge: BargeIn | None = None
    speech_ns: int | None = None
    delta_ms: dict[str, list[int]] = {}
    model_from_client = False

    def vad_ms(ev: ArchivedEvent, key: str) -> int:
        value = (ev.json() or {}).get(key)
        if caller_start is not None and isinstance(value, int | float):
            return int(caller_start + value)
        return _ms(ev, t0)

    for ev in ordered:
        body = ev.json()
        if body is None:
            continue
        kind = (ev.direction, ev.type)
        item_id = body.get("item_id") if isinstance(body.get("item_id"), str) else None
        if kind == ("server", "input_audio_buffer.speech_started"):
            turn = user.setdefault(item_id or f"speech{len(user)}", Turn("user", "", item_id))
            turn.start_ms = vad_ms(ev, "audio_start_ms")
            speech_ns = ev.time_ns
            barge = None
        elif kind == ("server", "input_audio_buffer.speech_stopped"):
            turn = user.setdefault(item_id or f"speech{len(user)}", Turn("user", "", item_id))
            turn.end_ms = vad_ms(ev, "audio_end_ms")
        elif kind == ("server", "conversation.item.input_audio_transcription.delta") and item_id:
            turn = user.setdefault(item_id, Turn("user", "", item_id, _ms(ev, t0)))
            turn.text += str(body.get("delta") or "")
        elif kind == ("server", "conversation.item.input_audio_transcription.completed") and item_id:
            turn = user.setdefault(item_id, Turn("user", "", item_id, _ms(ev, t0)))
            turn.text = str(body.get("transcript") or "")
        elif kind == ("client", "conversation.item.create"):
            item: dict[str, Any] = body["item"] if isinstance(body.get("item"), dict) else {}
            if item.get("type") == "message" and item.get("role") == "user":
                text = " ".join(str(c.get("text", "")) for c in item.get("content") or []
                                if isinstance(c, dict) and c.get("type") == "input_text")
                key = str(item.get("id") or f"text{ev.stream_seq}")
                user[key] = Turn("user", text, item.get("id"), _ms(ev, t0), _ms(ev, t0))
            elif item.get("type") == "function_call_output":
                call = tools.get(str(item.get("call_id")))
                if call is not None:
                    call.output = str(item.get("output")) if item.get("output") is not None else None
                    call.completed_ms = _ms(ev, t0)
                    if call.requested_ms is not None:
                        call.latency_ms = float(call.completed_ms - call.requested_ms)
                    call.error = _error_of(call.output)
        elif kind == ("server", "response.output_audio_transcript.delta") and item_id:
            assistant.setdefault(item_id, Turn("assistant", "", item_id)).text += str(body.get("delta") or "")
        elif kind == ("server", "response.output_audio_transcript.done") and item_id:
            assistant.setdefault(item_id, Turn("assistant", "", item_id)).text = str(body.get("transcript") or "")
        elif kind == ("server", "response.output_text.done") and item_id:
            turn = assistant.setdefault(item_id, Turn("assistant", "", item_id, _ms(ev, t0)))
            turn.text = str(body.get("text") or "")
        elif kind == ("server", "response.output_audio.delta") and item_id:
            delta_ms.setdefault(item_id, []).append(_ms(ev, t0))
        elif kind == ("server", "response.function_call_arguments.done"):
            call_id = str(body.get("call_id") or f"fc{ev.stream_seq}")
            if call_id not in tools:
                call = ToolCall(str(body.get("name") or ""), str(body.get("arguments") or ""), body.get("call_id"),
                                requested_ms=_ms(ev, t0))
                tools[call_id] = call
                tool_order.append(call)
        elif kind == ("server", "response.done"):
            response: dict[str, Any] = body["response"] if isinstance(body.get("response"), dict) else {}
            if isinstance(response.get("usage"), dict):
                out.usage.add(response["usage"])
        elif kind in (("client", "session.update"), ("server", "session.created")):
            session: dict[str, Any] = body["session"] if isinstance(body.get("session"), dict) else {}
            if isinstance(session.get("model"), str) and (ev.direction == "client" or not model_from_client):
                out.model = session["model"]
                model_from_client = ev.direction == "client"
        elif kind == (None, "session.model_connected") and body.get("billed") is False:
            out.billed = False
        elif kind == (None, "session.disclosure") and isinstance(body.get("status"), str):
            out.disclosure = body["status"]
            played = body.get("played_ms")
            out.disclosure_played_ms = int(played) if isinstance(played, int | float) else None
        elif kind in (("client", "conversation.item.truncate"), (None, "command.clear")):
            if speech_ns is None:
                continue
            if barge is None:
                barge = BargeIn(int((speech_ns - t0) // 1_000_000))
                out.barge_ins.append(barge)
            if ev.type == "command.clear" and barge.clear_latency_ms is None:
                barge.clear_latency_ms = (ev.time_ns - speech_ns) / 1e6
            elif ev.type == "conversation.item.truncate":
                barge.item_id = body.get("item_id") if isinstance(body.get("item_id"), str) else None
                end_ms = body.get("audio_end_ms")
                barge.audio_end_ms = int(end_ms) if isinstance(end_ms, int | float) else None

    for key, turn in assistant.items():
        play = timeline.items.get(key) if timeline else None
        if play is not None and play.start_ms >= 0:
            turn.start_ms, turn.end_ms, turn.interrupted = int(play.start_ms), int(play.end_ms), play.interrupted
        elif key in delta_ms:
            turn.start_ms, turn.end_ms = delta_ms[key][0], delta_ms[key][-1]
    turns = [t for t in [*user.values(), *assistant.values()] if t.text or t.role == "user"]
    turns = [t for t in turns if t.text.strip() or t.start_ms is not None]
    out.turns = sorted(turns, key=lambda t: (t.start_ms if t.start_ms is not None else 1 << 62))
    out.tool_calls = tool_order
    out.cost_usd = estimate_cost(out.usage, out.model, billed=out.billed)
    return out


def _error_of(output: str | None) -> str | None:
    if output is None:
        return None
    try:
        value = json.loads(output)
    except ValueError:
        return None
    if isinstance(value, dict) and value.get("error") is not None:
        err = value["error"]
        return err if isinstance(err, str) else json.dumps(err)
    return None
