"""Reading the archive and writing projections (used by the API, the finalizer, the CLI and tests)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.recorder import models
from services.recorder.chain import ChainHead, ChainProblem, ChainReport, gap_record, seq_gaps, verify_chain
from services.recorder.crypto import KeyUnavailable
from services.recorder.projections import Projection, project
from services.recorder.records import ArchivedEvent
from services.recorder.vault import Vault, configured_vault

__all__ = [
    "call_events",
    "call_ids",
    "call_spans",
    "chain_rows",
    "get_call",
    "iter_call_events",
    "list_calls",
    "positions",
    "save_projection",
    "stored_projection",
    "stream_gaps",
    "verify_call",
    "verify_projection",
]

_EVENT_ORDER = (models.events.c.stream, models.events.c.stream_seq)


def _call_dict(row: Any) -> dict[str, Any]:
    data = dict(row._mapping)
    started, ended = data.get("started_ns"), data.get("ended_ns")
    data["duration_ms"] = (ended - started) / 1e6 if started and ended else None
    return data


async def list_calls(engine: AsyncEngine, *, limit: int = 50) -> list[dict[str, Any]]:
    """The most recent calls (by start time, newest first), as ``calls`` rows plus ``duration_ms``."""
    stmt = (select(models.calls)
            .order_by(func.coalesce(models.calls.c.started_ns, 0).desc(), models.calls.c.call_id).limit(limit))
    async with engine.connect() as conn:
        return [_call_dict(r) for r in (await conn.execute(stmt)).all()]


async def get_call(engine: AsyncEngine, call_id: str) -> dict[str, Any] | None:
    """One ``calls`` row with ``duration_ms`` and event counts per stream, or None when unknown."""
    async with engine.connect() as conn:
        row = (await conn.execute(select(models.calls).where(models.calls.c.call_id == call_id))).first()
        if row is None:
            return None
        counts = (await conn.execute(
            select(models.chain_heads.c.stream, models.chain_heads.c.chain_index)
            .where(models.chain_heads.c.call_id == call_id))).all()
    data = _call_dict(row)
    data["events"] = {r.stream: int(r.chain_index) for r in counts}
    return data


async def call_events(engine: AsyncEngine, call_id: str, *, stream: str | None = None,
                      vault: Vault | None = None) -> list[ArchivedEvent]:
    """Every archived event of ``call_id`` (both streams unless ``stream``), ordered by stream, stream seq.

    The content fields are opened with ``vault`` (default: :func:`~services.recorder.vault.configured_vault`);
    an erased call's read ``[erased]``.

    Raises:
        services.recorder.crypto.KeyUnavailable: content is sealed and the call's key cannot be had.
    """
    stmt = select(models.events).where(models.events.c.call_id == call_id).order_by(*_EVENT_ORDER)
    if stream is not None:
        stmt = stmt.where(models.events.c.stream == stream)
    async with engine.connect() as conn:
        events = [ArchivedEvent.from_row(r) for r in (await conn.execute(stmt)).all()]
    opened = await (vault or configured_vault()).opener(engine, call_id)
    return [opened(ev) for ev in events]


async def iter_call_events(engine: AsyncEngine, call_id: str, *, chunk: int = 1000,
                           vault: Vault | None = None) -> AsyncIterator[ArchivedEvent]:
    """Stream a call's events in time order, ``chunk`` rows at a time (bounded memory for long calls); content
    opened with ``vault`` as in :func:`call_events` (the key is read once, before the first event)."""
    opened = await (vault or configured_vault()).opener(engine, call_id)
    ts = func.coalesce(models.events.c.ts_ns, models.events.c.stream_ts_ns)
    last: tuple[int, str, int] | None = None
    while True:
        stmt = (select(models.events, ts.label("t")).where(models.events.c.call_id == call_id)
                .order_by(ts, models.events.c.stream, models.events.c.stream_seq).limit(chunk))
        if last is not None:
            t, s, q = last
            stmt = stmt.where((ts > t) | ((ts == t) & (models.events.c.stream > s))
                              | ((ts == t) & (models.events.c.stream == s) & (models.events.c.stream_seq > q)))
        async with engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        for row in rows:
            yield opened(ArchivedEvent.from_row(row))
        if len(rows) < chunk:
            return
        tail = rows[-1]._mapping
        last = (int(tail["t"]), str(tail["stream"]), int(tail["stream_seq"]))


async def verify_call(engine: AsyncEngine, call_id: str, *, vault: Vault | None = None) -> ChainReport:
    """Recompute every hash chain of ``call_id`` against its stored rows, gap records and chain heads.

    A gap record in a chain (stream sequences lost before archiving) is reported as a ``gap`` problem, so
    such a call never verifies as intact. The chains cover the stored (sealed) content, so they verify
    without any key and after an erasure; recomputing the projections opens the content with ``vault``
    (a key that cannot be had is reported as a ``projection`` problem naming why). An erased call is reported
    as erased (``report.erased``) and only its content-free projections are compared.
    """
    report = ChainReport(call_id)
    g = models.chain_gaps
    async with engine.connect() as conn:
        heads = {r.stream: ChainHead(int(r.chain_index), int(r.last_stream_seq), r.hash) for r in (await conn.execute(
            select(models.chain_heads).where(models.chain_heads.c.call_id == call_id))).all()}
        rows = [dict(r._mapping) for r in (await conn.execute(
            select(models.events).where(models.events.c.call_id == call_id).order_by(*_EVENT_ORDER))).all()]
        gaps = (await conn.execute(select(g).where(g.c.call_id == call_id))).all()
    absent = seq_gaps(rows)
    for gap in gaps:
        record = gap_record(gap.stream, call_id, int(gap.chain_index), int(gap.first_seq), int(gap.last_seq),
                            gap.reason, int(gap.detected_ns))
        record["hash"] = gap.hash
        rows.append(record)
    rows.sort(key=lambda r: (r["stream"], int(r["stream_seq"]), 0 if r.get("gap") else 1))
    for stream in sorted({*heads, *(r["stream"] for r in rows)}):
        chain = [r for r in rows if r["stream"] == stream]
        report.records[stream] = len(chain)
        report.problems.extend(verify_chain(stream, chain, heads.get(stream), absent_seqs=absent))
    report.problems.extend(await verify_projection(engine, call_id, rows, vault=vault, report=report))
    return report


async def chain_rows(engine: AsyncEngine, call_id: str) -> list[dict[str, Any]]:
    """Every chain record of a call, gap records included: ``stream, chain_index, stream_seq, hash`` (for the
    comparison with a signed checkpoint, :func:`services.recorder.checkpoints.compare`)."""
    e, g = models.events, models.chain_gaps
    async with engine.connect() as conn:
        rows = (await conn.execute(select(e.c.stream, e.c.chain_index, e.c.stream_seq, e.c.hash)
                                   .where(e.c.call_id == call_id))).all()
        gaps = (await conn.execute(select(g.c.stream, g.c.chain_index, g.c.first_seq, g.c.hash)
                                   .where(g.c.call_id == call_id))).all()
    return ([{"stream": r[0], "chain_index": int(r[1]), "stream_seq": int(r[2]), "hash": r[3]} for r in rows]
            + [{"stream": r[0], "chain_index": int(r[1]), "stream_seq": int(r[2]), "hash": r[3]} for r in gaps])


_CALL_FIELDS = (("from", "from_number"), ("to", "to_number"), ("agent", "agent"),
                ("carrier_call_id", "carrier_call_id"), ("carrier", "carrier"))


LATENCY_TOLERANCE_MS = 1.0
"""Stored and recomputed tool latencies may differ by this much: calls projected before the figure was defined
once (:func:`shared.callfigures.tool_latency_ms`, 0.1 ms) stored whole-ms differences."""


def _same_tool_calls(stored: list[dict[str, Any]], fresh: list[dict[str, Any]]) -> bool:
    """Equal rows, except that ``latency_ms`` may differ by :data:`LATENCY_TOLERANCE_MS`."""
    if len(stored) != len(fresh):
        return False
    for old, new in zip(stored, fresh, strict=True):
        a, b = old.get("latency_ms"), new.get("latency_ms")
        if {**old, "latency_ms": None} != {**new, "latency_ms": None} or (a is None) != (b is None):
            return False
        if a is not None and b is not None and abs(float(a) - float(b)) > LATENCY_TOLERANCE_MS:
            return False
    return True


async def verify_projection(engine: AsyncEngine, call_id: str, rows: list[dict[str, Any]], *,
                            vault: Vault | None = None, report: ChainReport | None = None) -> list[ChainProblem]:
    """Recompute a finalized call's projections from its archived ``rows`` (content opened with ``vault``, default
    the configured one) and
    compare them with the stored ones (``calls`` row, ``transcript_turns``, ``tool_calls``, ``barge_ins``); one
    ``projection`` problem per difference. Calls not yet finalized have nothing stored to compare. For an erased
    call (noted in ``report.erased``) the turns, tool calls and parties' numbers were purged with the key: only
    the barge-ins, token counts and barge-in count are compared (without the audio timeline, which is erased)."""
    call = await get_call(engine, call_id)
    if call is None:
        return []
    erased = call.get("erased_ns") is not None
    if erased and report is not None:
        report.erased = {"erased_ns": call["erased_ns"], "erased_by": call.get("erased_by"),
                         "reason": call.get("erase_reason")}
    if not call.get("projected_ns"):
        return []
    problems: list[ChainProblem] = []

    def differs(what: str) -> None:
        problems.append(ChainProblem("projection", "projection", 0, None, None, None, None, what))

    try:
        opened = await (vault or configured_vault()).opener(engine, call_id)
        events = [opened(ArchivedEvent.from_row(r)) for r in rows if not r.get("gap")]
    except KeyUnavailable as exc:
        differs(f"cannot open the archived content to recompute the projections: {exc}")
        return problems
    projection = project(events, with_audio=not erased)
    stored = await stored_projection(engine, call_id)
    fresh = projection.to_dict()
    for key in ("barge_ins",) if erased else ("turns", "tool_calls", "barge_ins"):
        kept = [{k: v for k, v in row.items() if k != "idx"} for row in stored[key]]
        if not (_same_tool_calls(kept, fresh[key]) if key == "tool_calls" else kept == fresh[key]):
            differs(f"stored {key} differ from those recomputed from the archived events")
    counts = {"turns": len(projection.turns), "tool_call_count": len(projection.tool_calls),
              "barge_in_count": len(projection.barge_ins), "input_tokens": projection.usage.input_tokens,
              "output_tokens": projection.usage.output_tokens, "disclosure_status": projection.disclosure}
    if erased:  # the erasure deleted the turns and tool calls: their counts went with them
        counts = {k: v for k, v in counts.items() if k not in ("turns", "tool_call_count")}
    for column, value in counts.items():
        if call.get(column) != value:
            differs(f"calls.{column} is {call.get(column)!r}, the archived events give {value!r}")
    started = next((ev for ev in events if ev.stream == "CALLS" and ev.subject.endswith(".started")), None)
    if started is not None and not erased:
        body = started.json() or {}
        for key, column in _CALL_FIELDS:
            want = body.get(key) if isinstance(body, dict) else None
            if want is not None and call.get(column) != str(want):
                differs(f"calls.{column} is {call.get(column)!r}, the archived started event says {want!r}")
    return problems


async def positions(engine: AsyncEngine) -> dict[str, int]:
    """The committed position (highest archived stream sequence) per stream name."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(models.consumer_positions))).all()
    return {r.stream: int(r.last_stream_seq) for r in rows}


