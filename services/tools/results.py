"""Exactly-once effects for retried tool calls: the ``tool_results`` table keyed by ``(tool, tool_call_id)``.

:func:`run_once` runs a tool's work in ONE transaction that first claims the key (INSERT of the
``tool_results`` row), then does the tool's writes, then stores the reply in the claimed row, then commits.

- A retry after the first attempt committed finds the stored reply and returns it: nothing runs twice.
- A retry racing an attempt still in flight blocks on the claim (PostgreSQL: the unique index waits for the
  other transaction; SQLite: ``BEGIN IMMEDIATE`` waits for the write lock) and then returns the stored reply.
- An attempt that dies (worker killed, deadline passed, error) commits nothing — neither its writes nor the
  claim — so the retry runs the tool afresh.
- Nothing commits after the request's deadline: the deadline is checked inside the transaction right before
  the commit (:func:`deadline_holds`), so a worker that stalls past it and resumes rolls back.
- Errors are not stored: a failed attempt changed nothing, so re-running it is safe.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.tools.framework import DeadlineExceeded, ToolContext, ToolResult
from services.tools.models import StoredResult

__all__ = ["Work", "deadline_holds", "load_result", "run_lazy", "run_once", "within"]

Work = Callable[[AsyncSession], Awaitable[ToolResult]]
"""The tool's work inside the request's transaction."""


class _AlreadyClaimed(Exception):
    """Another transaction committed a result for the same key while we waited on the claim."""


async def load_result(session: AsyncSession, tool: str, tool_call_id: str) -> ToolResult | None:
    """The stored reply for ``(tool, tool_call_id)``, or None."""
    row = (await session.execute(
        select(StoredResult.reply).where(StoredResult.tool == tool, StoredResult.tool_call_id == tool_call_id)
    )).scalar_one_or_none()
    return ToolResult.parse(row) if row else None


def deadline_holds(deadline: float) -> None:
    """The commit-time check: return when ``time.monotonic()`` is still before ``deadline``.

    Called right before a commit, with nothing awaited between the check and the start of the commit, so a
    worker that was stalled (SIGSTOP, a blocked event loop) past the deadline rolls back instead of committing
    work its caller has already reported as failed.

    Raises:
        DeadlineExceeded: the deadline has passed.
    """
    if time.monotonic() >= deadline:
        raise DeadlineExceeded()


@asynccontextmanager
async def within(deadline: float) -> AsyncIterator[None]:
    """Run the block under ``deadline`` (a ``time.monotonic()`` instant); cancelled at the deadline.

    Raises:
        DeadlineExceeded: the deadline passed before or while the block ran.
    """
    deadline_holds(deadline)
    try:
        async with asyncio.timeout(deadline - time.monotonic()):
            yield
    except TimeoutError:
        raise DeadlineExceeded() from None


async def run_once(sessions: async_sessionmaker[AsyncSession], tool: str, tool_call_id: str,
                   call_id: str | None, work: Work, *, deadline: float) -> tuple[ToolResult, bool]:
    """Run ``work`` at most once per ``(tool, tool_call_id)``, committed only before ``deadline``
    (a ``time.monotonic()`` instant); returns ``(result, replayed)``.

    ``replayed`` is True when the result is the stored reply of an earlier attempt. The claim, the tool's
    writes and the stored reply run under the deadline; then :func:`deadline_holds` is checked inside the
    transaction, right before the commit. The commit itself is not cancelled by the deadline (a cancelled
    await does not stop a commit the driver has already started, and the reply would then deny a commit that
    happened).

    Raises:
        DeadlineExceeded: the deadline passed before the commit (the transaction, claim included, is rolled back).
        ServiceCallError: raised by ``work`` (rolled back likewise).
        RuntimeError: the claim conflicted but no stored result could be read (should not happen).
    """
    try:
        async with sessions() as session:
            async with within(deadline):
                await session.begin()
                stored = await load_result(session, tool, tool_call_id)
                if stored is not None:
                    return stored, True
                claim = StoredResult(tool=tool, tool_call_id=tool_call_id, call_id=call_id)
                session.add(claim)
                try:
                    await session.flush()
                except IntegrityError:
                    raise _AlreadyClaimed() from None
                result = await work(session)
                claim.reply = json.dumps(result.encode(), separators=(",", ":"), ensure_ascii=False)
                await session.flush()
            deadline_holds(deadline)  # leaving the block by this error closes the session: rolled back
            await session.commit()
        return result, False
    except _AlreadyClaimed:
        async with within(deadline), sessions() as session, session.begin():
            stored = await load_result(session, tool, tool_call_id)
        if stored is None:
            raise RuntimeError(f"tool result {tool}/{tool_call_id} claimed but not readable") from None
        return stored, True


async def run_lazy(ctx: ToolContext, work: Callable[[], Awaitable[ToolResult]]) -> ToolResult:
    """Run ``work`` without storing its result (read-only tools, requests without ``tool_call_id``), under
    ``ctx.deadline`` like :func:`run_once`.

    The session is opened only if the tool uses ``ctx.session`` (a tool that never touches the database
    costs no connection); it is committed when ``work`` returns and the deadline still holds
    (:func:`deadline_holds`), and closed (rolled back) otherwise or on any error.

    Raises:
        DeadlineExceeded: the deadline passed before the work finished or before the commit.
        ServiceCallError: raised by ``work``.
    """
    try:
        async with within(ctx.deadline):
            result = await work()
        if ctx.db is not None:
            deadline_holds(ctx.deadline)
            await ctx.db.commit()
        return result
    finally:
        if ctx.db is not None:
            await ctx.db.close()
