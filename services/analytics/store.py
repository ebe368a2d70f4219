"""Reading and writing the analytics tables: one transaction per consumed batch, and the ``/kpis`` queries.

:func:`apply_batch` is the idempotent step: in ONE transaction it reads the stream's committed position,
skips every event at or below it (a redelivery after a crash between commit and ack), applies the rest to the
calls' :class:`~services.analytics.kpis.CallFigures`, writes the rows and latencies, and moves the position to
the batch's last sequence. Applying the same batch twice therefore changes nothing. First audio is looked up
in the RT stream (:mod:`services.analytics.turns`): a closed turn and its latency row (keyed by the delta's
sequence) commit together, so a turn closes once; :func:`resolve_turns` closes turns whose audio came later.

:func:`kpis` aggregates ended calls per group in SQL (``GROUP BY`` sums) and computes the latency percentiles
from the group's latency rows (:func:`services.analytics.kpis.aggregate`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import and_, bindparam, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from services.analytics import models, turns
from services.analytics.kpis import Aggregate, CallFigures, GroupSums, KpiEvent, aggregate, apply
from shared.pricing import Usage

__all__ = ["GROUPS", "BatchOutcome", "GroupBy", "apply_batch", "call_figures", "kpis", "open_turn_calls", "position",
           "resolve_turns"]

GroupBy = Literal["agent_version", "day", "carrier"]
GROUPS: tuple[GroupBy, ...] = ("agent_version", "day", "carrier")
_T = models.kpi_calls


@dataclass(slots=True)
class BatchOutcome:
    """What one batch changed: events applied/skipped, calls that ended in it, and the first-response
    latencies it completed as ``(agent_version, ms)``."""

    applied: int = 0
    skipped: int = 0
    ended: list[CallFigures] = field(default_factory=list)
    latencies: list[tuple[str, float]] = field(default_factory=list)
    open_turns: list[str] = field(default_factory=list)
    """Calls whose turn still waits for its first audio (only with a ``first_audio`` lookup)."""


def _figures(row: Any) -> CallFigures:
    m = row._mapping
    usage = Usage(**json.loads(m["usage"]))
    return CallFigures(
        call_id=m["call_id"], agent=m["agent"], agent_version=m["agent_version"], carrier=m["carrier"],
        from_number=m["from_number"], started_ns=m["started_ns"], ended_ns=m["ended_ns"],
        end_reason=m["end_reason"], model=m["model"], billed=bool(m["billed"]), responses=m["responses"],
        interruptions=m["interruptions"], interruptions_stopped=m["interruptions_stopped"],
        tool_calls=m["tool_calls"], tool_errors=m["tool_errors"], tasks_ok=m["tasks_ok"],
        transfer_called=bool(m["transfer_called"]), usage=usage, state=json.loads(m["state"]))


def _row(fig: CallFigures) -> dict[str, Any]:
    return {
        "call_id": fig.call_id, "agent": fig.agent, "agent_version": fig.agent_version, "carrier": fig.carrier,
        "from_number": fig.from_number, "started_ns": fig.started_ns, "day": fig.day, "ended_ns": fig.ended_ns,
        "end_reason": fig.end_reason, "model": fig.model, "billed": fig.billed, "responses": fig.responses,
        "interruptions": fig.interruptions, "interruptions_stopped": fig.interruptions_stopped,
        "tool_calls": fig.tool_calls, "tool_errors": fig.tool_errors, "tasks_ok": fig.tasks_ok,
        "transfer_called": fig.transfer_called, "escalated": fig.escalated, "dropped": fig.dropped,
        "task_completed": fig.task_completed, "cost_usd": fig.cost_usd, "usage": fig.usage_json(),
        "state": fig.state_json()}


async def _position(conn: AsyncConnection, stream: str) -> int:
    value = (await conn.execute(select(models.kpi_positions.c.last_seq)
                                .where(models.kpi_positions.c.stream == stream))).scalar()
    return int(value or 0)


async def position(engine: AsyncEngine, stream: str) -> int:
    """The highest sequence of ``stream`` already applied (0: none)."""
    async with engine.connect() as conn:
        return await _position(conn, stream)


async def _write(conn: AsyncConnection, figs: dict[str, CallFigures], existing: set[str], was_ended: set[str],
                 latencies: list[dict[str, Any]], out: BatchOutcome) -> None:
    """Write ``figs`` (update those in ``existing``, insert the others: one statement each, executemany); the
    calls that ended since ``was_ended`` (ended before the batch) go to ``out.ended``."""
    updates = [{**_row(fig), "b_call_id": cid} for cid, fig in figs.items() if cid in existing]
    inserts = [_row(fig) for cid, fig in figs.items() if cid not in existing]
    if updates:
        await conn.execute(_T.update().where(_T.c.call_id == bindparam("b_call_id")), updates)
    if inserts:
        await conn.execute(_T.insert(), inserts)
    out.ended += [fig for cid, fig in figs.items() if fig.ended and cid not in was_ended]
    if latencies:
        await conn.execute(models.kpi_latencies.insert(), latencies)


async def _close_turn(fig: CallFigures, lookup: turns.Lookup, position: int, before: int | None,
                      latencies: list[dict[str, Any]], out: BatchOutcome) -> None:
    closed = await turns.resolve(fig, lookup, position, before)
    if closed is not None and closed[1] is not None:
        latencies.append({"stream_seq": closed[0], "call_id": fig.call_id, "latency_ms": closed[1]})
        out.latencies.append((fig.agent_version or "unknown", closed[1]))


async def _load(conn: AsyncConnection, ids: set[str]) -> dict[str, CallFigures]:
    rows = (await conn.execute(select(_T).where(_T.c.call_id.in_(sorted(ids))))).all() if ids else []
    return {r.call_id: _figures(r) for r in rows}


async def apply_batch(engine: AsyncEngine, stream: str, events: Sequence[tuple[str, KpiEvent]],
                      first_audio: turns.Lookup | None = None) -> BatchOutcome:
    """Apply ``(call_id, event)`` pairs of one ``stream`` batch (ascending ``stream_seq``) in one transaction.

    ``first_audio`` (RT batches whose consumer does not receive the output audio deltas): closes open turns by
    looking their first audio up (:mod:`services.analytics.turns`), before each ``speech_stopped`` and at the
    end of the batch; ``outcome.open_turns`` lists the calls whose turn still waits.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed; nothing was written (retry the same batch).
        nats.errors.Error: a lookup failed; nothing was written (retry the same batch).
    """
    out = BatchOutcome()
    async with engine.begin() as conn:
        done = await _position(conn, stream)
        todo = [(cid, ev) for cid, ev in events if ev.stream_seq > done]
        out.skipped = len(events) - len(todo)
        if not todo:
            return out
        existing = await _load(conn, {cid for cid, _ in todo})
        was_ended = {cid for cid, f in existing.items() if f.ended}
        figs = dict(existing)
        latencies: list[dict[str, Any]] = []
        for cid, ev in todo:
            fig = figs.setdefault(cid, CallFigures(cid))
            if first_audio is not None and ev.type == "input_audio_buffer.speech_stopped":
                await _close_turn(fig, first_audio, done, ev.stream_seq, latencies, out)
            latency = apply(fig, ev)
            if latency is not None:
                latencies.append({"stream_seq": ev.stream_seq, "call_id": cid, "latency_ms": latency})
                out.latencies.append((fig.agent_version or "unknown", latency))
        if first_audio is not None:
            for fig in figs.values():
                await _close_turn(fig, first_audio, done, None, latencies, out)
                if turns.open_turn(fig, done) is not None:
                    out.open_turns.append(fig.call_id)
        await _write(conn, figs, set(existing), was_ended, latencies, out)
        last = todo[-1][1].stream_seq
        if done:
            await conn.execute(models.kpi_positions.update().where(models.kpi_positions.c.stream == stream)
                               .values(last_seq=last))
        else:
            await conn.execute(models.kpi_positions.insert().values(stream=stream, last_seq=last))
        out.applied = len(todo)
    return out


async def resolve_turns(engine: AsyncEngine, first_audio: turns.Lookup, call_ids: Sequence[str],
                        now_ns: int) -> BatchOutcome:
    """Close the open turns of ``call_ids`` whose first audio is now in the RT stream (one transaction; the
    RT position does not move). ``outcome.open_turns``: those still waiting, less the calls that ended more
    than :data:`~services.analytics.turns.SETTLE_S` before ``now_ns``.

    Raises:
        sqlalchemy.exc.SQLAlchemyError, nats.errors.Error: nothing was written (call it again).
    """
    out = BatchOutcome()
    async with engine.begin() as conn:
        done = await _position(conn, "RT")
        existing = await _load(conn, set(call_ids))
        figs = dict(existing)
        latencies: list[dict[str, Any]] = []
        changed: dict[str, CallFigures] = {}
        for cid, fig in figs.items():
            if await _close_turn_changed(fig, first_audio, done, latencies, out):
                changed[cid] = fig
            elif turns.open_turn(fig, done) is not None and (
                    fig.ended_ns is None or now_ns - fig.ended_ns < turns.SETTLE_S * 1e9):
                out.open_turns.append(cid)
        if changed:
            await _write(conn, changed, set(existing), set(existing), latencies, out)
    return out


async def _close_turn_changed(fig: CallFigures, lookup: turns.Lookup, position: int,
                              latencies: list[dict[str, Any]], out: BatchOutcome) -> bool:
    before = turns.open_turn(fig, position)
    await _close_turn(fig, lookup, position, None, latencies, out)
    return before is not None and turns.open_turn(fig, position) is None


async def open_turn_calls(engine: AsyncEngine, now_ns: int) -> list[str]:
    """Calls whose turn waits for audio (the consumer's retry list at start), less those that ended more than
    :data:`~services.analytics.turns.SETTLE_S` before ``now_ns``."""
    since = now_ns - int(turns.SETTLE_S * 1e9)
    async with engine.connect() as conn:
        rows = (await conn.execute(select(_T.c.call_id).where(
            _T.c.state.like('%"stopped_ns"%'), or_(_T.c.ended_ns.is_(None), _T.c.ended_ns >= since)))).all()
    return [r.call_id for r in rows]


async def call_figures(engine: AsyncEngine, call_id: str) -> dict[str, Any] | None:
    """One call's KPI row (without the reducer state) plus its latencies, or None when unknown."""
    async with engine.connect() as conn:
        row = (await conn.execute(select(_T).where(_T.c.call_id == call_id))).first()
        if row is None:
            return None
        lat = (await conn.execute(select(models.kpi_latencies.c.latency_ms)
                                  .where(models.kpi_latencies.c.call_id == call_id)
                                  .order_by(models.kpi_latencies.c.stream_seq))).scalars().all()
    data = {k: v for k, v in row._mapping.items() if k != "state"}
    data["usage"] = json.loads(data["usage"])
    data["first_response_ms"] = [round(float(v), 1) for v in lat]
    return data


def _key(value: object) -> str:
    return "unknown" if value is None else str(value)


def _flag(column: Any) -> Any:
    return func.sum(case((column, 1), else_=0))


async def kpis(engine: AsyncEngine, *, group_by: GroupBy, from_ns: int | None = None, to_ns: int | None = None,
               samples: bool = False) -> list[dict[str, Any]]:
    """KPIs of the ended calls started in ``[from_ns, to_ns)`` per ``group_by`` value (sorted by key).

    Each group is :meth:`Aggregate.to_dict`; with ``samples`` it also carries ``first_response_ms`` (every
    latency) and ``cost_usd`` (per priced call), for tests of significance.
    """
    key = getattr(_T.c, group_by)
    where: list[ColumnElement[bool]] = [_T.c.ended_ns.is_not(None)]
    if from_ns is not None:
        where.append(_T.c.started_ns >= from_ns)
    if to_ns is not None:
        where.append(_T.c.started_ns < to_ns)
    stmt = (select(key.label("key"), func.count().label("calls"),
                   func.sum(_T.c.interruptions).label("interruptions"),
                   func.sum(_T.c.interruptions_stopped).label("interruptions_stopped"),
                   _flag(_T.c.task_completed).label("task_completed"), _flag(_T.c.escalated).label("escalated"),
                   _flag(_T.c.dropped).label("dropped"), func.sum(_T.c.tool_calls).label("tool_calls"),
                   func.sum(_T.c.tool_errors).label("tool_errors"),
                   func.coalesce(func.sum(_T.c.cost_usd), 0.0).label("cost"),
                   func.count(_T.c.cost_usd).label("priced"))
            .where(and_(*where)).group_by(key).order_by(key))
    lat_stmt = (select(key.label("key"), models.kpi_latencies.c.latency_ms)
                .join(models.kpi_latencies, models.kpi_latencies.c.call_id == _T.c.call_id).where(and_(*where)))
    async with engine.connect() as conn:
        groups = (await conn.execute(stmt)).all()
        lat_rows = (await conn.execute(lat_stmt)).all()
        costs = (await conn.execute(select(key.label("key"), _T.c.cost_usd)
                                    .where(and_(*where, _T.c.cost_usd.is_not(None))))).all() if samples else []
    latencies: dict[str, list[float]] = {}
    for r in lat_rows:
        latencies.setdefault(_key(r.key), []).append(float(r.latency_ms))
    out = []
    for g in groups:
        k = _key(g.key)
        sums = GroupSums(k, int(g.calls), int(g.interruptions or 0), int(g.interruptions_stopped or 0),
                         int(g.task_completed or 0), int(g.escalated or 0), int(g.dropped or 0),
                         int(g.tool_calls or 0), int(g.tool_errors or 0), float(g.cost or 0.0), int(g.priced))
        agg: Aggregate = aggregate(sums, latencies.get(k, []))
        data = agg.to_dict()
        if samples:
            data["first_response_ms"] = [round(v, 1) for v in latencies.get(k, [])]
            data["cost_usd"] = [float(c.cost_usd) for c in costs if _key(c.key) == k]
        out.append(data)
    return out
