"""Rebuilding a call's projections and recording once it has ended.

``call.<id>.ended`` lives on CALLS while the call's Realtime events live on RT and may still be in flight
(the session logs its last events after the carrier hung up). A call is therefore finalized once (1) at
least ``settle_s`` seconds have passed since its ``ended`` was archived and (2) the RT consumer's committed
position has reached the RT stream's last sequence as seen at that moment. Events archived for a call after
it was finalized mark it for another (idempotent) rebuild. At start-up, ended calls never projected are
picked up again.

Lost calls: a call whose ``ended`` never arrives would stay ``in_progress``. Every ``lost_after_s / 4`` seconds
(at most 30 s) the finalizer notes the CALLS and RT streams' last sequences; once the archive has caught up
to both, every ``in_progress`` call whose newest archived event (JetStream storage time) is older than
``lost_after_s`` is ended with reason ``lost`` (``ended_ns`` = that event's time) and finalized. The age is
computed from the database, so the rule holds across recorder restarts; an ``ended`` archived later
overwrites the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.recorder import models
from services.recorder.archive import Archive, BatchResult
from services.recorder.projections import project
from services.recorder.queries import call_events, save_projection
from services.recorder.recording import write_wav

__all__ = ["LOST", "Finalizer"]

log = logging.getLogger(__name__)

LastSeq = Callable[[str], Awaitable[int]]
"""``await last_seq(stream_name)``: the stream's current last sequence."""

LOST = "lost"
"""``end_reason`` of a call ended by the lost-call rule."""


