"""The caller side of a tool call (the session uses it): :func:`call_tool`.

One deadline for the whole call (``request.deadline_ms``, default ``spec.timeout_ms``), several attempts
inside it, all with the SAME ``tool_call_id`` so the worker's idempotency store makes them safe:

- every attempt carries the same ABSOLUTE deadline in the ``Switchboard-Deadline`` header (unix ms) and the
  budget still left in the body's ``deadline_ms`` (ms from sending that attempt). Both end ``reply_margin_ms``
  before the caller's own deadline, so a worker that commits at the last moment still gets its reply back in
  time; a worker refuses a request that arrives after it and never commits after it (docs/tools.md);
- hedging, for tools whose retries are safe (``spec.idempotent`` with a ``tool_call_id``): while no attempt has
  answered, another is sent every ``hedge_ms`` and the earlier ones keep waiting. The queue group hands each
  attempt to any worker, so a stalled worker (SIGSTOP, a blocked loop) holds only the attempts it drew; the
  first reply wins and the rest are dropped. A worker killed mid-request costs ``hedge_ms``, not the budget;
- 503 (no responder: no worker subscribed yet, or every worker restarting) → another attempt after
  ``backoff_ms``, for any tool (no worker got the request), while at least ``min_retry_ms`` of the budget
  is left after the pause; with less, the 503 stands (a last attempt with a sliver of budget would end in a
  timeout that says nothing about any worker, and would be reported as 504);
- a worker's own 504 (the deadline passed on its side) ends that attempt; others keep waiting. An attempt sent
  after a 503 that times out leaves the answer at 503: no worker was there, and the round trip that would have
  said so again did not fit (a loaded machine);
- any other error (400/404/409/500) → raised at once.

Tool round trips are recorded in ``switchboard.tool.duration``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass

from shared import metrics, subjects
from shared.bus import Bus, Envelope, Headers
from shared.contracts import ContractError, ToolRequest, ToolResult
from shared.contracts.tools import ABSOLUTE_DEADLINE_MS
from shared.errors import ServiceCallError
from shared.tool_registry import ToolSpec

__all__ = ["RetryPolicy", "call_tool"]

@dataclass(frozen=True)
class RetryPolicy:
    """How :func:`call_tool` spends its deadline on attempts.

    Raises:
        ValueError: a field out of range.
    """

    hedge_ms: float = 400.0
    """Silence (ms) after the latest attempt before another is sent, for idempotent tools with a
    ``tool_call_id``; earlier attempts keep waiting."""
    max_in_flight: int = 16
    """Most attempts of one call waiting at once (bounds what hedging adds to a slow worker's queue); a 503
    ends its attempt, so retries after 503 do not count against it."""
    backoff_ms: float = 50.0
    """Pause before retrying after 503 no-responders (ms)."""
    min_retry_ms: float = 50.0
    """Least budget (ms) that must be left after the backoff to retry after a 503; with less, the 503 is raised.
    A no-responders answer takes one round trip through nats-server, which on a loaded machine can take a few
    ms; a worker that only now subscribes could not answer a real request in less than this anyway."""
    reply_margin_ms: float = 100.0
    """How long (ms) before the caller's deadline the workers' deadline ends (at most a fifth of the budget):
    time for a reply committed at the workers' deadline to travel back before the caller gives up."""

    def __post_init__(self) -> None:
        if self.hedge_ms <= 0 or self.max_in_flight < 1:
            raise ValueError("hedge_ms must be positive and max_in_flight at least 1")
        if self.backoff_ms < 0 or self.min_retry_ms < 0 or self.reply_margin_ms < 0:
            raise ValueError("backoff_ms, min_retry_ms and reply_margin_ms must not be negative")


def _budget_ms(request: ToolRequest, spec: ToolSpec) -> float:
    """The caller's budget in ms from now (``deadline_ms`` relative or absolute, else ``spec.timeout_ms``)."""
    if request.deadline_ms is None:
        return float(spec.timeout_ms)
    if request.deadline_ms >= ABSOLUTE_DEADLINE_MS:
        return request.deadline_ms - time.time() * 1000
    return request.deadline_ms


async def call_tool(bus: Bus, spec: ToolSpec, request: ToolRequest, *,
                    policy: RetryPolicy | None = None) -> ToolResult:
    """Request ``tools.<spec.name>`` (see the module docstring) and return the worker's :class:`ToolResult`.

    Raises:
        ServiceCallError: the worker's error (400/404/409/500/504 with its speakable message), 503 when no
            worker answered, 504 when the deadline passed; 502 when the reply is not a valid tool reply.
        subjects.InvalidSubjectTokenError: ``spec.name`` cannot be a subject token.
    """
    policy = policy or RetryPolicy()
    subject = subjects.tool(spec.name)
    budget_ms = _budget_ms(request, spec)
    start = time.monotonic()
    deadline = start + budget_ms / 1000
    margin_s = min(policy.reply_margin_ms, max(budget_ms, 0.0) / 5) / 1000
    worker_deadline = deadline - margin_s
    headers = {Headers.DEADLINE: str(int(time.time() * 1000 + (worker_deadline - start) * 1000))}
    if request.call.call_id:
        headers[Headers.CALL_ID] = request.call.call_id
    hedge = spec.idempotent and bool(request.tool_call_id)
    attrs = {"gen_ai.tool.name": spec.name}
    last = ServiceCallError(504, "That took too long to answer.")
    in_flight: set[asyncio.Task[Envelope]] = set()
    after_503: set[asyncio.Task[Envelope]] = set()  # attempts sent after a 503 (no worker was subscribed)
    next_send: float | None = start  # when to send the next attempt (None: only after a 503)

    def finish(error: ServiceCallError | None) -> None:
        extra = {"error.type": str(error.code)} if error is not None else {}
        metrics.TOOL_ROUND_TRIP.record(time.monotonic() - start, {**attrs, **extra})

    try:
        while True:
            now = time.monotonic()
            if next_send is not None and now >= next_send:
                if now < worker_deadline and len(in_flight) < policy.max_in_flight:
                    attempt = dataclasses.replace(request, deadline_ms=round((worker_deadline - now) * 1000, 1))
                    # the call id travels as a header but not as a seq: tool requests are not in the event log
                    task = asyncio.ensure_future(bus.request(subject, attempt.encode(), timeout=deadline - now,
                                                             headers=headers))
                    in_flight.add(task)
                    if last.code == 503:
                        after_503.add(task)
                next_send = now + policy.hedge_ms / 1000 if hedge else None
            if not in_flight and (next_send is None or next_send >= worker_deadline):
                finish(last)
                raise last
            wake = deadline if next_send is None else min(next_send, deadline)
            done: set[asyncio.Task[Envelope]] = set()
            if in_flight:
                done, _ = await asyncio.wait(in_flight, timeout=max(0.0, wake - time.monotonic()),
                                             return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(max(0.0, wake - time.monotonic()))
            for task in done:
                in_flight.discard(task)
                exc = task.exception()
                if exc is None:
                    try:
                        result = ToolResult.parse(task.result().data)
                    except ContractError:
                        error = ServiceCallError(502, "The tool gave an answer I could not read.")
                        finish(error)
                        raise error from None
                    finish(None)
                    return result
                if not isinstance(exc, ServiceCallError):
                    finish(ServiceCallError(500, type(exc).__name__))
                    raise exc
                if exc.code == 503:
                    last = exc
                    retry_at = time.monotonic() + policy.backoff_ms / 1000
                    if deadline - retry_at >= policy.min_retry_ms / 1000:
                        next_send = retry_at if next_send is None else min(next_send, retry_at)
                    continue
                if exc.code == 504:  # silence until the caller's deadline, or the worker's own 504
                    if task not in after_503 or last.code != 503:
                        last = exc  # a retry sent when no worker was there that times out stays a 503
                    continue
                finish(exc)
                raise exc
            if time.monotonic() >= deadline and not done:
                finish(last)
                raise last
    finally:
        for task in in_flight:
            task.cancel()
        if in_flight:  # collect the losers (their late replies go to inboxes nobody reads)
            await asyncio.gather(*in_flight, return_exceptions=True)
