"""A call's timeline from its archived events (``switchboard replay``): relative ms, direction, type, summary.

Rows are in time order (``Switchboard-Ts``); runs of consecutive audio events of the same kind
(``input_audio_buffer.append``, ``response.output_audio.delta``, transcript deltas) are collapsed into one row
unless ``collapse=False``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from services.recorder.records import ArchivedEvent
from shared.contracts import CallEnded, CallStarted, CarrierMark, ContractError

__all__ = ["TimelineRow", "summarize", "timeline"]

_COLLAPSIBLE = {
    "input_audio_buffer.append", "response.output_audio.delta", "response.output_audio_transcript.delta",
    "conversation.item.input_audio_transcription.delta", "response.function_call_arguments.delta",
    "carrier.mark",
}


@dataclass(slots=True)
class TimelineRow:
    """One line of the timeline; ``count`` > 1 for a collapsed run (``rel_ms`` = its first event)."""

    rel_ms: float
    direction: str
    type: str
    summary: str
    source: str | None
    seq: int | None
    stream: str
    stream_seq: int
    count: int = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON shape (``switchboard replay --json``)."""
        return asdict(self)


def _audio_len(value: Any) -> int:
    if not isinstance(value, str):
        return 0
    try:
        return len(base64.b64decode(value))
    except (binascii.Error, ValueError):
        return 0


def _clip(text: str, limit: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _summarize_call_event(t: str, body: dict[str, Any]) -> str | None:
    """``started`` / ``ended`` / ``carrier.mark`` read through their contracts; None when the body does not match
    (then the generic summary shows its keys)."""
    try:
        if t == "started":
            started = CallStarted.parse(body)
            return f"{started.carrier} {started.from_} → {started.to} agent={started.agent} {started.audio_format}"
        if t == "ended":
            return f"reason={CallEnded.parse(body).reason}"
        mark = CarrierMark.parse(body)
        return f"{mark.name} {mark.item_id} played={mark.played_bytes} cleared={mark.cleared}"
    except ContractError:
        return None


def summarize(ev: ArchivedEvent) -> str:
    """A short human summary of one event (what matters for its type)."""
    body = ev.json()
    if body is None:
        return f"{len(ev.body)} B (not JSON)"
    t = ev.type
    if t == "input_audio_buffer.append":
        return f"{_audio_len(body.get('audio'))} B caller audio"
    if t == "response.output_audio.delta":
        return f"{_audio_len(body.get('delta'))} B agent audio ({body.get('item_id')})"
    if t.endswith(("transcript.delta", "transcription.delta", "arguments.delta")):
        return _clip(repr(body.get("delta", "")))
    if t in ("response.output_audio_transcript.done", "conversation.item.input_audio_transcription.completed"):
        return _clip(f"“{body.get('transcript', '')}”")
    if t == "response.output_text.done":
        return _clip(f"“{body.get('text', '')}”")
    if t == "response.function_call_arguments.done":
        return _clip(f"{body.get('name')}({body.get('arguments')}) call_id={body.get('call_id')}")
    if t == "conversation.item.create":
        item = body.get("item") or {}
        if item.get("type") == "function_call_output":
            return _clip(f"function_call_output {item.get('call_id')}: {item.get('output')}")
        return _clip(f"{item.get('type')} {item.get('role', '')}")
    if t in ("response.created", "response.done"):
        resp = body.get("response") or {}
        usage = resp.get("usage") or {}
        tokens = f" in={usage.get('input_tokens')} out={usage.get('output_tokens')}" if usage else ""
        return f"{resp.get('id')} {resp.get('status')}{tokens}"
    if t in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"):
        ms = body.get("audio_start_ms", body.get("audio_end_ms"))
        return f"{body.get('item_id')} at {ms} ms"
    if t in ("conversation.item.truncate", "conversation.item.truncated"):
        return f"{body.get('item_id')} audio_end_ms={body.get('audio_end_ms')}"
    if ev.direction is None and t in ("started", "ended", "carrier.mark"):
        call_summary = _summarize_call_event(t, body)
        if call_summary is not None:
            return call_summary
    if t == "error" or t == "session.error":
        err: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else body
        return _clip(f"{err.get('code')}: {err.get('message')}")
    if t == "session.update":
        session = body.get("session") or {}
        return _clip(f"model={session.get('model')} tools={len(session.get('tools') or [])}")
    keys = [k for k in body if k not in ("type", "event_id")]
    return _clip(", ".join(f"{k}={body[k]}" for k in keys[:4]))


def timeline(events: Sequence[ArchivedEvent], *, collapse: bool = True) -> list[TimelineRow]:
    """The call's timeline rows (see module docstring); ``rel_ms`` from the first event (or ``started``)."""
    ordered = sorted(events, key=lambda e: (e.time_ns, e.stream, e.stream_seq))
    if not ordered:
        return []
    starts = [e.time_ns for e in ordered if e.direction is None and e.type == "started"]
    t0 = starts[0] if starts else ordered[0].time_ns
    rows: list[TimelineRow] = []
    for ev in ordered:
        direction = ev.direction or "call"
        if collapse and ev.type in _COLLAPSIBLE and rows and rows[-1].type == ev.type \
                and rows[-1].direction == direction:
            last = rows[-1]
            last.count += 1
            last.summary = f"×{last.count} (last: {summarize(ev)})"
            continue
        rows.append(TimelineRow((ev.time_ns - t0) / 1e6, direction, ev.type, summarize(ev), ev.source, ev.seq,
                                ev.stream, ev.stream_seq))
    return rows
