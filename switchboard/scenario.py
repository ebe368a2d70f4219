"""Scenario files for the caller simulator, and checking their expectations against a call's log.

Format (docs/gateway.md, "Caller simulator")::

    name: book-appointment
    caller: {from: "+15551230001", to: "+15559870000", voice: "en-us+klatt"}
    turns:
      - say: "Hi, I would like to book an appointment for tomorrow at ten"
      - say: "Yes please"
        barge_in_ms: 400        # optional: start speaking 400 ms into the agent's reply
      - dtmf: "1"               # optional: a keypad digit instead of speech
      - say: "Bye"
        hangup_after_ms: 800    # optional: hang up 800 ms into the agent's reply
    expect:
      tool_calls: [{name: book_appointment, args: {name: "John Smith", time: "10:00"}}]   # subset match
      transcript_contains: ["booked"]                                  # in the agent's transcript
      ended_by: agent                                                  # or caller
      barge_in: true            # optional: the log shows command.clear + conversation.item.truncate

``tool_calls[].args`` requires argument values: every key listed must be present in the logged call's
arguments with an equal value (strings compared case-insensitively and without surrounding spaces; nested
objects recursively); arguments not listed are not checked.

Expectations are checked against the log — the call's Realtime events replayed from the RT stream and its
call events from CALLS (:class:`CallLog`) — never against what the simulator itself sent. Tool calls are the
``response.output_item.done`` events whose item is a completed ``function_call`` (the event that triggers
tool execution, https://platform.openai.com/docs/api-reference/realtime-server-events/response/output_item/done);
the agent's transcript is every ``response.output_audio_transcript.done``;
``ended_by`` comes from ``call.<id>.ended``'s ``reason`` (``agent_hangup``/``transfer`` → agent,
``caller_hangup`` → caller).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared import subjects
from shared.bus import Bus
from shared.contracts import CallEnded, ContractError

__all__ = [
    "CallLog",
    "CallerSpec",
    "Expectations",
    "Scenario",
    "ScenarioError",
    "ToolCallExpectation",
    "Turn",
    "args_match",
    "args_mismatches",
    "check_expectations",
    "load_scenario",
    "read_call_log",
]

_AGENT_REASONS = {"agent_hangup", "transfer"}
_DTMF = set("0123456789*#ABCDabcdw")


class ScenarioError(ValueError):
    """A scenario file that cannot be read or does not match the format; the message says where."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class CallerSpec(_Model):
    """``caller``: the numbers Twilio would report and the espeak-ng voice the simulated caller speaks with."""

    from_: str = Field("+15551230001", alias="from")
    to: str = "+15559870000"
    voice: str = "en-us+klatt"


class Turn(_Model):
    """One caller turn: ``say`` (speech) or ``dtmf`` (digits), with optional ``barge_in_ms`` and
    ``hangup_after_ms`` (ms into the agent's reply)."""

    say: str | None = None
    dtmf: str | None = None
    barge_in_ms: int | None = Field(None, ge=0)
    hangup_after_ms: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_action(self) -> Turn:
        if self.say is not None and self.dtmf is not None:
            raise ValueError("a turn has either say or dtmf, not both")
        if self.say is None and self.dtmf is None and self.hangup_after_ms is None:
            raise ValueError("a turn needs say, dtmf or hangup_after_ms")
        if self.dtmf is not None and (not self.dtmf or not set(self.dtmf) <= _DTMF):
            raise ValueError(f"dtmf must be keypad digits (0-9 * # A-D), got {self.dtmf!r}")
        return self


class ToolCallExpectation(_Model):
    """An expected tool call: ``name`` and a subset of its ``args``."""

    name: str
    args: dict[str, Any] = Field(default_factory=dict)


class Expectations(_Model):
    """``expect``: every listed condition must hold."""

    tool_calls: list[ToolCallExpectation] = Field(default_factory=list)
    transcript_contains: list[str] = Field(default_factory=list)
    ended_by: Literal["agent", "caller"] | None = None
    barge_in: bool | None = None
    """True: the log must show a barge-in (``call.<id>.command.clear`` and a ``conversation.item.truncate``);
    False: it must show none."""


class Scenario(_Model):
    """A caller script (see the module docstring)."""

    name: str
    caller: CallerSpec = Field(default_factory=lambda: CallerSpec())
    turns: list[Turn]
    expect: Expectations = Field(default_factory=lambda: Expectations())


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario YAML file.

    Raises:
        ScenarioError: unreadable file, invalid YAML, or a field that does not match the format.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ScenarioError(f"{path}: {problems}") from None


