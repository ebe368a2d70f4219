"""``switchboard replay --rerun``: feed a recorded call's caller audio to a fresh Realtime session and compare.

The fresh session gets a ``session.update`` — the one the session service would send today for the current
agent spec (:func:`agent_session_update`, reusing ``services.session.agent``), or the one the original session
sent, as logged — then the logged ``input_audio_buffer.append`` events at
their original pace divided by ``speed``. Function calls the model makes are answered with the output the
original call got for the same tool (in order), so the conversation can continue as it did. The run ends when
the audio is exhausted and the model has been idle (no response in progress) for ``idle_s`` seconds.

Equivalence (:func:`compare`): the same tool calls in the same order, by name and arguments (parsed JSON;
Realtime ``call_id``s ignored). Transcripts are compared too and reported as a similarity ratio
(``difflib``, 0–1 over normalised words); they only count when ``min_similarity`` > 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

from services.recorder.projections import parse_arguments, project
from services.recorder.records import ArchivedEvent
from shared.contracts import CallStarted, ContractError

__all__ = [
    "Comparison",
    "RunResult",
    "ToolCallKey",
    "agent_session_update",
    "compare",
    "extract_run",
    "logged_audio_format",
    "logged_session_update",
    "rerun",
]

ToolCallKey = tuple[str, Any]
"""``(name, parsed arguments)`` of one function call."""


@dataclass(slots=True)
class RunResult:
    """What a run of a call produced: tool calls and the user/agent transcripts."""

    tool_calls: list[ToolCallKey] = field(default_factory=list)
    tool_outputs: list[str | None] = field(default_factory=list)
    user: list[str] = field(default_factory=list)
    agent: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Comparison:
    """The verdict of :func:`compare`."""

    equivalent: bool
    tool_calls_equal: bool
    differences: list[str]
    user_similarity: float
    agent_similarity: float

    def to_dict(self) -> dict[str, Any]:
        """JSON shape for ``--json``."""
        return {"equivalent": self.equivalent, "tool_calls_equal": self.tool_calls_equal,
                "differences": self.differences, "user_similarity": round(self.user_similarity, 3),
                "agent_similarity": round(self.agent_similarity, 3)}


def extract_run(events: Sequence[ArchivedEvent]) -> RunResult:
    """The tool calls (name, parsed arguments) and transcripts of an archived call."""
    projection = project(events, with_audio=False)
    out = RunResult()
    for call in projection.tool_calls:
        out.tool_calls.append((call.name, call.parsed_arguments()))
        out.tool_outputs.append(call.output)
    for turn in projection.turns:
        (out.user if turn.role == "user" else out.agent).append(turn.text)
    return out


def _words(texts: Sequence[str]) -> list[str]:
    return re.findall(r"[a-z0-9']+", " ".join(texts).lower())


def _similarity(a: Sequence[str], b: Sequence[str]) -> float:
    wa, wb = _words(a), _words(b)
    if not wa and not wb:
        return 1.0
    return difflib.SequenceMatcher(a=wa, b=wb, autojunk=False).ratio()


def compare(original: RunResult, rerun_result: RunResult, *, min_similarity: float = 0.0) -> Comparison:
    """Compare two runs: equivalent when the tool calls match exactly in order (names and parsed arguments)
    and, if ``min_similarity`` > 0, the user transcript similarity reaches it."""
    differences: list[str] = []
    a, b = original.tool_calls, rerun_result.tool_calls
    for i in range(max(len(a), len(b))):
        left = a[i] if i < len(a) else None
        right = b[i] if i < len(b) else None
        if left != right:
            differences.append(f"tool call {i + 1}: original {_show(left)} vs rerun {_show(right)}")
    user_sim = _similarity(original.user, rerun_result.user)
    agent_sim = _similarity(original.agent, rerun_result.agent)
    equal = not differences
    ok = equal and (min_similarity <= 0 or user_sim >= min_similarity)
    if equal and not ok:
        differences.append(f"user transcript similarity {user_sim:.2f} < {min_similarity:.2f}")
    return Comparison(ok, equal, differences, user_sim, agent_sim)


def _show(call: ToolCallKey | None) -> str:
    if call is None:
        return "(none)"
    return f"{call[0]}({json.dumps(call[1], sort_keys=True)})"


def _caller_text_items(events: Sequence[ArchivedEvent]) -> list[ArchivedEvent]:
    """Logged ``conversation.item.create`` events carrying a user text message (keypad input)."""
    out = []
    for ev in _logged(events, "conversation.item.create"):
        try:
            item = json.loads(ev.body).get("item") or {}
        except ValueError:
            continue
        if item.get("type") == "message" and item.get("role") == "user":
            out.append(ev)
    return out


def _logged(events: Sequence[ArchivedEvent], kind: str) -> list[ArchivedEvent]:
    return [e for e in sorted(events, key=lambda e: (e.time_ns, e.stream, e.stream_seq))
            if e.direction == "client" and e.type == kind]


async def rerun(events: Sequence[ArchivedEvent], url: str, *, headers: dict[str, str] | None = None,
                session_update: dict[str, Any] | None = None, speed: float = 1.0, idle_s: float = 3.0,
                timeout_s: float = 600.0) -> RunResult:
    """Run the recorded caller audio through a fresh Realtime session at ``url`` (GA protocol,
    https://platform.openai.com/docs/api-reference/realtime); returns what the model did.

    Raises:
        ValueError: the call has no logged ``session.update`` and none was given, or no caller audio.
        TimeoutError: the session did not answer ``session.update`` or the run exceeded ``timeout_s``.
        websockets.exceptions.WebSocketException: the connection failed.
    """
    updates = _logged(events, "session.update")
    if session_update is None:
        if not updates:
            raise ValueError("the call has no logged session.update; pass the agent's session_update")
        session_update = updates[0].json()
    appends = _logged(events, "input_audio_buffer.append")
    if not appends:
        raise ValueError("the call has no logged caller audio (input_audio_buffer.append)")
    # the caller's input: its audio, plus what it typed on the keypad (user text items, e.g. "DTMF 1", each
    # answered by a response.create as the session did), in logged order
    inputs = sorted([*appends, *_caller_text_items(events)], key=lambda e: (e.time_ns, e.stream, e.stream_seq))
    original = extract_run(events)
    result = RunResult()
    outputs = list(zip(original.tool_calls, original.tool_outputs, strict=True))
    state: dict[str, int] = {"responses": 0}
    async with asyncio.timeout(timeout_s), websockets.connect(
            url, additional_headers=headers or {}, max_size=16 << 20) as ws:
        await ws.send(json.dumps(session_update))
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 15))
            if msg.get("type") == "session.updated":
                break
            if msg.get("type") == "error":
                raise ValueError(f"session.update rejected: {msg.get('error')}")

        async def send_audio() -> None:
            t0 = inputs[0].time_ns
            start = time.monotonic()
            for ev in inputs:
                due = (ev.time_ns - t0) / 1e9 / max(speed, 1e-6)
                delay = due - (time.monotonic() - start)
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send(ev.body.decode())
                if ev.type == "conversation.item.create":
                    await ws.send(json.dumps({"type": "response.create"}))

        sender = asyncio.create_task(send_audio())
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(ws.recv(), idle_s)
                except TimeoutError:
                    if sender.done() and not state["responses"]:
                        break
                    continue
                await _on_event(ws, json.loads(raw), result, outputs, state)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
    return result


async def _on_event(ws: Any, msg: dict[str, Any], result: RunResult,
                    outputs: list[tuple[ToolCallKey, str | None]], state: dict[str, int]) -> None:
    kind = msg.get("type")
    if kind == "response.created":
        state["responses"] += 1
    elif kind == "response.done":
        state["responses"] = max(0, state["responses"] - 1)
    elif kind == "conversation.item.input_audio_transcription.completed":
        result.user.append(str(msg.get("transcript") or ""))
    elif kind == "response.output_audio_transcript.done":
        result.agent.append(str(msg.get("transcript") or ""))
    elif kind == "response.output_text.done":
        result.agent.append(str(msg.get("text") or ""))
    elif kind == "response.output_item.done":
        item = msg.get("item") or {}
        if item.get("type") == "function_call" and item.get("status") == "completed":
            key: ToolCallKey = (str(item.get("name")), parse_arguments(str(item.get("arguments") or "")))
            result.tool_calls.append(key)
            index = len(result.tool_calls) - 1
            output: str | None = None
            if index < len(outputs) and outputs[index][0][0] == key[0]:
                output = outputs[index][1]
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "function_call_output", "call_id": item.get("call_id"),
                "output": output if output is not None else json.dumps({"error": "not available in a rerun"})}}))
            await ws.send(json.dumps({"type": "response.create"}))


async def agent_session_update(agent_path: Path, nats_url: str | None, *, audio_format: str,
                               model: str | None, logged: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``session.update`` the session service would send today for the agent spec at ``agent_path``
    (``services.session.agent.session_config``, initial flow state), with tool schemas from the tool registry
    on NATS at ``nats_url``; tools the registry does not answer for are taken from the ``logged``
    session.update when it has them.

    Raises:
        services.session.agent.AgentSpecError: the spec cannot be loaded.
        ValueError: ``audio_format`` is not a Realtime format name.
    """
    from services.session.agent import load_agent, session_config
    from shared import tool_registry
    from shared.bus import Bus

    spec = load_agent(agent_path)
    registry: dict[str, Any] = {}
    if nats_url:
        try:
            bus = await Bus.connect(nats_url, name="switchboard-rerun", source="cli", connect_timeout=3)
        except Exception:  # no bus reachable: fall back to the logged tool schemas
            bus = None
        if bus is not None:
            try:
                registry = await tool_registry.load(bus.js)
            except Exception:
                registry = {}
            finally:
                await bus.close()
    state = spec.flow.initial if spec.flow else None
    session, missing = session_config(spec, audio_format=audio_format, registry=registry, model=model,
                                      state_id=state)
    logged_tools = ((logged or {}).get("session") or {}).get("tools") or []
    for tool in logged_tools:
        if isinstance(tool, dict) and tool.get("name") in missing:
            session["tools"].append(tool)
    return {"type": "session.update", "session": session}


def logged_audio_format(events: Sequence[ArchivedEvent]) -> str:
    """The call's carrier audio format (``call.<id>.started.audio_format``; ``audio/pcmu`` when no started
    matches :class:`~shared.contracts.CallStarted`)."""
    for ev in events:
        if ev.direction is None and ev.type == "started":
            try:
                return CallStarted.parse(ev.body).audio_format
            except ContractError:
                continue
    return "audio/pcmu"


def logged_session_update(events: Sequence[ArchivedEvent]) -> dict[str, Any] | None:
    """The first ``session.update`` the original session sent, as logged."""
    updates = _logged(events, "session.update")
    return updates[0].json() if updates else None
