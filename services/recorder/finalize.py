"""Rebuilding a call's projections and recording once it has ended.

``call.<id>.ended`` lives on CALLS while the call's Realtime events live on RT and may still be in flight
(the session logs its last events after the carrier hung up). A call is therefore finalized once (1) at
least ``settle_s`` seconds have passed since its ``ended`` was archived and (2) the RT consumer's committed
position has reached the RT stream's last sequence as seen at that moment. Events archived for a call after
it was finalized mark it for another (idempotent) rebuild. At start-up, ended calls never projected are
picked up again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.recorder import models
from services.recorder.archive import Archive, BatchResult
from services.recorder.projections import project
from services.recorder.queries import call_events, save_projection
from services.recorder.recording import write_wav

__all__ = ["Finalizer"]

log = logging.getLogger(__name__)

LastSeq = Callable[[], Awaitable[int]]
"""Returns the RT stream's current last sequence."""


class Finalizer:
    """Schedules and runs call finalization (projections + stereo WAV under ``recordings_dir``)."""

    def __init__(self, engine: AsyncEngine, archive: Archive, recordings_dir: Path, rt_last_seq: LastSeq,
                 *, settle_s: float = 1.0) -> None:
        self.engine = engine
        self.archive = archive
        self.recordings_dir = recordings_dir
        self.rt_last_seq = rt_last_seq
        self.settle_s = settle_s
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
                    target = await self.rt_last_seq()
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), 0.2)

    async def finalize(self, call_id: str) -> Path | None:
        """Rebuild the projections of ``call_id`` and write its recording; returns the WAV path (None when the
        call has no audio)."""
        events = await call_events(self.engine, call_id)
        projection = await asyncio.to_thread(project, events)
        path: Path | None = None
        timeline = projection.timeline
        if timeline is not None and len(timeline.caller):
            path = await asyncio.to_thread(write_wav, self.recordings_dir / f"{call_id}.wav", timeline)
        await save_projection(self.engine, call_id, projection, str(path) if path else None)
        async with self.done:
            self.finalized[call_id] = self.finalized.get(call_id, 0) + 1
            self.done.notify_all()
        log.info("call %s finalized: %d turns, %d tool calls, %d barge-ins, recording %s", call_id,
                 len(projection.turns), len(projection.tool_calls), len(projection.barge_ins), path)
        return path
