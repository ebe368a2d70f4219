"""Exactly-once effects for retried tool calls: the ``tool_results`` table keyed by ``(tool, tool_call_id)``.

:func:`run_once` runs a tool's work in ONE transaction that first claims the key (INSERT of the
``tool_results`` row), then does the tool's writes, then stores the reply in the claimed row, then commits.

- A retry after the first attempt committed finds the stored reply and returns it: nothing runs twice.
- A retry racing an attempt still in flight blocks on the claim (PostgreSQL: the unique index waits for the
  other transaction; SQLite: ``BEGIN IMMEDIATE`` waits for the write lock) and then returns the stored reply.
- An attempt that dies (worker killed, deadline passed, error) commits nothing — neither its writes nor the
  claim — so the retry runs the tool afresh.
- Errors are not stored: a failed attempt changed nothing, so re-running it is safe.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.tools.framework import ToolContext, ToolResult
from services.tools.models import StoredResult

__all__ = ["Work", "load_result", "run_lazy", "run_once"]

Work = Callable[[AsyncSession], Awaitable[ToolResult]]
"""The tool's work inside the request's transaction."""


class _AlreadyClaimed(Exception):
    """Another transaction committed a result for the same key while we waited on the claim."""


async def load_result(session: AsyncSession, tool: str, tool_call_id: str) -> ToolResult | None:
    """The stored reply for ``(tool, tool_call_id)``, or None."""
    row = (await session.execute(
        select(StoredResult.reply).where(StoredResult.tool == tool, StoredResult.tool_call_id == tool_call_id)
    )).scalar_one_or_none()
    return ToolResult.from_reply(json.loads(row)) if row else None


async def run_once(sessions: async_sessionmaker[AsyncSession], tool: str, tool_call_id: str,
                   call_id: str | None, work: Work) -> tuple[ToolResult, bool]:
    """Run ``work`` at most once per ``(tool, tool_call_id)``; returns ``(result, replayed)``.

    ``replayed`` is True when the result is the stored reply of an earlier attempt.

    Raises:
        ServiceCallError: raised by ``work`` (its transaction, claim included, is rolled back).
        RuntimeError: the claim conflicted but no stored result could be read (should not happen).
    """
    try:
        async with sessions() as session, session.begin():
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
            claim.reply = json.dumps(result.to_reply(), separators=(",", ":"), ensure_ascii=False)
        return result, False
    except _AlreadyClaimed:
        async with sessions() as session, session.begin():
            stored = await load_result(session, tool, tool_call_id)
        if stored is None:
            raise RuntimeError(f"tool result {tool}/{tool_call_id} claimed but not readable") from None
        return stored, True


async def run_lazy(ctx: ToolContext, work: Callable[[], Awaitable[ToolResult]]) -> ToolResult:
    """Run ``work`` without storing its result (read-only tools, requests without ``tool_call_id``).

    The session is opened only if the tool uses ``ctx.session`` (a tool that never touches the database
    costs no connection); it is committed when ``work`` returns and closed (rolled back) on any error.
    """
    try:
        result = await work()
        if ctx.db is not None:
            await ctx.db.commit()
        return result
    finally:
        if ctx.db is not None:
            await ctx.db.close()
