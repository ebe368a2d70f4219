"""Erasure by crypto-shredding, on request (``DELETE /calls/{id}``, ``switchboard erase``) or by retention.

Erasing a call (:meth:`Eraser.erase`):

1. publishes ``call.<id>.erased`` (:class:`~shared.contracts.CallErased`) to the CALLS stream with
   :meth:`Bus.publish_event` and waits for JetStream's acknowledgement — the recorder archives it into the
   call's CALLS chain like any event, so the erasure is itself a hash-chained, checkpointed, cross-checked
   record; nothing is destroyed when the publish fails. Other holders of the call's data erase their own copy
   on this event (the analytics service clears the caller's number in ``kpi_calls``);
2. in one transaction, under the archive's write lock: deletes the call's row of ``call_keys`` (the only copy of
   its data key), records ``erased_ns``/``erased_by``/``erase_reason`` in ``calls``, clears the parties'
   numbers and the recording path there, and deletes the call's ``transcript_turns`` and ``tool_calls`` (the
   projections that hold content in clear); the writer's key cache forgets the key;
3. deletes the rendered recording (``<recordings dir>/<call id>.wav`` and the stored path).

The events stay (append-only); their sealed content reads ``[erased]`` from then on, and their hash chains still
verify because they cover the stored ciphertext. JetStream keeps its own copy until ``SWITCHBOARD_JS_MAX_AGE``.

Retention (:class:`Retention`, :meth:`Eraser.sweep`): an ended call whose end lies more than its agent's
``retention_days`` (agent spec), else ``SWITCHBOARD_RETENTION_DAYS``, in the past is erased with reason
``retention``; no policy keeps calls forever. The retention is read from the agent specs at sweep time, not
from the call's log: a policy an operator shortens applies to the calls already archived.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.recorder import models
from services.recorder.archive import Archive
from services.recorder.vault import Vault
from services.session.agent import AgentSpecError, load_agent
from shared import subjects
from shared.bus import Bus, Headers
from shared.contracts import CallErased
from shared.telemetry import get_tracer

__all__ = ["Eraser", "Retention"]

log = logging.getLogger(__name__)

_DAY_NS = 86_400 * 1_000_000_000
_AGENT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(slots=True)
class Retention:
    """Days a call is kept after it ended, per agent: the agent spec's ``retention_days`` (read from
    ``agents_dir/<agent>.yaml``), else ``default_days`` (``SWITCHBOARD_RETENTION_DAYS``); None keeps forever."""

    default_days: float | None = None
    agents_dir: Path | None = None
    _specs: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    """agent → (file mtime, retention_days) of the specs read so far."""

    def days_for(self, agent: str | None) -> float | None:
        """The retention of ``agent``'s calls in days (None: kept forever). A spec that cannot be read is
        logged and the default applies."""
        if agent and self.agents_dir is not None and _AGENT_NAME.fullmatch(agent):
            path = self.agents_dir / f"{agent}.yaml"
            try:
                mtime = path.stat().st_mtime
            except OSError:
                return self.default_days
            cached = self._specs.get(agent)
            if cached is None or cached[0] != mtime:
                try:
                    cached = (mtime, load_agent(path).retention_days)
                except AgentSpecError as exc:
                    log.warning("retention of agent %s: %s; SWITCHBOARD_RETENTION_DAYS applies", agent, exc)
                    return self.default_days
                self._specs[agent] = cached
            if cached[1] is not None:
                return cached[1]
        return self.default_days

    def shortest_days(self) -> float | None:
        """The shortest retention any policy gives (the sweep's first filter); None when none is set. Files of
        the agents directory that are not agent specs (``rollout.yaml``) are passed over."""
        days = [d for d in (self.default_days,) if d is not None]
        if self.agents_dir is not None and self.agents_dir.is_dir():
            for path in self.agents_dir.glob("*.yaml"):
                try:
                    value = load_agent(path).retention_days
                except AgentSpecError:
                    continue
                if value is not None:
                    days.append(value)
        return min(days) if days else None


class Eraser:
    """Destroys calls' data keys and everything readable derived from them (module docstring).

    ``bus`` publishes the audited ``call.<id>.erased`` event; ``archive`` (the running writer, when in the same
    process) is locked while the key is destroyed so no batch seals with it meanwhile.
    """

    def __init__(self, engine: AsyncEngine, vault: Vault, bus: Bus, recordings_dir: Path, *,
                 archive: Archive | None = None, retention: Retention | None = None) -> None:
        self.engine = engine
        self.vault = vault
        self.bus = bus
        self.recordings_dir = recordings_dir
        self.archive = archive
        self.retention = retention or Retention()

    async def erase(self, call_id: str, *, by: str,
                    reason: Literal["request", "retention"] = "request") -> dict[str, Any]:
        """Erase ``call_id``; returns ``{call_id, erased_ns, erased_by, reason, already, recordings_deleted}``
        (``already``: it had been erased before; the recordings are deleted again regardless).

        Raises:
            LookupError: no such call in the archive.
            shared.errors.PublishFailedError: ``call.<id>.erased`` was not acknowledged after the bus's
                retries (nothing was erased).
        """
        c = models.calls
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(c.c.erased_ns, c.c.erased_by, c.c.erase_reason, c.c.recording_path)
                                      .where(c.c.call_id == call_id))).first()
        if row is None:
            raise LookupError(f"no call {call_id} in the archive")
        paths = {self.recordings_dir / f"{call_id}.wav"} | ({Path(row.recording_path)} if row.recording_path else set())
        if row.erased_ns is not None:
            return {"call_id": call_id, "erased_ns": int(row.erased_ns), "erased_by": row.erased_by,
                    "reason": row.erase_reason, "already": True, "recordings_deleted": await _unlink(paths)}
        erased_ns = time.time_ns()
        by = by[:128]
        record = CallErased(call_id=call_id, erased_ns=erased_ns, erased_by=by, reason=reason)
        with get_tracer("switchboard.recorder").start_as_current_span(
                "erase", attributes={"switchboard.call_id": call_id, "switchboard.erase.reason": reason}):
            await self._publish(record)
        lock = self.archive.write_lock if self.archive is not None else contextlib.nullcontext()
        async with lock, self.engine.begin() as conn:
            await conn.execute(delete(models.call_keys).where(models.call_keys.c.call_id == call_id))
            await conn.execute(update(c).where(c.c.call_id == call_id).values(
                erased_ns=erased_ns, erased_by=by, erase_reason=reason, from_number=None, to_number=None,
                recording_path=None))
            for table in (models.transcript_turns, models.tool_calls):
                await conn.execute(delete(table).where(table.c.call_id == call_id))
            self.vault.forget(call_id)
        deleted = await _unlink(paths)
        log.warning("call %s erased by %s (%s): data key destroyed, %d recording file(s) deleted",
                    call_id, by, reason, len(deleted))
        return {**record.encode(), "already": False, "recordings_deleted": deleted}

    async def _publish(self, record: CallErased) -> None:
        """Publish ``record`` on ``call.<id>.erased`` and wait until JetStream acknowledged it.

        Raises:
            shared.errors.PublishFailedError: every attempt of the bus failed.
        """
        msg_id = f"erased-{record.call_id}-{record.erased_ns}"  # one per erasure, whichever process erases
        await self.bus.publish_event(subjects.call_erased(record.call_id), record.encode(), call_id=record.call_id,
                                     headers={Headers.MSG_ID: msg_id})
        await self.bus.flush_acks()
        failed = next((e for e in self.bus.failed_publishes if e.msg_id == msg_id), None)
        if failed is not None:
            raise failed

    async def expired(self, now_ns: int | None = None) -> list[str]:
        """Ended, not yet erased calls whose end is older than their retention at ``now_ns`` (default now)."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        shortest = self.retention.shortest_days()
        if shortest is None:
            return []
        c = models.calls
        ended = func.coalesce(c.c.ended_ns, c.c.started_ns)
        stmt = (select(c.c.call_id, c.c.agent, ended).where(
            c.c.erased_ns.is_(None), c.c.status == "ended", ended.is_not(None),
            ended < now_ns - int(shortest * _DAY_NS)).order_by(ended))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        out = []
        for call_id, agent, ended_ns in rows:
            days = self.retention.days_for(agent)
            if days is not None and int(ended_ns) < now_ns - int(days * _DAY_NS):
                out.append(str(call_id))
        return out

    async def sweep(self, now_ns: int | None = None) -> list[str]:
        """Erase every call :meth:`expired` returns (reason and actor ``retention``); returns their ids. A call
        that fails is logged and retried on the next sweep; the others go on."""
        erased = []
        for call_id in await self.expired(now_ns):
            try:
                await self.erase(call_id, by="retention", reason="retention")
                erased.append(call_id)
            except Exception:
                log.exception("retention could not erase call %s; retried on the next sweep", call_id)
        return erased

    async def run(self, stopping: asyncio.Event, interval_s: float) -> None:
        """Sweep every ``interval_s`` seconds until ``stopping`` is set."""
        while not stopping.is_set():
            try:
                await self.sweep()
            except Exception:
                log.exception("retention sweep failed; retried in %.0f s", interval_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=interval_s)


async def _unlink(paths: set[Path]) -> list[str]:
    def unlink() -> list[str]:
        gone = []
        for path in sorted(paths):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                gone.append(str(path))
        return gone

    return await asyncio.to_thread(unlink)