async def call_ids(engine: AsyncEngine) -> list[str]:
    """Every call id in the archive, sorted."""
    async with engine.connect() as conn:
        return list((await conn.execute(select(models.calls.c.call_id).order_by(models.calls.c.call_id))).scalars())


async def stream_gaps(engine: AsyncEngine) -> list[dict[str, Any]]:
    """Every stream-level gap record (``chain_gaps`` rows without a call): ``stream, first_seq, last_seq,
    reason, detected_ns`` ordered by stream and sequence."""
    g = models.chain_gaps
    stmt = (select(g.c.stream, g.c.first_seq, g.c.last_seq, g.c.reason, g.c.detected_ns)
            .where(g.c.call_id.is_(None)).order_by(g.c.stream, g.c.first_seq))
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in (await conn.execute(stmt)).all()]


async def call_spans(engine: AsyncEngine, call_id: str) -> list[dict[str, Any]]:
    """Spans of the call's trace(s): spans tagged with the call id plus every span sharing their trace id,
    ordered by start time; ``attributes``/``events`` decoded."""
    async with engine.connect() as conn:
        trace_ids = {r[0] for r in (await conn.execute(
            select(models.spans.c.trace_id).where(models.spans.c.call_id == call_id).distinct())).all()}
        call_trace = (await conn.execute(
            select(models.calls.c.trace_id).where(models.calls.c.call_id == call_id))).scalar()
        if call_trace:
            trace_ids.add(call_trace)
        if not trace_ids:
            return []
        rows = (await conn.execute(select(models.spans).where(models.spans.c.trace_id.in_(sorted(trace_ids)))
                                   .order_by(models.spans.c.start_ns))).all()
    out = []
    for r in rows:
        data = dict(r._mapping)
        data.pop("id", None)
        data["attributes"] = json.loads(data["attributes"])
        data["events"] = json.loads(data["events"])
        out.append(data)
    return out


