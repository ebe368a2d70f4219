"""The recorder's projections as folds: one small pure function per projection, in one registry.

A :class:`Fold` names the event kinds it consumes (``(direction, type)``: direction ``client``/``server`` for
``rt.<id>.*``, None for ``call.<id>.*``) and a pure step ``state × event × clock → state``; states are
immutable (steps return new ones), so a fold can be replayed, tested and checked on its own.
:func:`services.recorder.projections.project` runs every fold of :data:`FOLDS` over a call's events in time
order and assembles the result. Event shapes: the Realtime GA reference
(https://platform.openai.com/docs/api-reference/realtime-server-events) and docs/events.asyncapi.yaml; the
figures (tool latency, barge-in reaction, cost) are :mod:`shared.callfigures`'s.

- ``user_turns``: ``input_audio_buffer.speech_started/stopped`` (``audio_start_ms``/``audio_end_ms``, counted
  from the first caller frame) and ``conversation.item.input_audio_transcription.delta/completed`` per
  ``item_id``; typed user messages from the client's ``conversation.item.create`` (``input_text``).
- ``assistant_turns``: ``response.output_audio_transcript.delta/done`` / ``response.output_text.done`` per
  ``item_id``, and the first/last ``response.output_audio.delta`` time (used when there is no recording).
- ``tool_calls``: ``response.function_call_arguments.done`` joined with the client's ``function_call_output``
  (same ``call_id``); an output that is a JSON object with an ``error`` key is the error.
- ``barge_ins``: a ``speech_started`` followed, before the next one, by a ``command.clear`` and/or a
  ``conversation.item.truncate``; the reaction time is speech_started → clear.
- ``cost``: :class:`shared.callfigures.CallCost` (usage, model, billing).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from services.recorder.records import ArchivedEvent
from shared.callfigures import CLEAR, SPEECH_STARTED, BargeInReaction, CallCost, Kind, tool_latency_ms

__all__ = ["ASSISTANT_TURNS", "BARGE_INS", "COST", "FOLDS", "TOOL_CALLS", "USER_TURNS", "AssistantTurns", "BargeIn",
           "BargeIns", "Clock", "Event", "Fold", "ToolCall", "ToolCalls", "Turn", "Turns", "error_of",
           "parse_arguments", "run"]

S = TypeVar("S")


def parse_arguments(arguments: str) -> Any:
    """Function-call arguments as JSON (the raw string when they do not parse)."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


@dataclass(slots=True)
class Turn:
    """One transcript turn; ``role`` is ``user`` or ``assistant``; times in ms from the call's start."""

    role: str
    text: str
    item_id: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    interrupted: bool = False