@dataclass
class CallLog:
    """One call's log: Realtime events (``rt.<id>.>``, JSON, in stream order) and call events
    (``call.<id>.>`` from CALLS: ``(rest of subject, payload)``)."""

    call_id: str
    rt: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def server_events(self, event_type: str) -> list[dict[str, Any]]:
        """Server events of one type, in order."""
        return [e for d, e in self.rt if d == "server" and e.get("type") == event_type]

    def tool_calls(self) -> list[dict[str, Any]]:
        """``{name, args, call_id}`` of every completed function call item, in order (arguments parsed)."""
        out = []
        for event in self.server_events("response.output_item.done"):
            item = event.get("item") or {}
            if item.get("type") == "function_call" and item.get("status", "completed") == "completed":
                try:
                    args = json.loads(item.get("arguments") or "{}")
                except ValueError:
                    args = {"_unparsed": item.get("arguments")}
                out.append({"name": item.get("name"), "args": args, "call_id": item.get("call_id")})
        return out

    def agent_transcript(self) -> list[str]:
        """The agent's spoken lines (``response.output_audio_transcript.done``.transcript)."""
        return [str(e.get("transcript", "")) for e in self.server_events("response.output_audio_transcript.done")]

    def caller_transcript(self) -> list[str]:
        """What the model heard (``conversation.item.input_audio_transcription.completed``.transcript)."""
        return [str(e.get("transcript", ""))
                for e in self.server_events("conversation.item.input_audio_transcription.completed")]

    def ended(self) -> dict[str, Any] | None:
        """The ``call.<id>.ended`` payload, if logged."""
        for rest, payload in self.calls:
            if rest == "ended":
                return payload
        return None

    def ended_by(self) -> str | None:
        """``agent`` / ``caller`` / the raw reason, from ``call.<id>.ended`` (None before it is logged)."""
        ended = self.ended()
        if ended is None:
            return None
        try:
            reason = CallEnded.parse(ended).reason
        except ContractError:
            return "unknown"
        if reason in _AGENT_REASONS:
            return "agent"
        return "caller" if reason == "caller_hangup" else reason


async def read_call_log(bus: Bus, call_id: str) -> CallLog:
    """Replay ``rt.<id>.>`` from RT and ``call.<id>.>`` from CALLS (stream order) into a :class:`CallLog`."""
    log = CallLog(call_id)
    async for env in bus.replay(subjects.rt_all(call_id), subjects.RT_STREAM):
        parsed = subjects.parse(env.subject)
        try:
            event = env.json()
        except ValueError:
            continue
        if isinstance(event, dict):
            log.rt.append((parsed.direction or "", event))
    async for env in bus.replay(subjects.call_all(call_id), subjects.CALLS_STREAM):
        try:
            payload = env.json()
        except ValueError:
            payload = {}
        log.calls.append((subjects.parse(env.subject).rest, payload if isinstance(payload, dict) else {}))
    return log


def args_match(expected: Any, actual: Any) -> bool:
    """Subset match: every key of an expected mapping matches (recursively); other values compare equal,
    strings case-insensitively."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and args_match(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, str) and isinstance(actual, str):
        return expected.strip().casefold() == actual.strip().casefold()
    return bool(expected == actual)


def args_mismatches(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Why ``actual`` fails :func:`args_match` against ``expected``, one ``"<path>: expected X, got Y"`` per
    differing (or missing) argument, e.g. ``['name: expected "John Smith", got "John Davis"']``; empty when they
    match."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out: list[str] = []
        for key, value in expected.items():
            sub = f"{path}.{key}" if path else str(key)
            if key not in actual:
                out.append(f"{sub}: expected {json.dumps(value)}, missing")
            else:
                out.extend(args_mismatches(value, actual[key], sub))
        return out
    if args_match(expected, actual):
        return []
    return [f"{path or 'arguments'}: expected {json.dumps(expected)}, got {json.dumps(actual)}"]


def check_expectations(expect: Expectations, log: CallLog) -> list[str]:
    """Every failed expectation, as a sentence (empty list: all hold).

    Tool calls must appear in the listed order (other calls may come between them).
    """
    failures: list[str] = []
    calls = log.tool_calls()
    position = 0
    for wanted in expect.tool_calls:
        for index in range(position, len(calls)):
            if calls[index]["name"] == wanted.name and args_match(wanted.args, calls[index]["args"]):
                position = index + 1
                break
        else:
            seen = ", ".join(f"{c['name']}({json.dumps(c['args'])})" for c in calls) or "none"
            same_name = [c for c in calls[position:] if c["name"] == wanted.name]
            why = f" ({'; '.join(args_mismatches(wanted.args, same_name[0]['args']))})" if same_name else ""
            failures.append(f"expected tool call {wanted.name} with {json.dumps(wanted.args)}{why}; logged: {seen}")
    spoken = " ".join(log.agent_transcript()).casefold()
    for phrase in expect.transcript_contains:
        if phrase.casefold() not in spoken:
            failures.append(f"agent transcript does not contain {phrase!r}")
    if expect.barge_in is not None:
        cleared = any(rest == "command.clear" for rest, _ in log.calls)
        truncated = any(d == "client" and e.get("type") == "conversation.item.truncate" for d, e in log.rt)
        if expect.barge_in and not (cleared and truncated):
            failures.append(f"expected a barge-in, but command.clear logged={cleared}, "
                            f"conversation.item.truncate logged={truncated}")
        if not expect.barge_in and (cleared or truncated):
            failures.append("expected no barge-in, but the log shows one")
    if expect.ended_by is not None and log.ended_by() != expect.ended_by:
        failures.append(f"expected the call to be ended by the {expect.ended_by}, but ended_by={log.ended_by()}")
    return failures
