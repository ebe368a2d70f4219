"""Scenario files and expectation checking against a call log (no I/O besides a temp file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchboard.scenario import (
    CallLog,
    Expectations,
    Scenario,
    ScenarioError,
    args_match,
    args_mismatches,
    check_expectations,
    load_scenario,
)

DESIGN_EXAMPLE = """
name: book-appointment
caller: {from: "+15551230001", to: "+15559870000", voice: "en-us+klatt"}
turns:
  - say: "Hi, I would like to book an appointment for tomorrow at ten"
  - say: "My name is John Smith"
  - say: "Yes please"
    barge_in_ms: 400
  - dtmf: "1"
  - say: "No, thank you"
    hangup_after_ms: 800
expect:
  tool_calls: [{name: book_appointment, args: {time: "10:00"}}]
  transcript_contains: ["booked"]
  ended_by: agent
"""


def test_design_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(DESIGN_EXAMPLE)
    scenario = load_scenario(path)
    assert scenario.name == "book-appointment"
    assert scenario.caller.from_ == "+15551230001" and scenario.caller.voice == "en-us+klatt"
    assert [t.say for t in scenario.turns][:2] == ["Hi, I would like to book an appointment for tomorrow at ten",
                                                  "My name is John Smith"]
    assert scenario.turns[2].barge_in_ms == 400 and scenario.turns[3].dtmf == "1"
    assert scenario.turns[4].hangup_after_ms == 800
    assert scenario.expect.tool_calls[0].args == {"time": "10:00"}
    assert scenario.expect.ended_by == "agent"


@pytest.mark.parametrize(("text", "problem"), [
    ("name: x\nturns: [{}]\n", "turns.0"),
    ("name: x\nturns: [{say: a, dtmf: '1'}]\n", "either say or dtmf"),
    ("name: x\nturns: [{dtmf: 'x'}]\n", "keypad digits"),
    ("name: x\nturns: [{say: a, barge_in_ms: -1}]\n", "barge_in_ms"),
    ("name: x\nturns: [{say: a}]\nexpect: {ended_by: nobody}\n", "ended_by"),
    ("name: x\nturns: [{say: a, typo: 1}]\n", "typo"),
    ("turns: [{say: a}]\n", "name"),
    ("name: [unclosed\n", "s.yaml"),
])
def test_bad_scenarios_say_where(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=r"s\.yaml") as err:
        load_scenario(path)
    assert problem in str(err.value)


def test_missing_file() -> None:
    with pytest.raises(ScenarioError):
        load_scenario("/nonexistent/scenario.yaml")


def _log(events: list[dict[str, Any]], reason: str | None = "agent_hangup") -> CallLog:
    log = CallLog("CA1", rt=[("server", e) for e in events])
    if reason:
        log.calls.append(("ended", {"reason": reason}))
    return log


def fc(name: str, args: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    return {"type": "response.output_item.done", "item": {"type": "function_call", "status": status, "name": name,
                                                          "call_id": "c", "arguments": json.dumps(args)}}


def said(text: str) -> dict[str, Any]:
    return {"type": "response.output_audio_transcript.done", "transcript": text}


def test_expectations_hold() -> None:
    log = _log([said("Hello"), fc("lookup_customer", {}), fc("book_appointment", {"time": "10:00", "name": "John"}),
                said("You are Booked."), fc("end_call", {})])
    expect = Expectations.model_validate({"tool_calls": [{"name": "book_appointment", "args": {"time": "10:00"}},
                                                         {"name": "end_call"}],
                                          "transcript_contains": ["booked"], "ended_by": "agent"})
    assert check_expectations(expect, log) == []
    assert log.ended_by() == "agent"
    assert _log([], "transfer").ended_by() == "agent"
    assert _log([], "caller_hangup").ended_by() == "caller"
    assert _log([], None).ended_by() is None


def test_expectations_fail_with_reasons() -> None:
    log = _log([fc("book_appointment", {"time": "11:00"}), fc("end_call", {}, status="incomplete"),
                said("Sorry")], "caller_hangup")
    expect = Expectations.model_validate({"tool_calls": [{"name": "book_appointment", "args": {"time": "10:00"}}],
                                          "transcript_contains": ["booked"], "ended_by": "agent"})
    failures = check_expectations(expect, log)
    assert len(failures) == 3
    assert "book_appointment" in failures[0] and '"11:00"' in failures[0]
    assert "'booked'" in failures[1]
    assert "ended_by=caller" in failures[2]
    assert [c["name"] for c in log.tool_calls()] == ["book_appointment"]  # incomplete items are not calls


def test_tool_call_order_matters() -> None:
    log = _log([fc("end_call", {}), fc("book_appointment", {})])
    expect = Expectations.model_validate({"tool_calls": [{"name": "book_appointment"}, {"name": "end_call"}]})
    assert len(check_expectations(expect, log)) == 1


def test_args_match() -> None:
    assert args_match({"time": "10:00"}, {"time": "10:00", "date": "2026-01-01"})
    assert args_match({"name": "john smith"}, {"name": "John Smith "})
    assert args_match({"slot": {"time": "10:00"}}, {"slot": {"time": "10:00", "room": 1}})
    assert not args_match({"time": "10:00"}, {"date": "x"})
    assert not args_match({"n": 1}, {"n": "1"})
    assert not args_match({"a": {"b": 1}}, {"a": 1})


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=5))
def test_args_match_is_reflexive_and_empty_matches_all(args: dict[str, Any]) -> None:
    assert args_match(args, args)
    assert args_match({}, args)


def test_scenario_model_roundtrip() -> None:
    scenario = Scenario.model_validate({"name": "n", "turns": [{"say": "hi"}]})
    assert scenario.caller.voice == "en-us+klatt" and scenario.expect.tool_calls == []


def test_barge_in_expectation_reads_clear_and_truncate_from_the_log() -> None:
    wanted = Expectations.model_validate({"barge_in": True})
    unwanted = Expectations.model_validate({"barge_in": False})
    log = _log([said("Hello")])
    assert "expected a barge-in" in check_expectations(wanted, log)[0]
    assert check_expectations(unwanted, log) == []
    log.calls.append(("command.clear", {"item_id": "item_1"}))
    assert "truncate logged=False" in check_expectations(wanted, log)[0]  # a clear alone is not a barge-in
    log.rt.append(("client", {"type": "conversation.item.truncate", "item_id": "item_1", "audio_end_ms": 400}))
    assert check_expectations(wanted, log) == []
    assert "no barge-in" in check_expectations(unwanted, log)[0]


def test_mismatched_argument_is_named() -> None:
    log = _log([fc("book_appointment", {"name": "John Davis", "time": "10:00"})])
    expect = Expectations.model_validate(
        {"tool_calls": [{"name": "book_appointment", "args": {"name": "John Smith", "time": "10:00", "date": "x"}}]})
    failures = check_expectations(expect, log)
    assert len(failures) == 1
    assert 'name: expected "John Smith", got "John Davis"' in failures[0]
    assert 'date: expected "x", missing' in failures[0]
    assert args_mismatches({"name": "John Smith", "time": "10:00", "slot": {"room": 1}},
                           {"name": "John Davis", "time": "10:00", "slot": {"room": 2}}) == [
        'name: expected "John Smith", got "John Davis"', "slot.room: expected 1, got 2"]  # matching ones unnamed
    assert args_mismatches({"name": "john smith"}, {"name": "John Smith"}) == []


def test_demo_scenario_requires_the_name_that_was_said() -> None:
    """``make demo`` places book-appointment.yaml: a booking under another name must fail it."""
    root = Path(__file__).resolve().parents[2]
    scenario = load_scenario(root / "scenarios" / "book-appointment.yaml")
    said_name = next(t.say for t in scenario.turns if t.say and "my name is" in t.say.lower())
    assert said_name.lower().endswith("john smith")
    booked = [c for c in scenario.expect.tool_calls if c.name == "book_appointment"]
    assert booked and booked[0].args["name"] == "John Smith"
    heard_wrong = _log([fc("book_appointment", {"name": "John Davis", "date": "2026-12-08", "time": "10:00"}),
                        said("You're booked for John Davis."), fc("end_call", {})], "agent_hangup")
    assert any("John Davis" in f for f in check_expectations(scenario.expect, heard_wrong))
    heard_right = _log([fc("book_appointment", {"name": "John Smith", "date": "2026-12-08", "time": "10:00"}),
                        said("You're booked for John Smith."), fc("end_call", {})], "agent_hangup")
    assert check_expectations(scenario.expect, heard_right) == []
