"""Agent specs (``agents/*.yaml``): instructions, voice, turn detection, transcription, greeting, tools, flows.

A spec is validated on load (pydantic) and turned into the Realtime GA ``session`` object of a
``session.update`` (https://platform.openai.com/docs/api-reference/realtime-client-events/session/update) by
:func:`session_config`. Tools are named in the spec and resolved to
their JSON Schemas from the tool registry (:mod:`shared.tool_registry`) when a call starts.

Example::

    name: receptionist
    version: "2"                # optional, default "1"; agents/rollout.yaml splits traffic between versions
    instructions: "You are the receptionist of ..."
    model: gpt-realtime         # optional; default SWITCHBOARD_MODEL
    voice: marin
    greeting: "Thank you for calling. How can I help?"
    turn_detection: {type: server_vad, silence_duration_ms: 500}
    transcription: {model: gpt-4o-mini-transcribe, language: en}
    tools: [check_availability, book_appointment, end_call]
    retention_days: 30          # optional; the recorder erases these calls 30 days after they ended
    disclosure:                 # optional; a plain string is short for {text: ...}
      text: "You are speaking with an AI assistant. This call is recorded."
      gate_recording: true      # default: caller audio and transcripts are stored only once it has played
    redaction: {enabled: true, patterns: ["MRN-\\d{6}"]}   # optional; default SWITCHBOARD_REDACTION
    flow:                       # optional
      initial: triage
      states:
        - id: triage
          instructions: "Find out what the caller needs."     # appended to the agent instructions
          tools: [lookup_customer, end_call]
          transitions: [{on_tool: lookup_customer, to: booking}]
        - id: booking
          tools: [book_appointment, end_call]
        - id: payment             # keypad capture: digits go to the tool, never to the model or the log
          capture: {kind: card, length: 16, tool: take_payment}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.audio import parse_format
from shared.redact import Redactor
from shared.tool_registry import ToolSpec

__all__ = ["AgentSpec", "AgentSpecError", "CaptureSpec", "DisclosureSpec", "FlowSpec", "RedactionSpec", "StateSpec",
           "Transition", "load_agent", "session_config"]


class AgentSpecError(ValueError):
    """An agent spec file is missing, not YAML, or does not validate; the message says where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Transition(_Strict):
    """Go to state ``to`` when tool ``on_tool`` returns (and, with ``when``, its output has those values)."""

    on_tool: str
    to: str
    when: dict[str, Any] | None = None
    """Subset match on the tool's ``output`` object (``{status: booked}``); None = any successful reply."""


class CaptureSpec(_Strict):
    """PCI-safe keypad capture in a flow state (:mod:`services.session.capture`; docs/compliance.md)."""

    kind: Literal["card", "digits"]
    """``card``: a payment card number (the masked form keeps the last four); ``digits``: any code (fully masked)."""
    length: int = Field(ge=1, le=32)
    """Digits expected; the entry is submitted when this many are in (or on ``#``; ``*`` starts over)."""
    tool: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """The tool that receives the digits (sealed, :mod:`shared.sealed`); the model only gets its result."""


class StateSpec(_Strict):
    """One flow state: extra instructions, the tools available in it, its transitions and keypad capture."""

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    instructions: str = ""
    tools: list[str] | None = None
    """Tool names for this state; None = the agent's tools."""
    transitions: list[Transition] = Field(default_factory=list)
    capture: CaptureSpec | None = None
    """Keypad capture while in this state: caller audio does not reach the model, digits go to the tool."""


class FlowSpec(_Strict):
    """Flow states and the state a call starts in."""

    initial: str
    states: list[StateSpec]

    @model_validator(mode="after")
    def _check_states(self) -> FlowSpec:
        ids = [s.id for s in self.states]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate flow state ids in {ids}")
        if self.initial not in ids:
            raise ValueError(f"flow initial state {self.initial!r} is not one of {ids}")
        for state in self.states:
            for t in state.transitions:
                if t.to not in ids:
                    raise ValueError(f"state {state.id!r}: transition to unknown state {t.to!r}")
        return self

    def state(self, state_id: str) -> StateSpec:
        """The state with id ``state_id``. Raises KeyError when unknown."""
        for s in self.states:
            if s.id == state_id:
                return s
        raise KeyError(state_id)


class DisclosureSpec(_Strict):
    """What the session plays before anything else on a call (docs/compliance.md, "Disclosure")."""

    text: str = Field(min_length=1, max_length=2000)
    """The exact words, synthesised by espeak-ng (:mod:`shared.tts`) and played through ``command.play``."""
    gate_recording: bool = True
    """True: caller audio (and so transcripts) reaches the model and the log only after the carrier confirmed
    the whole disclosure played; audio and keypad digits before that are discarded. False: they are held and
    forwarded once the disclosure is over."""
    voice: str = Field("en-us+klatt", pattern=r"^[A-Za-z0-9_+-]{1,64}$")
    """espeak-ng voice name."""
    rate_wpm: int = Field(175, ge=80, le=450)
    """espeak-ng speaking rate, words per minute."""


class RedactionSpec(_Strict):
    """Redaction of this agent's calls (:mod:`shared.redact`; docs/compliance.md, "Redaction")."""

    enabled: bool = True
    """Overrides ``SWITCHBOARD_REDACTION`` for this agent."""
    patterns: list[str] = Field(default_factory=list)
    """Regular expressions redacted in addition to ``SWITCHBOARD_REDACTION_PATTERNS``."""

    @model_validator(mode="after")
    def _compile(self) -> RedactionSpec:
        Redactor(self.patterns)  # raises ValueError naming a pattern that does not compile
        return self


