"""The per-call figures defined once in shared.callfigures, and the consumers that must agree on them: the
demo's first-audio list, the analytics KPI fold and the recorder's projection of the same events."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.analytics.kpis import CallFigures, KpiEvent, apply
from services.recorder.projections import project
from shared.callfigures import (
    CLEAR,
    OUTPUT_AUDIO,
    SPEECH_STARTED,
    SPEECH_STOPPED,
    BargeInReaction,
    CallCost,
    FirstAudio,
    Kind,
    ToolLatency,
    tool_latency_ms,
)
from shared.pricing import Usage, estimate_cost
from switchboard.cli.demo import first_audio_latencies_ms
from switchboard.testing.scripted import USAGE, script
from tests.unit.test_recorder_projections import events_from

KINDS: list[Kind] = [SPEECH_STOPPED, SPEECH_STARTED, OUTPUT_AUDIO, CLEAR, ("server", "response.done")]
timed_kinds = st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 10_000)), max_size=40)


def _in_time_order(events: list[tuple[Kind, int]]) -> list[tuple[Kind, int]]:
    t, out = 0, []
    for kind, gap in events:
        t += gap * 1_000_000
        out.append((kind, t))
    return out


def _reference_first_audio(events: list[tuple[Kind, int]]) -> list[float]:
    """The definition spelled out: each speech_stopped paired with the first audio after it, when that audio
    comes before the next speech_stopped."""
    out = []
    for i, (kind, t) in enumerate(events):
        if kind != SPEECH_STOPPED:
            continue
        for later, t2 in events[i + 1:]:
            if later == SPEECH_STOPPED:
                break
            if later == OUTPUT_AUDIO:
                out.append((t2 - t) / 1e6)
                break
    return out


@given(timed_kinds)
def test_first_audio_matches_its_definition(raw: list[tuple[Kind, int]]) -> None:
    events = _in_time_order(raw)
    state, values = FirstAudio(), []
    for kind, t in events:
        before = state
        state, value = state.observe(kind, t)
        assert before == FirstAudio(before.stopped_ns)  # the step returns a new state, the old one is unchanged
        if value is not None:
            values.append(value)
    assert values == _reference_first_audio(events)


def test_first_audio_ignores_the_greeting_and_counts_a_tool_turn_once() -> None:
    state, first = FirstAudio().observe(OUTPUT_AUDIO, 5)  # greeting: no speech before it
    assert first is None
    state, _ = state.observe(SPEECH_STOPPED, 1_000_000_000)
    state, _ = state.observe(("server", "response.done"), 1_100_000_000)  # a function call, no audio
    state, first = state.observe(OUTPUT_AUDIO, 1_900_000_000)  # the reply after the tool
    assert first == pytest.approx(900.0)
    assert state.observe(OUTPUT_AUDIO, 2_000_000_000)[1] is None


@given(timed_kinds)
def test_barge_in_reaction_is_at_most_one_per_speech_started(raw: list[tuple[Kind, int]]) -> None:
    events = _in_time_order(raw)
    state, values = BargeInReaction(), []
    for kind, t in events:
        state, value = state.observe(kind, t)
        if value is not None:
            assert value >= 0
            values.append(value)
    assert len(values) <= sum(1 for kind, _ in events if kind == SPEECH_STARTED)


def test_tool_latency_pairs_by_call_id_and_keeps_the_first_request() -> None:
    state = ToolLatency()
    state, _ = state.observe(("server", "response.function_call_arguments.done"), {"call_id": "a"}, 1_000_000)
    state, _ = state.observe(("server", "response.function_call_arguments.done"), {"call_id": "a"}, 9_000_000)
    state, latency = state.observe(("client", "conversation.item.create"),
                                   {"item": {"type": "function_call_output", "call_id": "a"}}, 31_260_000)
    assert latency == 30.3 == tool_latency_ms(1_000_000, 31_260_000)
    assert state.completed("a", 40_000_000)[1] is None  # already closed
    assert state.completed("unknown", 1)[1] is None


def test_cost_prefers_the_clients_model_in_any_stream_order() -> None:
    done = {"response": {"usage": USAGE}}
    kinds: list[tuple[Kind, dict[str, Any]]] = [
        (("server", "session.created"), {"session": {"model": "gpt-realtime-2025-08-28"}}),
        (("client", "session.update"), {"session": {"model": "gpt-realtime-mini"}}),
        ((None, "session.model_connected"), {"model": "gpt-realtime"}),
        (("server", "response.done"), done),
    ]
    for order in (kinds, kinds[::-1]):
        cost = CallCost()
        for kind, body in order:
            cost = cost.observe(kind, body)
        usage = Usage()
        usage.add(USAGE)
        assert (cost.model, cost.usage) == ("gpt-realtime-mini", usage)
        assert cost.cost_usd == estimate_cost(usage, "gpt-realtime-mini")
    unbilled = CallCost().observe((None, "session.model_connected"), {"billed": False})
    assert unbilled.observe(("server", "response.done"), done).cost_usd == 0.0
    assert CallCost(model="no-such-model").cost_usd is None


def test_demo_analytics_and_recorder_agree_on_one_call() -> None:
    events = events_from(script("CAagree"), "CAagree")
    as_dicts = [e.to_dict() for e in events]
    demo = first_audio_latencies_ms(as_dicts)
    fig, kpi = CallFigures("CAagree"), []
    for e in sorted(events, key=lambda e: (e.stream, e.stream_seq)):
        value = apply(fig, KpiEvent(e.stream, e.direction, e.type, e.json() or {}, e.time_ns, e.stream_seq))
        if value is not None:
            kpi.append(value)
    assert demo and demo == kpi
    projection = project(events, with_audio=False)
    assert fig.cost_usd == projection.cost_usd and fig.usage == projection.usage