@dataclass(slots=True)
class ToolCall:
    """One function call: ``arguments`` is the JSON string the model produced; times in ms from the call's
    start; ``latency_ms`` per :func:`shared.callfigures.tool_latency_ms`."""

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
    """The caller interrupted the agent at ``at_ms``; ``clear_latency_ms`` per
    :class:`shared.callfigures.BargeInReaction`."""

    at_ms: int
    item_id: str | None = None
    audio_end_ms: int | None = None
    clear_latency_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Clock:
    """A call's time base: ``t0_ns`` (the call's start, unix ns) and where the caller's first frame sits on
    the recording (``caller_start_ms``; None without a recording)."""

    t0_ns: int
    caller_start_ms: float | None = None

    def ms(self, t_ns: int) -> int:
        """``t_ns`` as whole ms from the call's start."""
        return int((t_ns - self.t0_ns) // 1_000_000)

    def vad_ms(self, ev: Event, key: str) -> int:
        """A VAD time: the event's ``key`` (ms of caller audio) placed on the recording, else its own time."""
        value = ev.body.get(key)
        if self.caller_start_ms is not None and isinstance(value, int | float):
            return int(self.caller_start_ms + value)
        return self.ms(ev.time_ns)


@dataclass(frozen=True, slots=True)
class Event:
    """What a fold sees of one archived event: ``kind`` ``(direction, type)``, JSON ``body``, ``time_ns``
    (unix ns, :attr:`ArchivedEvent.time_ns`) and ``stream_seq``."""

    kind: Kind
    body: Mapping[str, Any]
    time_ns: int
    stream_seq: int = 0

    @classmethod
    def of(cls, ev: ArchivedEvent) -> Event | None:
        """The fold view of ``ev``; None when its body is not a JSON object (folds skip it)."""
        body = ev.json()
        return None if body is None else cls((ev.direction, ev.type), body, ev.time_ns, ev.stream_seq)

    @property
    def item_id(self) -> str | None:
        """The body's ``item_id`` when it is a string."""
        value = self.body.get("item_id")
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Fold(Generic[S]):
    """One projection: the event kinds it consumes, its initial state and its pure step."""

    name: str
    consumes: frozenset[Kind]
    initial: Callable[[], S]
    step: Callable[[S, Event, Clock], S]


def run(fold: Fold[S], events: Iterable[Event], clock: Clock) -> S:
    """Fold ``events`` (already in time order) into ``fold``'s state, skipping kinds it does not consume."""
    state = fold.initial()
    for ev in events:
        if ev.kind in fold.consumes:
            state = fold.step(state, ev, clock)
    return state


# --- user turns ------------------------------------------------------------------------------------------

Turns = Mapping[str, Turn]
"""Turns by key (item id, or a synthetic key), in first-seen order."""


def _with(turns: Turns, key: str, turn: Turn) -> Turns:
    return {**turns, key: turn}


def _step_user(turns: Turns, ev: Event, clock: Clock) -> Turns:
    kind, item_id = ev.kind[1], ev.item_id
    if kind in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"):
        key = item_id or f"speech{len(turns)}"
        turn = turns.get(key) or Turn("user", "", item_id)
        if kind.endswith("started"):
            return _with(turns, key, replace(turn, start_ms=clock.vad_ms(ev, "audio_start_ms")))
        return _with(turns, key, replace(turn, end_ms=clock.vad_ms(ev, "audio_end_ms")))
    if kind.startswith("conversation.item.input_audio_transcription.") and item_id:
        turn = turns.get(item_id) or Turn("user", "", item_id, clock.ms(ev.time_ns))
        if kind.endswith(".delta"):
            return _with(turns, item_id, replace(turn, text=turn.text + str(ev.body.get("delta") or "")))
        return _with(turns, item_id, replace(turn, text=str(ev.body.get("transcript") or "")))
    item = ev.body.get("item")
    if kind == "conversation.item.create" and isinstance(item, dict) and item.get("type") == "message" \
            and item.get("role") == "user":
        text = " ".join(str(c.get("text", "")) for c in item.get("content") or []
                        if isinstance(c, dict) and c.get("type") == "input_text")
        at = clock.ms(ev.time_ns)
        return _with(turns, str(item.get("id") or f"text{ev.stream_seq}"), Turn("user", text, item.get("id"), at, at))
    return turns


USER_TURNS: Fold[Turns] = Fold("user_turns", frozenset({
    ("server", "input_audio_buffer.speech_started"), ("server", "input_audio_buffer.speech_stopped"),
    ("server", "conversation.item.input_audio_transcription.delta"),
    ("server", "conversation.item.input_audio_transcription.completed"),
    ("client", "conversation.item.create")}), dict, _step_user)


# --- assistant turns -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AssistantTurns:
    """Assistant turns by item id and the (first, last) output audio delta time (ms) of each item."""

    turns: Turns = field(default_factory=dict)
    audio_ms: Mapping[str, tuple[int, int]] = field(default_factory=dict)


def _step_assistant(state: AssistantTurns, ev: Event, clock: Clock) -> AssistantTurns:
    kind, item_id = ev.kind[1], ev.item_id
    if item_id is None:
        return state
    if kind == "response.output_audio.delta":
        at = clock.ms(ev.time_ns)
        first = state.audio_ms[item_id][0] if item_id in state.audio_ms else at
        return replace(state, audio_ms={**state.audio_ms, item_id: (first, at)})
    start = clock.ms(ev.time_ns) if kind == "response.output_text.done" else None
    turn = state.turns.get(item_id) or Turn("assistant", "", item_id, start)
    if kind == "response.output_audio_transcript.delta":
        turn = replace(turn, text=turn.text + str(ev.body.get("delta") or ""))
    else:
        turn = replace(turn, text=str(ev.body.get("transcript" if kind.endswith("transcript.done") else "text")
                                      or ""))
    return replace(state, turns=_with(state.turns, item_id, turn))


ASSISTANT_TURNS: Fold[AssistantTurns] = Fold("assistant_turns", frozenset({
    ("server", "response.output_audio_transcript.delta"), ("server", "response.output_audio_transcript.done"),
    ("server", "response.output_text.done"), ("server", "response.output_audio.delta")}),
    AssistantTurns, _step_assistant)


# --- tool calls ------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ToolCalls:
    """Tool calls in request order, keyed by Realtime ``call_id``, with each one's request time (ns)."""

    calls: Mapping[str, ToolCall] = field(default_factory=dict)
    requested_ns: Mapping[str, int] = field(default_factory=dict)


def error_of(output: str | None) -> str | None:
    """The ``error`` of a tool output that is a JSON object with one (as a string), else None."""
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


def _step_tools(state: ToolCalls, ev: Event, clock: Clock) -> ToolCalls:
    body = ev.body
    if ev.kind[1] == "response.function_call_arguments.done":
        call_id = str(body.get("call_id") or f"fc{ev.stream_seq}")
        if call_id in state.calls:
            return state
        call = ToolCall(str(body.get("name") or ""), str(body.get("arguments") or ""), body.get("call_id"),
                        requested_ms=clock.ms(ev.time_ns))
        return ToolCalls({**state.calls, call_id: call}, {**state.requested_ns, call_id: ev.time_ns})
    item = body.get("item")
    if not isinstance(item, dict) or item.get("type") != "function_call_output":
        return state
    call_id = str(item.get("call_id"))
    if call_id not in state.calls:
        return state
    output = str(item["output"]) if item.get("output") is not None else None
    done = replace(state.calls[call_id], output=output, error=error_of(output), completed_ms=clock.ms(ev.time_ns),
                   latency_ms=tool_latency_ms(state.requested_ns[call_id], ev.time_ns))
    return replace(state, calls={**state.calls, call_id: done})


TOOL_CALLS: Fold[ToolCalls] = Fold("tool_calls", frozenset({
    ("server", "response.function_call_arguments.done"), ("client", "conversation.item.create")}),
    ToolCalls, _step_tools)


# --- barge-ins -------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BargeIns:
    """Barge-ins so far; ``open``: the last one belongs to the current ``speech_started`` (``reaction``)."""

    barge_ins: tuple[BargeIn, ...] = ()
    open: bool = False
    reaction: BargeInReaction = field(default_factory=BargeInReaction)


def _step_barge(state: BargeIns, ev: Event, clock: Clock) -> BargeIns:
    reaction, latency = state.reaction.observe(ev.kind, ev.time_ns)
    if ev.kind == SPEECH_STARTED:
        return BargeIns(state.barge_ins, False, reaction)
    started = state.reaction.started_ns
    if started is None:
        return state
    barge_ins = state.barge_ins if state.open else (*state.barge_ins, BargeIn(clock.ms(started)))
    last = barge_ins[-1]
    if ev.kind == CLEAR:
        if last.clear_latency_ms is None and latency is not None:
            last = replace(last, clear_latency_ms=latency)
    else:
        end_ms = ev.body.get("audio_end_ms")
        last = replace(last, item_id=ev.item_id, audio_end_ms=int(end_ms) if isinstance(end_ms, int | float) else None)
    return BargeIns((*barge_ins[:-1], last), True, reaction)


BARGE_INS: Fold[BargeIns] = Fold("barge_ins", frozenset({
    SPEECH_STARTED, ("client", "conversation.item.truncate"), CLEAR}), BargeIns, _step_barge)


# --- cost ------------------------------------------------------------------------------------------------

COST: Fold[CallCost] = Fold("cost", frozenset({
    ("server", "response.done"), ("client", "session.update"), ("server", "session.created"),
    (None, "session.model_connected")}), CallCost, lambda state, ev, _clock: state.observe(ev.kind, ev.body))


# --- disclosure ------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Disclosure:
    """The call's disclosure (``call.<id>.session.disclosure``, services/session/disclosure.py): ``status``
    (``completed``, ``interrupted``, ``unconfirmed``, ``failed``; None: none logged — the agent has none) and
    ``played_ms`` confirmed by the carrier. The last record wins (a session taking over reuses it)."""

    status: str | None = None
    played_ms: int | None = None


def _step_disclosure(state: Disclosure, ev: Event, _clock: Clock) -> Disclosure:
    status, played = ev.body.get("status"), ev.body.get("played_ms")
    if not isinstance(status, str):
        return state
    return Disclosure(status, int(played) if isinstance(played, int | float) else None)


DISCLOSURE: Fold[Disclosure] = Fold("disclosure", frozenset({(None, "session.disclosure")}), Disclosure,
                                    _step_disclosure)


FOLDS: tuple[Fold[Any], ...] = (USER_TURNS, ASSISTANT_TURNS, TOOL_CALLS, BARGE_INS, COST, DISCLOSURE)
"""Every projection fold, by name: ``user_turns``, ``assistant_turns``, ``tool_calls``, ``barge_ins``, ``cost``,
``disclosure``."""
