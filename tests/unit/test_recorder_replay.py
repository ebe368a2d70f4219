"""The replay timeline and the rerun comparison (no I/O)."""

from __future__ import annotations

from services.recorder.replay import summarize, timeline
from services.recorder.rerun import RunResult, compare, extract_run
from switchboard.testing.scripted import script
from tests.unit.test_recorder_projections import events_from


def test_timeline_is_ordered_collapsed_and_summarized() -> None:
    events = events_from(script("CArep"), "CArep")
    rows = timeline(events)
    assert rows[0].type == "started" and rows[0].rel_ms == 0 and rows[0].direction == "call"
    assert rows[-1].type == "ended" and "caller_hangup" in rows[-1].summary
    assert [r.rel_ms for r in rows] == sorted(r.rel_ms for r in rows)
    appends = [r for r in rows if r.type == "input_audio_buffer.append"]
    assert appends[0].count == 80 and appends[0].direction == "client"  # 1.6 s of 20 ms frames, one row
    assert sum(r.count for r in rows) == len(events)
    tool = next(r for r in rows if r.type == "response.function_call_arguments.done")
    assert tool.summary.startswith('book_appointment({"date":"tomorrow","time":"10:00"})')
    assert len(timeline(events, collapse=False)) == len(events)


def test_summaries_of_odd_bodies() -> None:
    events = events_from(script("CAodd"), "CAodd")
    ev = events[5]
    ev.body = b"\x00binary"
    ev._parsed_done = False
    assert summarize(ev) == "7 B (not JSON)"


def test_extract_run_from_the_log() -> None:
    run = extract_run(events_from(script("CAext"), "CAext"))
    assert run.tool_calls == [("book_appointment", {"date": "tomorrow", "time": "10:00"})]
    assert run.tool_outputs == ['{"booked":true,"ref":"A1"}']
    assert run.user[0].startswith("I would like")


def test_same_tool_calls_are_equivalent_whatever_the_ids_and_key_order() -> None:
    original = RunResult(tool_calls=[("book", {"time": "10:00", "name": "John"})], user=["book at ten"])
    again = RunResult(tool_calls=[("book", {"name": "John", "time": "10:00"})], user=["Book at ten."])
    verdict = compare(original, again)
    assert verdict.equivalent and verdict.tool_calls_equal and verdict.differences == []
    assert verdict.user_similarity == 1.0


def test_different_arguments_or_missing_calls_are_not_equivalent() -> None:
    original = RunResult(tool_calls=[("book", {"time": "10:00"}), ("end_call", {})])
    wrong_args = compare(original, RunResult(tool_calls=[("book", {"time": "11:00"}), ("end_call", {})]))
    assert not wrong_args.equivalent
    assert wrong_args.differences == ['tool call 1: original book({"time": "10:00"}) vs rerun book({"time": "11:00"})']
    missing = compare(original, RunResult(tool_calls=[("book", {"time": "10:00"})]))
    assert not missing.equivalent and missing.differences == ["tool call 2: original end_call({}) vs rerun (none)"]
    reordered = compare(original, RunResult(tool_calls=[("end_call", {}), ("book", {"time": "10:00"})]))
    assert not reordered.equivalent


def test_transcript_similarity_counts_only_when_asked() -> None:
    original = RunResult(user=["I would like to book an appointment"])
    other = RunResult(user=["completely unrelated words here"])
    assert compare(original, other).equivalent
    strict = compare(original, other, min_similarity=0.8)
    assert not strict.equivalent and strict.tool_calls_equal and "similarity" in strict.differences[0]