class AgentSpec(_Strict):
    """A validated agent spec (see the module docstring for the YAML shape)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    version: str = Field("1", pattern=r"^[A-Za-z0-9._-]{1,32}$")
    """The spec's version (``call.<id>.started`` ``agent_version``; A/B rollouts: :mod:`shared.rollout`)."""
    instructions: str
    model: str | None = None
    """Realtime model for this agent's calls (the ``?model=`` of the WebSocket URL and ``session.model``);
    None: ``SWITCHBOARD_MODEL``."""
    voice: str = "marin"
    greeting: str | None = None
    turn_detection: dict[str, Any] | None = Field(
        default_factory=lambda: {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                 "silence_duration_ms": 500, "create_response": True,
                                 "interrupt_response": True})
    """Realtime ``audio.input.turn_detection`` (None = manual commit)."""
    transcription: dict[str, Any] | None = Field(
        default_factory=lambda: {"model": "gpt-4o-mini-transcribe", "language": "en"})
    """Realtime ``audio.input.transcription``; needed to rebuild a conversation after a reconnect."""
    tools: list[str] = Field(default_factory=list)
    tool_choice: Literal["auto", "none", "required"] = "auto"
    speed: float = Field(1.0, ge=0.25, le=1.5)
    flow: FlowSpec | None = None
    retention_days: float | None = Field(None, gt=0)
    """Days the recorder keeps this agent's calls after they ended before erasing them (crypto-shredding,
    services/recorder/erasure.py); None: ``SWITCHBOARD_RETENTION_DAYS`` (unset: kept)."""
    disclosure: DisclosureSpec | None = None
    """Played first on every call, with proof of playback (:mod:`services.session.disclosure`)."""
    redaction: RedactionSpec | None = None
    """None: ``SWITCHBOARD_REDACTION`` decides."""

    @field_validator("disclosure", mode="before")
    @classmethod
    def _disclosure_text(cls, value: Any) -> Any:
        return {"text": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_flow_tools(self) -> AgentSpec:
        if self.flow is not None:
            for state in self.flow.states:
                unknown = set(state.tools or []) - set(self.tools)
                if unknown:
                    raise ValueError(f"state {state.id!r} uses tools not in the agent's tools: {sorted(unknown)}")
        return self

    def tools_for(self, state_id: str | None) -> list[str]:
        """Tool names available in ``state_id`` (the agent's tools without a flow)."""
        if self.flow is None or state_id is None:
            return list(self.tools)
        state = self.flow.state(state_id)
        return list(self.tools) if state.tools is None else list(state.tools)

    def capture_for(self, state_id: str | None) -> CaptureSpec | None:
        """The keypad capture of ``state_id`` (None: none, or no flow)."""
        if self.flow is None or state_id is None:
            return None
        return self.flow.state(state_id).capture

    def instructions_for(self, state_id: str | None) -> str:
        """The agent instructions plus the state's own instructions, if any (and, in a keypad capture state,
        how to ask for the digits)."""
        if self.flow is None or state_id is None:
            return self.instructions
        state = self.flow.state(state_id)
        parts = [self.instructions, state.instructions]
        if state.capture is not None:
            what = "card number" if state.capture.kind == "card" else "number"
            parts.append(f"Ask the caller to type the {state.capture.length}-digit {what} on the phone keypad, "
                         f"then press the hash key. Never ask them to say it aloud: while they type you do not "
                         f"hear them. You will be told the result; never repeat digits back.")
        return "\n\n".join(p for p in parts if p)


def load_agent(path: Path) -> AgentSpec:
    """Read and validate an agent spec YAML file.

    Raises:
        AgentSpecError: the file cannot be read, is not a YAML mapping, or fails validation.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AgentSpecError(f"cannot read agent spec {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise AgentSpecError(f"agent spec {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise AgentSpecError(f"agent spec {path} must be a YAML mapping")
    try:
        return AgentSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise AgentSpecError(f"agent spec {path} is invalid: {problems}") from None


def session_config(spec: AgentSpec, *, audio_format: str, registry: dict[str, ToolSpec], model: str | None,
                   state_id: str | None) -> tuple[dict[str, Any], list[str]]:
    """The Realtime GA ``session`` object for ``spec`` in flow state ``state_id``.

    ``audio_format`` is the carrier's (``audio/pcmu`` → ``{"type": "audio/pcmu"}`` in and out, so the phone
    path never resamples). Tools are resolved by name from ``registry``; returns the session and the names
    of tools the registry does not know (left out: the model cannot call a tool nobody serves).

    Raises:
        ValueError: ``audio_format`` is not a Realtime format name.
    """
    fmt = parse_format(audio_format).realtime_format()
    missing = [name for name in spec.tools_for(state_id) if name not in registry]
    tools = [registry[name].realtime_tool() for name in spec.tools_for(state_id) if name in registry]
    session: dict[str, Any] = {
        "type": "realtime",
        "instructions": spec.instructions_for(state_id),
        "output_modalities": ["audio"],
        "audio": {
            "input": {"format": fmt, "turn_detection": spec.turn_detection, "transcription": spec.transcription},
            "output": {"format": fmt, "voice": spec.voice, "speed": spec.speed},
        },
        "tools": tools,
        "tool_choice": spec.tool_choice,
    }
    if model:
        session["model"] = model
    return session, missing