class Finalizer:
    """Schedules and runs call finalization (projections + stereo WAV under ``recordings_dir``)."""

    def __init__(self, engine: AsyncEngine, archive: Archive, recordings_dir: Path, last_seq: LastSeq,
                 *, settle_s: float = 1.0, lost_after_s: float = 600.0) -> None:
        self.engine = engine
        self.archive = archive
        self.recordings_dir = recordings_dir
        self.last_seq = last_seq
        self.settle_s = settle_s
        self.lost_after_s = lost_after_s
        self._lost_interval = min(30.0, lost_after_s / 4)
        self._lost_due = 0.0
        self._lost_targets: dict[str, int] | None = None
        self._due: dict[str, tuple[float, int | None]] = {}
        """call id → (monotonic time due, RT seq to reach or None = read when due)."""
        self._ended: set[str] = set()
        self._wakeup = asyncio.Event()
        self.finalized: dict[str, int] = {}
        """call id → how many times it was finalized (for tests and /readyz-style checks)."""
        self.done = asyncio.Condition()

    async def load_pending(self) -> None:
        """Schedule every ended call whose projections were never built, and remember ended calls."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(models.calls.c.call_id, models.calls.c.projected_ns)
                                       .where(models.calls.c.status == "ended"))).all()
        for call_id, projected in rows:
            self._ended.add(call_id)
            if projected is None:
                self.schedule(call_id)

    def schedule(self, call_id: str) -> None:
        """Finalize ``call_id`` after the settle time (restarting the wait if already scheduled)."""
        self._due[call_id] = (time.monotonic() + self.settle_s, None)
        self._wakeup.set()

    async def on_batch(self, stream: str, result: BatchResult) -> None:
        """Consumer callback: schedule newly ended calls and calls that got events after their end."""
        self._ended |= result.ended
        for call_id in result.calls:
            if call_id in self._ended:
                self.schedule(call_id)

    async def run(self, stopping: asyncio.Event) -> None:
        """Finalize due calls until ``stopping`` is set."""
        while not stopping.is_set():
            self._wakeup.clear()
            now = time.monotonic()
            for call_id, (due, target) in list(self._due.items()):
                if due > now:
                    continue
                if target is None:
                    target = await self.last_seq("RT")
                    self._due[call_id] = (due, target)
                if await self.archive.position("RT") < target:
                    continue
                if self._due.get(call_id) == (due, target):
                    del self._due[call_id]
                try:
                    await self.finalize(call_id)
                except Exception:
                    log.exception("finalizing call %s failed; retrying later", call_id)
                    self._due[call_id] = (time.monotonic() + 5.0, None)
            try:
                await self._check_lost()
            except Exception:
                log.exception("the lost-call check failed; retrying later")
                self._lost_targets = None
                self._lost_due = time.monotonic() + self._lost_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), 0.2)

    async def _check_lost(self) -> None:
        """End idle ``in_progress`` calls as ``lost`` once the archive has caught up (module docstring)."""
        if time.monotonic() < self._lost_due:
            return
        if self._lost_targets is None:
            self._lost_targets = {s: await self.last_seq(s) for s in ("CALLS", "RT")}
        for stream, target in self._lost_targets.items():
            if await self.archive.position(stream) < target:
                return  # still catching up: an idle-looking call's later events may not be archived yet
        self._lost_targets = None
        self._lost_due = time.monotonic() + self._lost_interval
        for call_id in await self.end_lost_calls(time.time_ns() - int(self.lost_after_s * 1e9)):
            self._ended.add(call_id)
            self.schedule(call_id)

    async def end_lost_calls(self, cutoff_ns: int) -> list[str]:
        """End every ``in_progress`` call whose newest archived event was stored before ``cutoff_ns`` (unix ns)
        with reason ``lost``; returns their ids. Runs under the archive's write lock, so no batch of the
        consumers interleaves between reading the ages and ending the calls."""
        lost: list[str] = []
        async with self.archive.write_lock, self.engine.begin() as conn:
            for call_id, last_ns in await _idle_calls(conn):
                if last_ns < cutoff_ns:
                    await conn.execute(update(models.calls).where(
                        models.calls.c.call_id == call_id, models.calls.c.status == "in_progress").values(
                        status="ended", end_reason=LOST, ended_ns=last_ns or None))
                    lost.append(call_id)
        for call_id in lost:
            log.warning("call %s had no event for %.0f s and no call.%s.ended: ended as %r", call_id,
                        self.lost_after_s, call_id, LOST)
        return lost

    async def finalize(self, call_id: str) -> Path | None:
        """Rebuild the projections of ``call_id`` and write its recording; returns the WAV path (None when the
        call has no audio, or was erased: an erased call keeps only its content-free projections,
        :meth:`_erased_projected`). The projection is saved
        under the archive's write lock after checking the call was not erased meanwhile (the eraser destroys
        the key under the same lock), so no transcript or recording outlives an erasure."""
        path: Path | None = None
        if await self._erased(call_id):
            projection = None
            async with self.archive.write_lock:
                await self._erased_projected(call_id)
        else:
            events = await call_events(self.engine, call_id, vault=self.archive.vault)
            projection = await asyncio.to_thread(project, events)
            timeline = projection.timeline
            if timeline is not None and len(timeline.caller):
                path = await asyncio.to_thread(write_wav, self.recordings_dir / f"{call_id}.wav", timeline)
            async with self.archive.write_lock:
                if await self._erased(call_id):
                    projection = None
                    await self._erased_projected(call_id)
                    if path is not None:
                        await asyncio.to_thread(path.unlink, missing_ok=True)
                        path = None
                else:
                    await save_projection(self.engine, call_id, projection, str(path) if path else None)
        async with self.done:
            self.finalized[call_id] = self.finalized.get(call_id, 0) + 1
            self.done.notify_all()
        if projection is None:
            log.info("call %s is erased: not projected", call_id)
            return None
        log.info("call %s finalized: %d turns, %d tool calls, %d barge-ins, recording %s", call_id,
                 len(projection.turns), len(projection.tool_calls), len(projection.barge_ins), path)
        return path

    async def _erased_projected(self, call_id: str) -> None:
        """The projection an erased call keeps: barge-ins, usage and cost (no turns, tool calls or recording),
        rebuilt from its events, whose content reads ``[erased]``; ``projected_ns`` moves on, so the checkpointer
        signs a final checkpoint over the chains including the archived ``call.<id>.erased``. Under the
        archive's write lock (held by the caller)."""
        events = await call_events(self.engine, call_id, vault=self.archive.vault)
        projection = await asyncio.to_thread(project, events, with_audio=False)
        projection.turns, projection.tool_calls = [], []
        await save_projection(self.engine, call_id, projection, None)

    async def _erased(self, call_id: str) -> bool:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(models.calls.c.erased_ns)
                                       .where(models.calls.c.call_id == call_id))).scalar() is not None


async def _idle_calls(conn: AsyncConnection) -> list[tuple[str, int]]:
    """``(call_id, newest archived stream_ts_ns)`` of every ``in_progress`` call (0 when none is found).

    The newest event per chain is the ``events`` row at the chain head's ``last_stream_seq`` (unique index);
    a chain whose head is a gap record falls back to the call's newest event (or the gap's detection time).
    """
    calls, heads, events, gaps = models.calls, models.chain_heads, models.events, models.chain_gaps
    stmt = (select(calls.c.call_id, func.max(events.c.stream_ts_ns))
            .select_from(calls.outerjoin(heads, heads.c.call_id == calls.c.call_id).outerjoin(
                events, and_(events.c.stream == heads.c.stream, events.c.stream_seq == heads.c.last_stream_seq,
                             events.c.call_id == heads.c.call_id)))
            .where(calls.c.status == "in_progress").group_by(calls.c.call_id))
    out: list[tuple[str, int]] = []
    for call_id, last_ns in (await conn.execute(stmt)).all():
        if last_ns is None:
            last_ns = (await conn.execute(select(func.max(events.c.stream_ts_ns))
                                          .where(events.c.call_id == call_id))).scalar()
        if last_ns is None:
            last_ns = (await conn.execute(select(func.max(gaps.c.detected_ns))
                                          .where(gaps.c.call_id == call_id))).scalar()
        out.append((call_id, int(last_ns or 0)))
    return out
