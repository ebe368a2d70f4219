"""The recorder's projection folds, each on its own: what it consumes, that its step is pure (the state it
was given is unchanged), and that arbitrary event sequences never break it."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from services.recorder.folds import (
    ASSISTANT_TURNS,
    BARGE_INS,
    COST,
    FOLDS,
    TOOL_CALLS,
    USER_TURNS,
    BargeIn,
    Clock,
    Event,
    Fold,
    Turn,
    run,
)
from services.recorder.projections import project
from switchboard.testing.scripted import script
from tests.unit.test_recorder_projections import events_from

CLOCK = Clock(t0_ns=0)
MS = 1_000_000


def ev(at_ms: int, direction: str | None, type_: str, **body: Any) -> Event:
    return Event((direction, type_), body, at_ms * MS, at_ms)


def test_registry_names_every_fold_once() -> None:
    assert [f.name for f in FOLDS] == ["user_turns", "assistant_turns", "tool_calls", "barge_ins", "cost", "disclosure"]
    assert all(f.consumes for f in FOLDS)


def test_user_turns_from_vad_transcription_and_typed_text() -> None:
    turns = run(USER_TURNS, [
        ev(100, "server", "input_audio_buffer.speech_started", item_id="u1", audio_start_ms=50),
        ev(900, "server", "input_audio_buffer.speech_stopped", item_id="u1", audio_end_ms=850),
        ev(950, "server", "conversation.item.input_audio_transcription.delta", item_id="u1", delta="Hel"),
        ev(960, "server", "conversation.item.input_audio_transcription.completed", item_id="u1", transcript="Hello"),
        ev(2000, "client", "conversation.item.create",
           item={"type": "message", "role": "user", "id": "t1", "content": [{"type": "input_text", "text": "hi"}]}),
    ], Clock(0, caller_start_ms=10))
    assert list(turns.values()) == [Turn("user", "Hello", "u1", 60, 860), Turn("user", "hi", "t1", 2000, 2000)]


def test_assistant_turns_collect_text_and_audio_times() -> None:
    state = run(ASSISTANT_TURNS, [
        ev(10, "server", "response.output_audio.delta", item_id="a1"),
        ev(20, "server", "response.output_audio_transcript.delta", item_id="a1", delta="Bo"),
        ev(30, "server", "response.output_audio.delta", item_id="a1"),
        ev(40, "server", "response.output_audio_transcript.done", item_id="a1", transcript="Booked."),
    ], CLOCK)
    assert state.turns["a1"].text == "Booked." and state.audio_ms["a1"] == (10, 30)


def test_tool_calls_join_output_and_error() -> None:
    state = run(TOOL_CALLS, [
        ev(100, "server", "response.function_call_arguments.done", name="book", call_id="c1", arguments="{}"),
        ev(100, "server", "response.function_call_arguments.done", name="other", call_id="c2", arguments="{}"),
        ev(130, "client", "conversation.item.create",
           item={"type": "function_call_output", "call_id": "c1", "output": '{"error": "no slot"}'}),
    ], CLOCK)
    c1, c2 = state.calls.values()
    assert (c1.name, c1.error, c1.latency_ms, c1.completed_ms) == ("book", "no slot", 30.0, 130)
    assert (c2.output, c2.latency_ms) == (None, None)


def test_barge_ins_one_per_speech_with_clear_and_truncate() -> None:
    state = run(BARGE_INS, [
        ev(5, None, "command.clear"),  # no speech yet: not a barge-in
        ev(100, "server", "input_audio_buffer.speech_started"),
        ev(103, None, "command.clear"),
        ev(150, "client", "conversation.item.truncate", item_id="a2", audio_end_ms=500),
        ev(160, None, "command.clear"),  # a second clear for the same speech changes nothing
        ev(400, "server", "input_audio_buffer.speech_started"),
        ev(450, "client", "conversation.item.truncate", item_id="a3", audio_end_ms=40),
    ], CLOCK)
    assert state.barge_ins == (BargeIn(100, "a2", 500, 3.0), BargeIn(400, "a3", 40, None))


def test_cost_fold_uses_the_shared_figure() -> None:
    cost = run(COST, [ev(1, None, "session.model_connected", billed=False),
                      ev(2, "server", "response.done", response={"usage": {"output_tokens": 5}})], CLOCK)
    assert cost.usage.output_tokens == 5 and cost.cost_usd == 0.0


ALL_KINDS = sorted({k for f in FOLDS for k in f.consumes}, key=str)
bodies = st.dictionaries(st.sampled_from(["item_id", "call_id", "name", "delta", "transcript", "audio_end_ms",
                                          "audio_start_ms", "item", "response", "session", "billed", "model"]),
                         st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=3), st.booleans(),
                                   st.fixed_dictionaries({"type": st.sampled_from(["function_call_output",
                                                                                   "message"]),
                                                          "call_id": st.sampled_from(["c1", "c2"]),
                                                          "role": st.just("user")})),
                         max_size=4)
events = st.lists(st.builds(lambda kind, body, t: Event(kind, body, t * MS, t), st.sampled_from(ALL_KINDS), bodies,
                            st.integers(0, 10_000)), max_size=30).map(lambda es: sorted(es, key=lambda e: e.time_ns))


@given(events)
def test_every_step_is_pure_and_total(seq: list[Event]) -> None:
    for fold in FOLDS:
        state = fold.initial()
        for e in seq:
            if e.kind not in fold.consumes:
                continue
            before = copy.deepcopy(state)
            state_after = fold.step(state, e, CLOCK)
            assert state == before  # the input state is never modified
            state = state_after
        assert run(fold, seq, CLOCK) == state  # deterministic, and run() skips unconsumed kinds


@given(events)
def test_a_fold_ignores_what_it_does_not_consume(seq: list[Event]) -> None:
    fold: Fold[Any] = TOOL_CALLS
    noise = [Event(("server", "response.output_audio.delta"), {"item_id": "x"}, e.time_ns, 0) for e in seq]
    assert run(fold, sorted([*seq, *noise], key=lambda e: e.time_ns), CLOCK) == run(fold, seq, CLOCK)


def test_project_assembles_the_folds() -> None:
    p = project(events_from(script("CAfolds"), "CAfolds"))
    assert [t.role for t in p.turns] == ["user", "assistant", "assistant", "user"]
    assert len(p.tool_calls) == 1 and len(p.barge_ins) == 1 and p.cost_usd


def test_audit_accepts_tool_latencies_stored_in_whole_ms_but_not_a_changed_call() -> None:
    from services.recorder.queries import _same_tool_calls

    row = {"name": "book", "arguments": "{}", "tool_call_id": "c1", "output": "{}", "error": None,
           "requested_ms": 100, "completed_ms": 130, "latency_ms": 30.3}
    assert _same_tool_calls([{**row, "latency_ms": 30.0}], [row])  # projected before the figure was shared
    assert not _same_tool_calls([{**row, "latency_ms": 35.0}], [row])
    assert not _same_tool_calls([{**row, "output": '{"ok": 1}'}], [row])
    assert not _same_tool_calls([{**row, "latency_ms": None}], [row])
    assert not _same_tool_calls([], [row])
