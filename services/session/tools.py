"""Tool dispatch: a completed Realtime function call → ``tools.<name>`` over NATS → a result for the model.

Request (design.md, "Tools"): JSON ``arguments`` (the model's arguments, parsed), ``tool_call_id`` (the
Realtime ``call_id``), ``call`` (``call_id, from, to, agent``) and ``deadline_ms`` (the time budget in ms
still allowed when the attempt is sent: the registry's ``timeout_ms`` on the first attempt, what is left on
a retry — the tool workers' reading of the field). The request times out after
``timeout_ms``; a ``503`` (no responder, e.g. a worker restarting) is retried with the same ``tool_call_id``
while the deadline allows.

Outcomes, each a :class:`ToolResult` for the call to turn into a ``function_call_output`` (and, for
background tools, a later item):

- reply ``{"output": ..., "control": {...}?}`` → ``output`` (+ ``control``);
- a nats.micro error (:class:`~shared.errors.ServiceCallError`), a timeout (504) or arguments that are not a
  JSON object (400, ``invalid_arguments``; the tool is not called) → ``{"error": {"code": ..., "message": ...}}``
  with a message safe to speak, so the model can tell the caller;
- background tools (registry ``background``) → an immediate ``{"status": "started"}`` result, then the real
  one when it arrives.

Each function call is dispatched once (by ``call_id``; ``response.output_item.done`` and
``response.function_call_arguments.done`` both announce it) in its own task, so parallel calls run
concurrently. The round trip is recorded in ``shared.metrics.TOOL_ROUND_TRIP``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry.context import Context

from shared import metrics, subjects
from shared.bus import Bus, Headers
from shared.errors import ServiceCallError
from shared.tool_registry import ToolSpec

from .telemetry import SessionHooks

__all__ = ["ToolDispatcher", "ToolResult", "error_output", "parse_arguments"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class ToolResult:
    """What a tool call produced.

    Attributes:
        tool_call_id: the Realtime function call's ``call_id``.
        name: the tool name.
        output: the JSON value for ``function_call_output.output`` (``{"error": {...}}`` on failure).
        ok: False when ``output`` is an error.
        control: the reply's ``control`` directive (``{"verb": "hangup"}`` / ``{"verb": "transfer", "to": ..}``).
        phase: ``result`` (the only one for ordinary tools), or ``started`` / ``final`` for background tools.
        duration_ms: request → reply (0 for ``started``).
    """

    tool_call_id: str
    name: str
    output: Any
    ok: bool
    control: dict[str, Any] | None = None
    phase: str = "result"
    duration_ms: float = 0.0


def error_output(code: str | int, message: str) -> dict[str, Any]:
    """The structured error a ``function_call_output`` carries: ``{"error": {"code": .., "message": ..}}``."""
    return {"error": {"code": code, "message": message}}


def parse_arguments(arguments: str | None) -> dict[str, Any]:
    """The model's ``arguments`` string as a JSON object (empty string → ``{}``).

    Raises:
        ValueError: not JSON, or JSON that is not an object.
    """
    if not arguments or not arguments.strip():
        return {}
    value = json.loads(arguments)
    if not isinstance(value, dict):
        raise ValueError("arguments must be a JSON object")
    return value


OnResult = Callable[[ToolResult], Awaitable[None]]


class ToolDispatcher:
    """Runs one call's tool requests (see the module docstring).

    Args:
        bus: the session's bus.
        call_id: the Switchboard call id (for headers and the request's ``call`` object).
        call_info: ``{"call_id", "from", "to", "agent"}`` sent with every request.
        registry: tool specs by name (timeouts, background flag).
        on_result: awaited with each :class:`ToolResult`.
        hooks: telemetry hooks (one ``execute_tool`` span per call).
    """

    def __init__(self, bus: Bus, call_id: str, call_info: dict[str, Any], registry: dict[str, ToolSpec],
                 on_result: OnResult, hooks: SessionHooks) -> None:
        self.bus = bus
        self.call_id = call_id
        self.call_info = call_info
        self.registry = registry
        self.on_result = on_result
        self.hooks = hooks
        self.seen: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.calls: list[dict[str, Any]] = []
        """Every dispatched call: ``name``, ``tool_call_id``, ``ok``, ``duration_ms`` (for the summary)."""

    def dispatch(self, tool_call_id: str, name: str, arguments: str | None) -> bool:
        """Start the call unless ``tool_call_id`` was already dispatched; returns True when started."""
        if not tool_call_id or tool_call_id in self.seen:
            return False
        self.seen.add(tool_call_id)
        parent = self.hooks.tool_parent()
        task = asyncio.create_task(self._run(tool_call_id, name, arguments, parent),
                                   name=f"tool-{name}-{tool_call_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def cancel(self) -> None:
        """Cancel calls still running (the call ended)."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=2)

    async def _run(self, tool_call_id: str, name: str, arguments: str | None, parent: Context | None) -> None:
        spec = self.registry.get(name)
        with self.hooks.tool_call(name, tool_call_id, parent):
            try:
                args = parse_arguments(arguments)
            except ValueError as exc:
                await self._finish(ToolResult(tool_call_id, name, error_output(
                    "invalid_arguments", f"The arguments for {name} were not valid JSON: {exc}"), ok=False))
                return
            if spec is not None and spec.background:
                await self._finish(ToolResult(tool_call_id, name, {"status": "started", "message":
                                              f"{name} is running; its result will follow."}, ok=True,
                                              phase="started"))
            result = await self._request(tool_call_id, name, args, spec)
            if spec is not None and spec.background:
                result = ToolResult(result.tool_call_id, name, result.output, result.ok, result.control,
                                    phase="final", duration_ms=result.duration_ms)
            self.hooks.tool_result(result.ok, result.output)
            await self._finish(result)

    async def _request(self, tool_call_id: str, name: str, args: dict[str, Any],
                       spec: ToolSpec | None) -> ToolResult:
        timeout_ms = spec.timeout_ms if spec is not None else DEFAULT_TIMEOUT_MS
        started = time.monotonic()
        deadline = started + timeout_ms / 1000
        payload: dict[str, Any] = {"arguments": args, "tool_call_id": tool_call_id, "call": self.call_info}
        try:
            subject = subjects.tool(name)
        except subjects.InvalidSubjectTokenError:
            return ToolResult(tool_call_id, name, error_output(404, f"There is no tool called {name}."), ok=False)
        outcome: ToolResult
        while True:
            remaining = max(0.01, deadline - time.monotonic())
            payload["deadline_ms"] = int(remaining * 1000)
            try:
                # call id as a header only: a request is not a logged event, so it takes no Switchboard-Seq
                env = await self.bus.request(subject, payload, timeout=remaining,
                                             headers={Headers.CALL_ID: self.call_id})
                outcome = self._reply(tool_call_id, name, env.data)
                break
            except ServiceCallError as exc:
                if exc.code == 503 and deadline - time.monotonic() > 0.25:
                    await asyncio.sleep(0.2)
                    continue
                outcome = ToolResult(tool_call_id, name, error_output(exc.code, exc.message), ok=False)
                break
        elapsed = (time.monotonic() - started) * 1000
        metrics.TOOL_ROUND_TRIP.record(elapsed, {"gen_ai.tool.name": name, "switchboard.tool.ok": outcome.ok})
        return ToolResult(outcome.tool_call_id, name, outcome.output, outcome.ok, outcome.control,
                          duration_ms=elapsed)

    @staticmethod
    def _reply(tool_call_id: str, name: str, data: bytes) -> ToolResult:
        try:
            reply = json.loads(data)
        except ValueError:
            reply = None
        if not isinstance(reply, dict) or "output" not in reply:
            log.warning("tool %s replied without an output object", name)
            return ToolResult(tool_call_id, name, error_output(500, f"{name} gave an answer I could not read."),
                              ok=False)
        control = reply.get("control")
        return ToolResult(tool_call_id, name, reply["output"], ok=True,
                          control=control if isinstance(control, dict) else None)

    async def _finish(self, result: ToolResult) -> None:
        if result.phase != "started":
            self.calls.append({"name": result.name, "tool_call_id": result.tool_call_id, "ok": result.ok,
                               "duration_ms": round(result.duration_ms, 1)})
        try:
            await self.on_result(result)
        except Exception:
            log.exception("handling the result of tool %s failed", result.name)
