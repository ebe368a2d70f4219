"""Tool dispatch: a completed Realtime function call → :func:`services.tools.client.call_tool` → a result for the model.

Every request goes through ``call_tool`` (docs/tools.md, "The client"): one deadline per call (the registry's
``timeout_ms``; 5 s for a tool missing from the registry), sent as an absolute ``Switchboard-Deadline`` header
plus the relative ``deadline_ms`` the request body has always carried (docs/tools.md, "Wire contract"); the same
``tool_call_id`` on every attempt; hedged attempts when a worker is silent, retries on 503. The request body is
``arguments`` (the model's arguments, parsed), ``tool_call_id`` (the Realtime ``call_id``), ``call``
(``call_id, from, to, agent``) and ``deadline_ms``.

Outcomes, each handed to ``on_result`` as :class:`~services.tools.framework.ToolResult` or
:class:`~shared.errors.ServiceCallError` for the call to turn into a ``function_call_output`` (and, for background
tools, a later item; :func:`model_output` gives the JSON for the model):

- a reply → its ``output`` (+ ``control``);
- an error from ``call_tool`` (the worker's 400/404/409/500/504, 503 no worker, 504 deadline, 502 unreadable
  reply), arguments that are not a JSON object (400; the tool is not called) or a name that cannot be a subject
  (404) → ``{"error": {"code": ..., "message": ...}}`` with a message safe to speak, so the model can tell the
  caller;
- background tools (registry ``background``) → an immediate ``{"status": "started"}`` result, then the real
  one when it arrives.

Each function call is dispatched once (by ``call_id``; ``response.output_item.done`` and
``response.function_call_arguments.done`` both announce it) in its own task, so parallel calls run
concurrently. ``call_tool`` records the round trip in ``shared.metrics.TOOL_ROUND_TRIP``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry.context import Context

from services.tools.client import RetryPolicy, call_tool
from shared import subjects
from shared.bus import Bus
from shared.callfigures import tool_latency_ms
from shared.contracts import CallInfo, ToolRequest, ToolResult
from shared.errors import ServiceCallError
from shared.tool_registry import ToolSpec

from .telemetry import SessionHooks

__all__ = ["Outcome", "ToolDispatcher", "error_output", "model_output", "parse_arguments"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 5000
"""Deadline (ms) for a tool the registry does not list (the request is still sent: a worker may serve it)."""

Outcome = ToolResult | ServiceCallError
"""What one tool call produced: the worker's result, or the error ``call_tool`` raised."""


def error_output(code: str | int, message: str) -> dict[str, Any]:
    """The structured error a ``function_call_output`` carries: ``{"error": {"code": .., "message": ..}}``."""
    return {"error": {"code": code, "message": message}}


def model_output(outcome: Outcome) -> Any:
    """The JSON value for ``function_call_output.output``: the result's ``output``, or :func:`error_output`."""
    if isinstance(outcome, ServiceCallError):
        return error_output(outcome.code, outcome.message)
    return outcome.output


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


OnResult = Callable[[str, str, Outcome, str], Awaitable[None]]
"""``on_result(tool_call_id, name, outcome, phase)``; ``phase`` is ``result`` (ordinary tools), or ``started`` /
``final`` (background tools)."""


class ToolDispatcher:
    """Runs one call's tool requests (see the module docstring).

    Args:
        bus: the session's bus.
        call: the request's ``call`` object (``call_id``, caller, callee, agent), sent with every request; its
            ``call_id`` is also the ``Switchboard-Call-Id`` header.
        registry: tool specs by name (timeouts, background and idempotent flags).
        on_result: awaited with each outcome (:data:`OnResult`).
        hooks: telemetry hooks (one ``execute_tool`` span per call).
        policy: ``call_tool``'s retry policy (default :class:`~services.tools.client.RetryPolicy`).
    """

    def __init__(self, bus: Bus, call: CallInfo, registry: dict[str, ToolSpec],
                 on_result: OnResult, hooks: SessionHooks, policy: RetryPolicy | None = None) -> None:
        self.bus = bus
        self.call = call
        self.registry = registry
        self.on_result = on_result
        self.hooks = hooks
        self.policy = policy
        self.seen: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.calls: list[dict[str, Any]] = []
        """Every finished call: ``name``, ``tool_call_id``, ``ok``, ``duration_ms`` (for the summary;
        the tool latency of :func:`shared.callfigures.tool_latency_ms`, dispatch → result on this clock)."""

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
        spec = self.registry.get(name) or ToolSpec(name, "", timeout_ms=DEFAULT_TIMEOUT_MS)
        started_ns = time.monotonic_ns()
        with self.hooks.tool_call(name, tool_call_id, parent):
            outcome: Outcome
            try:
                args = parse_arguments(arguments)
            except ValueError as exc:
                outcome = ServiceCallError(400, f"The arguments for {name} were not valid JSON: {exc}")
            else:
                if spec.background:
                    await self._finish(tool_call_id, name, ToolResult({
                        "status": "started", "message": f"{name} is running; its result will follow."}),
                        "started", 0.0)
                outcome = await self._request(tool_call_id, spec, args)
            output = model_output(outcome)
            self.hooks.tool_result(isinstance(outcome, ToolResult), output)
            await self._finish(tool_call_id, name, outcome, "final" if spec.background else "result",
                               tool_latency_ms(started_ns, time.monotonic_ns()))

    async def _request(self, tool_call_id: str, spec: ToolSpec, args: dict[str, Any]) -> Outcome:
        request = ToolRequest(args, tool_call_id, self.call, float(spec.timeout_ms))
        try:
            return await call_tool(self.bus, spec, request, policy=self.policy)
        except subjects.InvalidSubjectTokenError:
            return ServiceCallError(404, f"There is no tool called {spec.name}.")
        except ServiceCallError as exc:
            return exc

    async def _finish(self, tool_call_id: str, name: str, outcome: Outcome, phase: str, duration_ms: float) -> None:
        if phase != "started":
            self.calls.append({"name": name, "tool_call_id": tool_call_id, "ok": isinstance(outcome, ToolResult),
                               "duration_ms": round(duration_ms, 1)})
        try:
            await self.on_result(tool_call_id, name, outcome, phase)
        except Exception:
            log.exception("handling the result of tool %s failed", name)
