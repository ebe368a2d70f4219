"""Agent spec loading/validation and the Realtime session object built from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.session.agent import AgentSpecError, load_agent, session_config
from services.session.flow import FlowMachine
from shared.tool_registry import ToolSpec

ROOT = Path(__file__).resolve().parents[2]

FLOW_AGENT = """
name: flowy
instructions: Base.
tools: [lookup_customer, book_appointment, end_call]
flow:
  initial: triage
  states:
    - id: triage
      instructions: Find the customer.
      tools: [lookup_customer, end_call]
      transitions:
        - {on_tool: lookup_customer, to: booking, when: {found: true}}
    - id: booking
      tools: [book_appointment, end_call]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_receptionist_spec_loads() -> None:
    spec = load_agent(ROOT / "agents" / "receptionist.yaml")
    assert spec.name == "receptionist"
    assert spec.greeting
    assert "end_call" in spec.tools and "book_appointment" in spec.tools
    assert spec.transcription is not None  # needed to rebuild a conversation after a reconnect


def test_session_config_uses_carrier_format_and_registry_schemas() -> None:
    spec = load_agent(ROOT / "agents" / "receptionist.yaml")
    registry = {"end_call": ToolSpec("end_call", "End the call", {"type": "object", "properties": {}})}
    session, missing = session_config(spec, audio_format="audio/pcmu", registry=registry, model="gpt-realtime",
                                      state_id=None)
    assert session["type"] == "realtime"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["voice"] == "marin"
    assert [t["name"] for t in session["tools"]] == ["end_call"]
    assert session["tools"][0]["parameters"] == {"type": "object", "properties": {}}
    assert "book_appointment" in missing and "end_call" not in missing
    pcm, _ = session_config(spec, audio_format="audio/pcm;rate=24000", registry={}, model=None, state_id=None)
    assert pcm["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert "model" not in pcm


@pytest.mark.parametrize("text, fragment", [
    ("- just a list", "must be a YAML mapping"),
    ("name: x\n", "instructions"),
    ("name: 'bad name'\ninstructions: hi\n", "name"),
    ("name: x\ninstructions: hi\nunknown_key: 1\n", "unknown_key"),
    ("name: x\ninstructions: hi\ntools: [a]\nflow: {initial: nope, states: [{id: s}]}\n", "initial"),
    ("name: x\ninstructions: hi\ntools: [a]\nflow: {initial: s, states: [{id: s, tools: [b]}]}\n", "not in"),
    ("name: x\ninstructions: hi\nflow: {initial: s, states: [{id: s, transitions: [{on_tool: a, to: t}]}]}\n",
     "unknown state"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_invalid_specs_are_rejected_with_a_clear_message(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(AgentSpecError, match=fragment.replace("[", r"\[")):
        load_agent(_write(tmp_path, text))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AgentSpecError, match="cannot read"):
        load_agent(tmp_path / "nope.yaml")


def test_flow_states_select_tools_and_instructions(tmp_path: Path) -> None:
    spec = load_agent(_write(tmp_path, FLOW_AGENT))
    registry = {n: ToolSpec(n, n) for n in spec.tools}
    flow = FlowMachine(spec)
    assert flow.state == "triage"
    session, _ = session_config(spec, audio_format="audio/pcmu", registry=registry, model=None, state_id=flow.state)
    assert [t["name"] for t in session["tools"]] == ["lookup_customer", "end_call"]
    assert session["instructions"] == "Base.\n\nFind the customer."
    # a reply that does not match `when` keeps the state; other tools do nothing
    assert flow.on_tool_result("lookup_customer", {"found": False}) is None
    assert flow.on_tool_result("end_call", {"found": True}) is None
    assert flow.on_tool_result("lookup_customer", {"found": True, "name": "Jo"}) == ("triage", "booking")
    session, _ = session_config(spec, audio_format="audio/pcmu", registry=registry, model=None, state_id=flow.state)
    assert [t["name"] for t in session["tools"]] == ["book_appointment", "end_call"]
    assert session["instructions"] == "Base."
    assert flow.history == [{"from": "triage", "to": "booking", "tool": "lookup_customer"}]


def test_disclosure_text_or_mapping_and_the_demo_receptionist_declares_one(tmp_path: Path) -> None:
    short = tmp_path / "short.yaml"
    short.write_text("name: a\ninstructions: x\ndisclosure: This call is recorded.\n")
    spec = load_agent(short)
    assert spec.disclosure is not None
    assert (spec.disclosure.text, spec.disclosure.gate_recording) == ("This call is recorded.", True)
    full = tmp_path / "full.yaml"
    full.write_text("name: a\ninstructions: x\ndisclosure: {text: Recorded., gate_recording: false}\n")
    assert load_agent(full).disclosure.gate_recording is False  # type: ignore[union-attr]
    for bad in ("disclosure: ''", "disclosure: {gate_recording: true}", "disclosure: {text: a, gate: 1}"):
        path = tmp_path / "bad.yaml"
        path.write_text(f"name: a\ninstructions: x\n{bad}\n")
        with pytest.raises(AgentSpecError, match="disclosure"):
            load_agent(path)
    demo = load_agent(ROOT / "agents" / "receptionist.yaml").disclosure
    assert demo is not None and demo.gate_recording
    assert "AI assistant" in demo.text and "recorded" in demo.text
