"""Projections and the stereo recording from a scripted call's events (no I/O): turns, tool calls with
latency, barge-ins, usage and cost, caller/agent channels on the media timeline, cuts at the interruption."""

from __future__ import annotations

import base64
import json

import numpy as np
import orjson
import pytest

from services.recorder.projections import project
from services.recorder.recording import call_formats, format_name, render
from services.recorder.records import ArchivedEvent, classify
from shared.pricing import Usage, estimate_cost
from switchboard.testing.scripted import USAGE, Step, script, tone

T0 = 1_800_000_000_000_000_000


def events_from(steps: list[Step], call_id: str) -> list[ArchivedEvent]:
    """Archived events as the recorder would store them, published in real time (after_ms honoured)."""
    out: list[ArchivedEvent] = []
    now = T0
    seqs: dict[str, int] = {}
    stream_seq = {"RT": 0, "CALLS": 0}
    for step in steps:
        stream = "RT" if step.subject.startswith("rt.") else "CALLS"
        stream_seq[stream] += 1
        seqs[step.source] = seqs.get(step.source, 0) + 1
        cid, direction, kind = classify(step.subject, {})
        assert cid == call_id
        out.append(ArchivedEvent(stream, stream_seq[stream], cid, stream_seq[stream], step.subject, direction, kind,
                                 step.source, seqs[step.source], None, now, now, None, {},
                                 orjson.dumps(step.payload)))
        now += int(step.after_ms * 1_000_000) + 1000  # 1 µs between events
    return out


@pytest.fixture
def call() -> list[ArchivedEvent]:
    return events_from(script("CAunit"), "CAunit")


def test_turns_in_order_with_roles_and_interruption(call: list[ArchivedEvent]) -> None:
    p = project(call)
    assert [(t.role, t.text, t.interrupted) for t in p.turns] == [
        ("user", "I would like to book an appointment for tomorrow at ten", False),
        ("assistant", "Your appointment is booked for tomorrow at ten.", False),
        ("assistant", "Is there anything else I can help you with today?", True),
        ("user", "No thanks, bye", False),
    ]
    first = p.turns[0]
    assert first.start_ms is not None and first.end_ms is not None
    assert first.end_ms - first.start_ms == 1500  # speech_stopped.audio_end_ms - speech_started.audio_start_ms
    starts = [t.start_ms for t in p.turns]
    assert starts == sorted(starts)  # type: ignore[type-var]


def test_tool_call_joined_with_its_output_and_latency(call: list[ArchivedEvent]) -> None:
    (tool,) = project(call).tool_calls
    assert (tool.name, tool.parsed_arguments(), tool.tool_call_id) == (
        "book_appointment", {"date": "tomorrow", "time": "10:00"}, "call_abc")
    assert tool.output == '{"booked":true,"ref":"A1"}' and tool.error is None
    assert tool.latency_ms is not None and 30 <= tool.latency_ms <= 31  # 30 ms scripted pause


def test_tool_error_output_is_the_error() -> None:
    steps = script("CAerr")
    for i, step in enumerate(steps):
        item = step.payload.get("item")
        if isinstance(item, dict) and item.get("type") == "function_call_output":
            steps[i] = Step(step.source, step.subject, {**step.payload, "item": {
                **item, "output": json.dumps({"error": "no slot at ten"})}})
    (tool,) = project(events_from(steps, "CAerr")).tool_calls
    assert tool.error == "no slot at ten"


def test_barge_in_with_truncation_and_clear_latency(call: list[ArchivedEvent]) -> None:
    (barge,) = project(call).barge_ins
    assert (barge.item_id, barge.audio_end_ms) == ("item_a2", 500)
    assert barge.clear_latency_ms is not None and 0 < barge.clear_latency_ms < 1  # 1 µs later in the script


def test_usage_and_cost(call: list[ArchivedEvent]) -> None:
    p = project(call)
    assert (p.usage.input_tokens, p.usage.output_tokens) == (3 * USAGE["input_tokens"], 3 * USAGE["output_tokens"])
    assert p.model == "gpt-realtime"
    # 3 × (55 uncached text in × $4 + 64 cached text × $0.40 + 13 audio in × $32 + 30 text out × $16
    #      + 91 audio out × $64) per 1M tokens
    expected = 3 * (55 * 4 + 64 * 0.40 + 13 * 32 + 30 * 16 + 91 * 64) / 1e6
    assert p.cost_usd == pytest.approx(expected, abs=1e-6)  # rounded to micro-dollars


def test_cost_uses_model_prices() -> None:
    usage = Usage(output_audio_tokens=1_000_000)
    assert estimate_cost(usage, "gpt-realtime") == 64.0
    assert estimate_cost(usage, "gpt-realtime-mini") == 20.0


def test_recording_channels_and_cut(call: list[ArchivedEvent]) -> None:
    timeline = render(call)
    assert timeline.rate == 8000
    # every caller frame, end to end: 1.6 + 1.0 + 1.1 + 0.4 s
    assert timeline.caller_start_ms is not None
    caller_samples = int(np.count_nonzero(np.abs(timeline.caller) > 100))
    assert 0.9 * 12800 < caller_samples <= 12800
    a1, a2 = timeline.items["item_a1"], timeline.items["item_a2"]
    assert (a1.played_bytes, a1.total_bytes, a1.interrupted) == (8000, 8000, False)
    assert (a2.played_bytes, a2.total_bytes, a2.interrupted) == (4000, 16000, True)
    assert a2.end_ms - a2.start_ms == pytest.approx(500, abs=1)
    agent_samples = int(np.count_nonzero(np.abs(timeline.agent) > 100))
    assert 0.9 * 12000 < agent_samples <= 12000
    # the agent's first reply starts once the caller's first turn (1.6 s of audio) has been sent
    assert a1.start_ms >= timeline.caller_start_ms + 1600 - 1
    assert a2.start_ms >= a1.end_ms


