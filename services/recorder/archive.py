"""Writing the archive: one transaction per fetched batch (events + chain heads + consumer position + the
``calls`` row), so a batch is either wholly committed or not at all, and the consumer acks only after commit.

Idempotence: the committed position per stream (``consumer_positions``) is saved with the rows; a message at
or below it is a redelivery and is skipped; ``(stream, stream_seq)`` is unique and inserts use ``ON CONFLICT DO
NOTHING`` as a second guard. Writes are serialised in-process (one writer keeps the chains in stream order).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.recorder import models
from services.recorder.chain import GENESIS, ChainHead, canonical_json, canonical_record, chain_hash, gap_record
from services.recorder.crypto import content_paths, seal_body
from services.recorder.records import Gap, Incoming, classify, trace_id_of
from services.recorder.vault import Vault
from shared.bus import Headers
from shared.contracts import CallEnded, CallStarted, ContractError

__all__ = ["Archive", "ArchiveHole", "BatchResult", "upsert"]

log = logging.getLogger(__name__)


def upsert(conn: AsyncConnection, table: Any) -> Any:
    """A dialect-specific ``INSERT`` supporting ``on_conflict_do_nothing/do_update`` (SQLite, PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


@dataclass(slots=True)
class BatchResult:
    """What one committed batch changed."""

    stored: int = 0
    """New rows inserted."""
    skipped: int = 0
    """Redeliveries of rows already archived."""
    calls: set[str] = field(default_factory=set)
    """Call ids that received new rows."""
    ended: set[str] = field(default_factory=set)
    """Call ids whose ``call.<id>.ended`` is in this batch."""
    last_stream_seq: int = 0
    gap: int = 0
    """Stream sequences of this batch's gaps (gone from the stream; recorded as gap records)."""


class ArchiveHole(ValueError):
    """A batch would leave stream sequences ``first_seq..last_seq`` neither archived nor recorded as a gap."""

    def __init__(self, stream: str, first_seq: int, last_seq: int) -> None:
        super().__init__(f"{stream} stream sequences {first_seq}..{last_seq} are neither in the batch nor a gap")
        self.stream = stream
        self.first_seq = first_seq
        self.last_seq = last_seq


def _first_seq(item: Incoming | Gap) -> int:
    return item.first_seq if isinstance(item, Gap) else item.stream_seq


async def _gap_calls(conn: AsyncConnection, stream: str,
                     classified: Sequence[tuple[Incoming | Gap, str, str | None, str]]) -> dict[int, set[str]]:
    """For each gap in ``classified`` (by position): the calls whose chain on ``stream`` gets its gap record.

    A call may have had messages in the lost range when it was open at that point — ``in_progress`` in the
    database and not ended earlier in the batch, or seen earlier in the batch — or when it first appears after
    the gap without having been archived before (it may have started inside it; on CALLS a call whose first
    record after the gap is ``started`` began after it and is not hit).
    """
    batch_calls = sorted({c for _, c, _, _ in classified if c})
    open_calls = set((await conn.execute(select(models.calls.c.call_id)
                                         .where(models.calls.c.status == "in_progress"))).scalars())
    known: set[str] = set()
    for start in range(0, len(batch_calls), 500):
        known |= set((await conn.execute(select(models.calls.c.call_id).where(
            models.calls.c.call_id.in_(batch_calls[start:start + 500])))).scalars())
    first_type: dict[str, tuple[int, str]] = {}
    for number, (_, call_id, _, type_) in enumerate(classified):
        if call_id and call_id not in first_type:
            first_type[call_id] = (number, type_)
    hit: dict[int, set[str]] = {}
    current = set(open_calls)
    for number, (item, call_id, direction, type_) in enumerate(classified):
        if isinstance(item, Gap):
            later = {c for c, (n, t) in first_type.items() if n > number and c not in known
                     and not (stream == "CALLS" and t == "started")}
            hit[number] = current | later
        elif direction is None and type_ == "ended":
            current.discard(call_id)
        else:
            current.add(call_id)
    return hit


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


class Archive:
    """The archive writer over an async engine; keeps chain heads and positions cached per process.

    With a ``vault`` the caller content of every event (:data:`services.recorder.crypto.CONTENT_FIELDS`) is
    sealed under its call's data key before it is stored and hashed; without one bodies are stored as published.
    """

    def __init__(self, engine: AsyncEngine, *, cache_size: int = 50_000, vault: Vault | None = None) -> None:
        self.engine = engine
        self.vault = vault
        self._heads: OrderedDict[tuple[str, str], ChainHead] = OrderedDict()
        """Chain heads of recently active calls (LRU, at most ``cache_size``; misses are read from the DB)."""
        self._positions: dict[str, int] | None = None
        self._known_calls: OrderedDict[str, None] = OrderedDict()
        self.cache_size = cache_size
        self._lock = asyncio.Lock()
        self._advanced = asyncio.Condition()

    @property
    def write_lock(self) -> asyncio.Lock:
        """Held while the archive writes; other writers of the ``calls`` rows (the lost-call check) take it."""
        return self._lock

    async def wait_for_position(self, stream: str, stream_seq: int) -> None:
        """Return once ``stream``'s committed position reaches ``stream_seq`` (wrap in a timeout)."""
        async with self._advanced:
            await self._advanced.wait_for(lambda: (self._positions or {}).get(stream, 0) >= stream_seq)

    async def _notify(self) -> None:
        async with self._advanced:
            self._advanced.notify_all()

    async def positions(self) -> dict[str, int]:
        """Committed position (highest stream sequence) per stream name."""
        if self._positions is None:
            async with self.engine.connect() as conn:
                rows = (await conn.execute(select(models.consumer_positions))).all()
            self._positions = {r.stream: int(r.last_stream_seq) for r in rows}
        return dict(self._positions)

    async def position(self, stream: str) -> int:
        """Committed position of ``stream`` (0 when nothing was archived yet)."""
        return (await self.positions()).get(stream, 0)

    async def _load_heads(self, conn: AsyncConnection, keys: Iterable[tuple[str, str]]) -> None:
        missing = [k for k in keys if k not in self._heads]
        if not missing:
            return
        ids = sorted({k[0] for k in missing})
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = (await conn.execute(
                select(models.chain_heads).where(models.chain_heads.c.call_id.in_(chunk)))).all()
            for r in rows:
                self._heads[(r.call_id, r.stream)] = ChainHead(int(r.chain_index), int(r.last_stream_seq), r.hash)

    async def persist(self, stream: str, batch: Sequence[Incoming], gaps: Sequence[Gap] = ()) -> BatchResult:
        """Archive ``batch`` (messages of ``stream`` in stream order) and ``gaps`` in one transaction.

        Messages at or below the committed position are redeliveries and skipped. The rest, together with
        ``gaps`` (ranges gone from the stream), must cover every stream sequence from the committed position + 1
        to the last one without a hole — the archive never skips a sequence silently. Each gap is stored as a
        stream-level ``chain_gaps`` row and as a gap record (:func:`~services.recorder.chain.gap_record`) in the
        chain of every call it may have hit (see :func:`_gap_calls`). With nothing archived yet (position 0)
        the batch may start anywhere.

        Returns what changed. Raises :class:`ArchiveHole` when a sequence is neither in ``batch`` nor in
        ``gaps``, and the database's error when the transaction fails — nothing of the batch is committed then,
        and the caller retries the same batch before fetching more (stream order).
        """
        async with self._lock:
            position = await self.position(stream)
            fresh = list({m.stream_seq: m for m in batch if m.stream_seq > position}.values())  # one per seq
            live_gaps = [Gap(max(g.first_seq, position + 1), g.last_seq, g.reason) for g in gaps
                         if g.last_seq > position]
            result = BatchResult(skipped=len(batch) - len(fresh), last_stream_seq=position)
            if not fresh and not live_gaps:
                return result
            items: list[Incoming | Gap] = sorted([*fresh, *live_gaps], key=_first_seq)
            expected = position + 1 if position else _first_seq(items[0])
            for item in items:
                if _first_seq(item) != expected:
                    raise ArchiveHole(stream, expected, _first_seq(item) - 1)
                expected = (item.last_seq if isinstance(item, Gap) else item.stream_seq) + 1
            last = expected - 1
            heads: dict[tuple[str, str], ChainHead] = {}
            created_keys: dict[str, bytes] = {}
            rows: list[dict[str, Any]] = []
            gap_rows: list[dict[str, Any]] = []
            started: list[tuple[str, Incoming]] = []
            ended: list[tuple[str, Incoming]] = []
            detected_ns = time.time_ns()
            async with self.engine.begin() as conn:
                classified = [(m, *classify(m.subject, m.headers)) if isinstance(m, Incoming) else (m, "", None, "")
                              for m in items]
                hit = await _gap_calls(conn, stream, classified) if live_gaps else {}
                await self._load_heads(conn, {(c[1], stream) for c in classified if c[1]}
                                       | {(c, stream) for calls in hit.values() for c in calls})
                keys: dict[str, bytes] = {}
                if self.vault is not None:
                    keys, created_keys = await self.vault.writer_keys(conn, sorted(
                        {c for item, c, _, t in classified if isinstance(item, Incoming) and content_paths(t)}))

                def append(key: tuple[str, str], row: dict[str, Any]) -> None:
                    head = heads.get(key) or self._heads.get(key)
                    row["chain_index"] = (head.chain_index if head else 0) + 1
                    row["hash"] = chain_hash(head.hash if head else GENESIS, canonical_record(row))
                    heads[key] = ChainHead(row["chain_index"], row["stream_seq"], row["hash"])

                for number, (item, call_id, direction, type_) in enumerate(classified):
                    if isinstance(item, Gap):
                        log.error("%s were never archived: gone from the stream before the recorder read them; "
                                  "gap recorded for %d call(s)", item.describe(stream), len(hit[number]))
                        result.gap += item.last_seq - item.first_seq + 1
                        reason = item.reason[:255]
                        base = {"stream": stream, "first_seq": item.first_seq, "last_seq": item.last_seq,
                                "reason": reason, "detected_ns": detected_ns}
                        gap_rows.append({**base, "call_id": None, "chain_index": None, "hash": None})
                        for gap_call in sorted(hit[number]):
                            record = gap_record(stream, gap_call, 0, item.first_seq, item.last_seq,
                                                reason, detected_ns)
                            append((gap_call, stream), record)
                            gap_rows.append({**base, "call_id": gap_call, "chain_index": record["chain_index"],
                                             "hash": record["hash"]})
                            result.calls.add(gap_call)
                        continue
                    msg = item
                    row: dict[str, Any] = {
                        "stream": stream, "stream_seq": msg.stream_seq, "call_id": call_id,
                        "subject": msg.subject, "direction": direction, "type": type_,
                        "source": msg.headers.get(Headers.SOURCE), "seq": _int(msg.headers.get(Headers.SEQ)),
                        "msg_id": msg.headers.get(Headers.MSG_ID), "ts_ns": _int(msg.headers.get(Headers.TS)),
                        "stream_ts_ns": msg.stream_ts_ns, "trace_id": trace_id_of(msg.headers),
                        "headers": canonical_json(msg.headers).decode(),
                        "body": (seal_body(keys[call_id], call_id, stream, msg.stream_seq, type_, msg.body)
                                 if call_id in keys and content_paths(type_) else msg.body),
                    }
                    append((call_id, stream), row)
                    rows.append(row)
                    result.calls.add(call_id)
                    if direction is None and type_ == "started":
                        started.append((call_id, msg))
                    elif direction is None and type_ == "ended":
                        result.ended.add(call_id)
                        ended.append((call_id, msg))
                if rows:
                    await _insert_events(conn, rows)
                if gap_rows:
                    await conn.execute(models.chain_gaps.insert(), gap_rows)
                if heads:
                    await _upsert_heads(conn, heads)
                pos = upsert(conn, models.consumer_positions)
                await conn.execute(pos.values(stream=stream, last_stream_seq=last).on_conflict_do_update(
                    index_elements=["stream"], set_={"last_stream_seq": last}))
                await self._touch_calls(conn, result.calls, started, ended)
            # committed: only now advance the caches
            if self.vault is not None:
                self.vault.committed(created_keys)
            for key, value in heads.items():
                self._heads[key] = value
                self._heads.move_to_end(key)
            for call_id in result.calls:
                self._known_calls[call_id] = None
                self._known_calls.move_to_end(call_id)
            while len(self._heads) > self.cache_size:
                self._heads.popitem(last=False)
            while len(self._known_calls) > self.cache_size:
                self._known_calls.popitem(last=False)
            assert self._positions is not None
            self._positions[stream] = last
            result.stored = len(rows)
            result.last_stream_seq = last
        await self._notify()
        return result

    async def _touch_calls(self, conn: AsyncConnection, call_ids: set[str], started: list[tuple[str, Incoming]],
                           ended: list[tuple[str, Incoming]]) -> None:
        new = [c for c in call_ids if c not in self._known_calls]
        if new:
            await conn.execute(upsert(conn, models.calls).on_conflict_do_nothing(index_elements=["call_id"]),
                               [{"call_id": c, "status": "in_progress"} for c in new])
        for call_id, msg in started:
            await conn.execute(update(models.calls).where(models.calls.c.call_id == call_id)
                               .values(**_started_fields(msg)))
        for call_id, msg in ended:
            await conn.execute(update(models.calls).where(models.calls.c.call_id == call_id)
                               .values(**_ended_fields(msg)))

    async def persist_spans(self, batch: Sequence[Incoming]) -> int:
        """Store span records (``shared.telemetry.span_to_dict`` JSON; a message holds one record or an array
        of them) from ``otel.spans``; returns rows stored.

        A record that is not a valid span is logged and skipped (spans are diagnostics, not the call log).
        """
        rows: list[dict[str, Any]] = []
        for msg in batch:
            try:
                records = json.loads(msg.body)
            except ValueError as exc:
                log.warning("skipping a non-JSON span message at TRACES seq %d: %s", msg.stream_seq, exc)
                continue
            for record in records if isinstance(records, list) else [records]:
                try:
                    rows.append(_span_row(msg, record))
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("skipping malformed span record at TRACES seq %d: %s", msg.stream_seq, exc)
        async with self._lock, self.engine.begin() as conn:
            if rows:
                await conn.execute(upsert(conn, models.spans).on_conflict_do_nothing(
                    index_elements=["trace_id", "span_id"]), rows)
            if batch:
                last = batch[-1].stream_seq
                pos = upsert(conn, models.consumer_positions)
                await conn.execute(pos.values(stream="TRACES", last_stream_seq=last).on_conflict_do_update(
                    index_elements=["stream"], set_={"last_stream_seq": last}))
        if batch and self._positions is not None:
            self._positions["TRACES"] = batch[-1].stream_seq
            await self._notify()
        return len(rows)


_EVENT_COLUMNS = ("stream", "stream_seq", "call_id", "chain_index", "subject", "direction", "type", "source", "seq",
                  "msg_id", "ts_ns", "stream_ts_ns", "trace_id", "headers", "body", "hash")
_PG_TYPES = ("varchar", "bigint", "varchar", "int", "varchar", "varchar", "varchar", "varchar", "bigint", "varchar",
             "bigint", "bigint", "varchar", "text", "bytea", "varchar")
_PLACEHOLDERS = {
    "qmark": lambda n: ", ".join("?" for _ in range(n)),
    "numeric_dollar": lambda n: ", ".join(f"${i}" for i in range(1, n + 1)),
    "numeric": lambda n: ", ".join(f":{i}" for i in range(1, n + 1)),
    "format": lambda n: ", ".join("%s" for _ in range(n)),
}


async def _upsert_heads(conn: AsyncConnection, heads: dict[tuple[str, str], ChainHead]) -> None:
    """Insert or advance the chain heads of a batch (constant SQL, so the driver's statement cache hits)."""
    cols = "call_id, stream, chain_index, last_stream_seq, hash"
    conflict = ("ON CONFLICT (call_id, stream) DO UPDATE SET chain_index = excluded.chain_index, "
                "last_stream_seq = excluded.last_stream_seq, hash = excluded.hash")
    values = [(k[0], k[1], h.chain_index, h.last_stream_seq, h.hash) for k, h in heads.items()]
    if conn.dialect.name == "postgresql" and conn.dialect.paramstyle == "numeric_dollar":
        await conn.exec_driver_sql(
            f"INSERT INTO chain_heads ({cols}) SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::int[], "
            f"$4::bigint[], $5::varchar[]) {conflict}", tuple(list(column) for column in zip(*values, strict=True)))
    elif conn.dialect.paramstyle == "qmark":
        await conn.exec_driver_sql(f"INSERT INTO chain_heads ({cols}) VALUES (?, ?, ?, ?, ?) {conflict}", values)
    else:
        stmt = upsert(conn, models.chain_heads)
        await conn.execute(stmt.on_conflict_do_update(
            index_elements=["call_id", "stream"],
            set_={"chain_index": stmt.excluded.chain_index, "last_stream_seq": stmt.excluded.last_stream_seq,
                  "hash": stmt.excluded.hash}),
            [dict(zip(("call_id", "stream", "chain_index", "last_stream_seq", "hash"), v, strict=True))
             for v in values])


async def _insert_events(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """``INSERT … ON CONFLICT (stream, stream_seq) DO NOTHING`` of many rows.

    PostgreSQL (asyncpg): one ``INSERT … SELECT * FROM unnest(<column arrays>)``. SQLite: the driver's
    executemany (one prepared statement, positional tuples). Both are several times cheaper per row than
    SQLAlchemy's per-row parameter processing; other drivers fall back to Core.
    """
    if conn.dialect.name == "postgresql" and conn.dialect.paramstyle == "numeric_dollar":
        # one statement over column arrays (unnest): one round trip and no per-row protocol messages
        arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(_PG_TYPES, start=1))
        sql = (f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) SELECT * FROM unnest({arrays}) "
               "ON CONFLICT (stream, stream_seq) DO NOTHING")
        await conn.exec_driver_sql(sql, tuple([row[c] for row in rows] for c in _EVENT_COLUMNS))
        return
    placeholders = _PLACEHOLDERS.get(conn.dialect.paramstyle)
    if placeholders is None:
        await conn.execute(upsert(conn, models.events).on_conflict_do_nothing(
            index_elements=["stream", "stream_seq"]), rows)
        return
    sql = (f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) VALUES ({placeholders(len(_EVENT_COLUMNS))}) "
           "ON CONFLICT (stream, stream_seq) DO NOTHING")
    await conn.exec_driver_sql(sql, [tuple(row[c] for c in _EVENT_COLUMNS) for row in rows])


