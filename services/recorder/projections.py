"""Projections of one call's archived events: transcript turns, tool calls, barge-ins, usage and cost.

Pure functions over :class:`~services.recorder.records.ArchivedEvent` lists (no I/O), used when a call ends
(stored in ``transcript_turns``, ``tool_calls``, ``barge_ins``, ``calls``) and on demand for calls still in
progress. Event shapes: https://platform.openai.com/docs/api-reference/realtime (Realtime GA). Each projection
is one fold of :data:`services.recorder.folds.FOLDS` (what each reads is documented
there); :func:`project` runs them over the call's events in time order and assembles a :class:`Projection`.
Times are ms from the call's start; assistant turns are timed by the recording's playout
(:mod:`services.recorder.recording`), ``interrupted`` when the item was cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from services.recorder.folds import (
    ASSISTANT_TURNS,
    BARGE_INS,
    COST,
    DISCLOSURE,
    TOOL_CALLS,
    USER_TURNS,
    BargeIn,
    Clock,
    Event,
    ToolCall,
    Turn,
    parse_arguments,
    run,
)
from services.recorder.recording import Timeline, render
from services.recorder.records import ArchivedEvent
from shared.callfigures import DEFAULT_MODEL
from shared.pricing import Usage

__all__ = ["BargeIn", "Projection", "ToolCall", "Turn", "parse_arguments", "project"]


@dataclass(slots=True)
class Projection:
    """Everything projected from one call's events."""

    turns: list[Turn] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    barge_ins: list[BargeIn] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    model: str = DEFAULT_MODEL
    billed: bool = True
    """False when the session said ``billed: false`` in ``session.model_connected`` (no API key: local model)."""
    cost_usd: float | None = 0.0
    """Estimate in USD (:class:`shared.callfigures.CallCost`); None when the model is unpriced."""
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
    clock = Clock(t0, timeline.caller_start_ms if timeline else None)
    folded = [ev for ev in map(Event.of, ordered) if ev is not None]

    assistant = run(ASSISTANT_TURNS, folded, clock)
    assistant_turns: list[Turn] = []
    for key, turn in assistant.turns.items():
        play = timeline.items.get(key) if timeline else None
        if play is not None and play.start_ms >= 0:
            turn = Turn(turn.role, turn.text, turn.item_id, int(play.start_ms), int(play.end_ms), play.interrupted)
        elif key in assistant.audio_ms:
            turn = Turn(turn.role, turn.text, turn.item_id, *assistant.audio_ms[key])
        assistant_turns.append(turn)
    turns = [t for t in [*run(USER_TURNS, folded, clock).values(), *assistant_turns] if t.text or t.role == "user"]
    turns = [t for t in turns if t.text.strip() or t.start_ms is not None]
    out.turns = sorted(turns, key=lambda t: (t.start_ms if t.start_ms is not None else 1 << 62))
    out.tool_calls = list(run(TOOL_CALLS, folded, clock).calls.values())
    out.barge_ins = list(run(BARGE_INS, folded, clock).barge_ins)
    cost = run(COST, folded, clock)
    out.usage, out.billed = cost.usage, cost.billed
    out.model = cost.model or DEFAULT_MODEL
    out.cost_usd = cost.cost_usd
    disclosure = run(DISCLOSURE, folded, clock)
    out.disclosure, out.disclosure_played_ms = disclosure.status, disclosure.played_ms
    return out