async def save_projection(engine: AsyncEngine, call_id: str, projection: Projection,
                          recording_path: str | None) -> None:
    """Replace the call's stored projections (turns, tool calls, barge-ins, usage, cost, recording path,
    disclosure status)."""
    u = projection.usage
    async with engine.begin() as conn:
        for table in (models.transcript_turns, models.tool_calls, models.barge_ins):
            await conn.execute(delete(table).where(table.c.call_id == call_id))
        if projection.turns:
            await conn.execute(models.transcript_turns.insert(), [
                {"call_id": call_id, "idx": i, **asdict(t)} for i, t in enumerate(projection.turns)])
        if projection.tool_calls:
            await conn.execute(models.tool_calls.insert(), [
                {"call_id": call_id, "idx": i, **asdict(t)} for i, t in enumerate(projection.tool_calls)])
        if projection.barge_ins:
            await conn.execute(models.barge_ins.insert(), [
                {"call_id": call_id, "idx": i, **asdict(b)} for i, b in enumerate(projection.barge_ins)])
        await conn.execute(update(models.calls).where(models.calls.c.call_id == call_id).values(
            input_tokens=u.input_tokens, output_tokens=u.output_tokens, input_text_tokens=u.input_text_tokens,
            input_audio_tokens=u.input_audio_tokens, cached_tokens=u.cached_tokens,
            output_text_tokens=u.output_text_tokens, output_audio_tokens=u.output_audio_tokens,
            cost_usd=projection.cost_usd, turns=len(projection.turns), tool_call_count=len(projection.tool_calls),
            barge_in_count=len(projection.barge_ins), recording_path=recording_path,
            disclosure_status=projection.disclosure, disclosure_played_ms=projection.disclosure_played_ms,
            projected_ns=time.time_ns()))


async def stored_projection(engine: AsyncEngine, call_id: str) -> dict[str, list[dict[str, Any]]]:
    """The stored turns, tool calls and barge-ins of a call (ordered)."""
    out: dict[str, list[dict[str, Any]]] = {}
    async with engine.connect() as conn:
        for key, table in (("turns", models.transcript_turns), ("tool_calls", models.tool_calls),
                           ("barge_ins", models.barge_ins)):
            rows = (await conn.execute(select(table).where(table.c.call_id == call_id).order_by(table.c.idx))).all()
            out[key] = [{k: v for k, v in r._mapping.items() if k not in ("id", "call_id")} for r in rows]
    return out