def _clip(value: str | None, limit: int) -> str | None:
    return value[:limit] if value is not None else None


def _started_fields(msg: Incoming) -> dict[str, Any]:
    """The ``calls`` row of a ``call.<id>.started`` (:class:`~shared.contracts.CallStarted`); a body that does
    not match the contract is still archived as an event, and its row keeps only the times."""
    ts = _int(msg.headers.get(Headers.TS)) or msg.stream_ts_ns
    row: dict[str, Any] = {"started_ns": ts, "trace_id": trace_id_of(msg.headers)}
    try:
        started = CallStarted.parse(msg.body)
    except ContractError as exc:
        log.warning("call.started on %s does not match its contract: %s", msg.subject, exc)
        return row | dict.fromkeys(("carrier", "agent", "audio_format", "from_number", "to_number",
                                    "carrier_call_id", "stream_id"))
    return row | {"carrier": _clip(started.carrier, 32), "agent": _clip(started.agent, 255),
                  "audio_format": _clip(started.audio_format, 64), "from_number": _clip(started.from_, 64),
                  "to_number": _clip(started.to, 64), "carrier_call_id": _clip(started.carrier_call_id, 128),
                  "stream_id": _clip(started.stream_id, 128)}


def _ended_fields(msg: Incoming) -> dict[str, Any]:
    """The ``calls`` update of a ``call.<id>.ended`` (:class:`~shared.contracts.CallEnded`): no reason when the
    body does not match."""
    try:
        reason: str | None = CallEnded.parse(msg.body).reason
    except ContractError as exc:
        log.warning("call.ended on %s does not match its contract: %s", msg.subject, exc)
        reason = None
    return {"status": "ended", "ended_ns": _int(msg.headers.get(Headers.TS)) or msg.stream_ts_ns,
            "end_reason": _clip(reason, 64)}


def _span_row(msg: Incoming, record: Any) -> dict[str, Any]:
    """One ``spans`` row from a span record (``shared.telemetry.span_to_dict``) carried by ``msg``."""
    if not isinstance(record, dict):
        raise ValueError("span record is not an object")
    attributes = record.get("attributes") or {}
    call_id = msg.headers.get(Headers.CALL_ID) or attributes.get("switchboard.call_id")
    return {
        "trace_id": str(record["trace_id"])[:32], "span_id": str(record["span_id"])[:16],
        "parent_span_id": (str(record["parent_span_id"])[:16] if record.get("parent_span_id") else None),
        "name": str(record["name"])[:255], "kind": str(record.get("kind", "INTERNAL"))[:16],
        "service": str(record.get("service", ""))[:128], "start_ns": int(record["start_ns"]),
        "end_ns": int(record.get("end_ns") or record["start_ns"]), "status": str(record.get("status", "UNSET"))[:8],
        "status_message": record.get("status_message"),
        "attributes": json.dumps(attributes, separators=(",", ":")),
        "events": json.dumps(record.get("events") or [], separators=(",", ":")),
        "call_id": str(call_id)[:64] if call_id else None,
    }