def test_clear_without_truncate_cuts_queued_audio() -> None:
    steps = [s for s in script("CAclr") if s.payload.get("type") != "conversation.item.truncate"
             and not (s.subject.endswith("carrier.mark") and s.payload.get("cleared"))]
    timeline = render(events_from(steps, "CAclr"))
    a2 = timeline.items["item_a2"]
    assert a2.interrupted
    # cut at the clear: the caller had sent 0.5 s silence + 0.6 s speech into the agent's reply
    assert a2.end_ms - a2.start_ms == pytest.approx(1100, abs=25)


def test_bad_audio_and_bodies_are_skipped_not_fatal(call: list[ArchivedEvent]) -> None:
    broken = ArchivedEvent("RT", 9999, "CAunit", 9999, "rt.CAunit.client.input_audio_buffer.append", "client",
                           "input_audio_buffer.append", "session", 9999, None, T0 + 1, T0 + 1, None, {},
                           b'{"type":"input_audio_buffer.append","audio":"***"}')
    garbage = ArchivedEvent("RT", 10000, "CAunit", 10000, "rt.CAunit.server.response.done", "server",
                            "response.done", "session", 10000, None, T0 + 2, T0 + 2, None, {}, b"\xff\xfe not json")
    p = project([*call, broken, garbage])
    assert len(p.turns) == 4


def test_formats_from_session_update_and_started() -> None:
    assert format_name({"type": "audio/pcm", "rate": 24000}) == "audio/pcm;rate=24000"
    assert format_name({"type": "audio/pcma"}) == "audio/pcma"
    assert format_name({"type": "weird"}) is None
    fin, fout = call_formats(events_from(script("CAfmt"), "CAfmt"))
    assert (fin.name, fout.name) == ("audio/pcmu", "audio/pcmu")


def test_empty_call_projects_to_nothing() -> None:
    p = project([])
    assert p.turns == [] and p.tool_calls == [] and p.cost_usd == 0.0


def test_agent_audio_sent_after_the_call_ended_is_not_in_the_recording() -> None:
    steps = script("CAend")
    ended = next(s for s in steps if s.subject.endswith(".ended"))
    rest = [s for s in steps if s is not ended]
    deltas = [i for i, s in enumerate(rest) if s.payload.get("type") == "response.output_audio.delta"]
    hang_up_at = deltas[len(deltas) // 2]  # the caller hangs up halfway through the agent's audio
    hung_up = [*rest[:hang_up_at], ended, *rest[hang_up_at:]]
    full = render(events_from(hung_up, "CAend"))
    only_before = render(events_from([*rest[:hang_up_at], ended], "CAend"))
    assert len(full.agent) == len(only_before.agent)
    assert np.array_equal(full.agent, only_before.agent)
    assert any(p.interrupted for p in full.items.values()) or len(full.agent) <= len(full.caller)


def test_disclosure_status_and_span_are_projected(call: list[ArchivedEvent]) -> None:
    p = project(call)
    assert (p.disclosure, p.disclosure_played_ms) == ("completed", 2000)  # the scripted call's record
    assert p.to_dict()["disclosure"] == "completed"
    interrupted = [e for e in call if e.type != "session.disclosure"] + events_from(
        [Step("session", "call.CAunit.session.disclosure", {"status": "interrupted", "played_ms": 700})], "CAunit")
    p = project(interrupted)
    assert (p.disclosure, p.disclosure_played_ms) == ("interrupted", 700)
    none = project([e for e in call if e.type != "session.disclosure"])
    assert (none.disclosure, none.disclosure_played_ms) == (None, None)


def test_the_disclosure_played_by_the_session_is_on_the_agent_channel() -> None:
    cid = "CAplay"
    steps = [s for s in script(cid) if not s.subject.startswith("rt.")][:1]  # call.started only
    steps.append(Step("session", f"call.{cid}.command.play", {
        "audio": base64.b64encode(tone(440, 400)).decode(), "audio_format": "audio/pcmu",
        "item_id": f"disclosure_{cid}"}, 500.0))
    steps.append(Step("gateway", f"call.{cid}.ended", {"reason": "caller_hangup"}))
    timeline = render(events_from(steps, cid))
    assert np.abs(timeline.agent[: 8 * 400]).max() > 1000  # 400 ms of tone at 8 kHz on the agent side
    assert not timeline.caller.any()
    assert f"disclosure_{cid}" in timeline.items


def test_disclosure_column_text_in_the_console_and_the_cli() -> None:
    from services.recorder.ui.pages import disclosure_text
    from switchboard.cli.archive import _disclosure

    for render_text in (disclosure_text, _disclosure):
        assert render_text({}) == "-"
        assert render_text({"disclosure_status": "completed", "disclosure_played_ms": 3600}) == "completed"
        assert render_text({"disclosure_status": "interrupted", "disclosure_played_ms": 700}) == "interrupted (0.7 s)"
