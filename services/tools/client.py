"""The caller side of a tool call (the session uses it): :func:`call_tool`.

One deadline for the whole call (``request.deadline_ms``, default ``spec.timeout_ms``), several attempts
inside it, all with the SAME ``tool_call_id`` so the worker's idempotency store makes the retries safe:

- 503 (no responder: no worker subscribed yet, or every worker restarting) → retry after a short backoff, while
  at least ``min_retry_ms`` of the budget is left after it; with less, the 503 stands (a last attempt with a
  sliver of budget would end in a timeout that says nothing about any worker, and would be reported as 504);
- no reply within the attempt's share of the budget (a worker died mid-request, or is stuck) → retry, but only
  for tools whose retries are safe (``spec.idempotent`` with a ``tool_call_id``); the retry reaches another
  worker of the queue group, and if the first attempt did commit, the retry returns its stored result;
- any other error (400/404/409/500, or 504 from the worker itself) → raised at once.

Each attempt sends the budget still left as ``deadline_ms`` (milliseconds from sending that attempt). An
attempt waits ``max(remaining × attempt_fraction, min_attempt_ms)`` (bounded by what is left), so a dead worker
costs at most half of the budget. Tool round trips are recorded in ``switchboard.tool.duration``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass

from services.tools.framework import ToolRequest, ToolResult
from shared import metrics, subjects
from shared.bus import Bus, Headers
from shared.errors import ServiceCallError
from shared.tool_registry import ToolSpec

__all__ = ["RetryPolicy", "call_tool"]


@dataclass(frozen=True)
class RetryPolicy:
    """How :func:`call_tool` splits its deadline between attempts."""

    attempt_fraction: float = 0.5
    """Share of the remaining budget one attempt may wait (0 < f ≤ 1); 1 = no retry after a silent worker."""
    min_attempt_ms: float = 250.0
    """Lower bound of one attempt's wait (ms)."""
    backoff_ms: float = 50.0
    """Pause before retrying after 503 no-responders (ms)."""
    min_retry_ms: float = 50.0
    """Least budget (ms) that must be left after the backoff to retry after a 503; with less, the 503 is raised.
    A no-responders answer takes one round trip through nats-server, which on a loaded machine can take a few
    ms; a worker that only now subscribes could not answer a real request in less than this anyway."""

    def __post_init__(self) -> None:
        if not 0 < self.attempt_fraction <= 1:
            raise ValueError("attempt_fraction must be in (0, 1]")
        if self.min_attempt_ms <= 0 or self.backoff_ms < 0 or self.min_retry_ms < 0:
            raise ValueError("min_attempt_ms must be positive, backoff_ms and min_retry_ms not negative")


async def call_tool(bus: Bus, spec: ToolSpec, request: ToolRequest, *,
                    policy: RetryPolicy | None = None) -> ToolResult:
    """Request ``tools.<spec.name>`` and return the worker's :class:`ToolResult`.

    Raises:
        ServiceCallError: the worker's error (400/404/409/500/504 with its speakable message), 503 when no
            worker answered, 504 when the deadline passed; 502 when the reply is not a valid tool reply.
    """
    policy = policy or RetryPolicy()
    budget_ms = request.deadline_ms if request.deadline_ms is not None else float(spec.timeout_ms)
    start = time.monotonic()
    deadline = start + budget_ms / 1000
    retry_silence = spec.idempotent and bool(request.tool_call_id)
    subject = subjects.tool(spec.name)
    headers = {Headers.CALL_ID: request.call.call_id} if request.call.call_id else None
    attrs = {"gen_ai.tool.name": spec.name}
    last: ServiceCallError = ServiceCallError(504, "That took too long to answer.")
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            metrics.TOOL_ROUND_TRIP.record((time.monotonic() - start) * 1000, {**attrs, "error.type": str(last.code)})
            raise last
        wait = remaining
        if retry_silence:
            wait = min(remaining, max(remaining * policy.attempt_fraction, policy.min_attempt_ms / 1000))
        attempt = dataclasses.replace(request, deadline_ms=round(remaining * 1000, 1))
        try:
            # the call id travels as a header but not as a seq: tool requests are not in the event log
            env = await bus.request(subject, attempt.to_json(), timeout=wait, headers=headers)
        except ServiceCallError as exc:
            last = exc
            if exc.code == 503 and deadline - time.monotonic() >= (policy.backoff_ms + policy.min_retry_ms) / 1000:
                await asyncio.sleep(policy.backoff_ms / 1000)
                continue
            if exc.code == 504 and retry_silence:  # silence (or the worker's own 504 at the deadline)
                continue
            metrics.TOOL_ROUND_TRIP.record((time.monotonic() - start) * 1000, {**attrs, "error.type": str(exc.code)})
            raise
        try:
            result = ToolResult.from_reply(env.json())
        except ValueError:
            raise ServiceCallError(502, "The tool gave an answer I could not read.") from None
        metrics.TOOL_ROUND_TRIP.record((time.monotonic() - start) * 1000, attrs)
        return result
