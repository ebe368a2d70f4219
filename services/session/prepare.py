"""What a call's session reads from NATS before its first model session: the tool registry, the log's last
``Switchboard-Seq`` and, for a call taken over, the flow state the previous owner reached.

After a crash the lapsed owner's last ownership entry marks where its log stood
(:class:`~services.session.ownership.LogMark`): the last seq is then the mark's or a higher one from the log's
tail (:func:`~services.session.ownership.tail_start`), and the caller audio appended is the mark's plus the
tail's appends — a few seconds of a call instead of all of it (every delta's headers, every append's audio),
which was most of a takeover's work when a crashed instance's calls are taken over together. Without a mark (an
entry written before its owner knew, a handover) the whole log is read.

JetStream lookups that fail while NATS is unreachable or paused (timeouts, no responders, a connection being
re-established) are retried with backoff until they answer or the call ends: a short NATS outage at the start of a
call must not end the call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import nats.errors

from shared import subjects, tool_registry
from shared.bus import Bus
from shared.contracts import ContractError, SessionStateChanged

from .model import backoff_delays
from .ownership import Owner, Takeover, tail_start
from .rebuild import CallLog, read_call_log

__all__ = ["ReadBeforeModel", "load_context", "read_before_model", "restored_state"]

log = logging.getLogger(__name__)


async def load_context(bus: Bus, call_id: str, ended: asyncio.Event, *,
                       previous: Owner | None = None) -> tuple[dict[str, tool_registry.ToolSpec], int]:
    """The tool registry (name → spec) and the highest ``Switchboard-Seq`` already in the call's RT and CALLS log
    (``previous``: the lapsed owner's last entry, whose seq mark limits the scan to the log's tail).

    Raises:
        nats.errors.Error, TimeoutError: a lookup failed after ``ended`` was set (the call is over).
    """
    since = tail_start(previous)
    floor = previous.mark.seq if since is not None and previous is not None and previous.mark is not None else 0
    delays = backoff_delays()
    while True:
        try:
            registry, last_rt, last_calls = await asyncio.gather(
                tool_registry.load(bus.js),
                bus.streams.last_seq(call_id, subjects.RT_STREAM, subjects.rt_all(call_id), since=since),
                bus.streams.last_seq(call_id, subjects.CALLS_STREAM, subjects.call_all(call_id), since=since))
            return registry, max(floor, last_rt, last_calls)
        except (nats.errors.Error, TimeoutError) as exc:
            if ended.is_set():
                raise
            log.warning("call %s: tool registry / log lookup failed (%s); retrying", call_id, type(exc).__name__)
            await asyncio.sleep(next(delays))


async def restored_state(bus: Bus, call_id: str) -> str | None:
    """The flow state of the call's last ``call.<id>.session.state_changed`` in the log (None: none, or
    unreadable — the flow then restarts from its first state)."""
    changed = await bus.last_message(subjects.CALLS_STREAM, subjects.session_event(call_id, "state_changed"))
    if changed is None:
        return None
    try:
        return SessionStateChanged.parse(changed.data).to
    except ContractError as exc:
        log.warning("call %s: unreadable state_changed in the log (%s); flow restarts", call_id, exc)
        return None


@dataclass(frozen=True, slots=True)
class ReadBeforeModel:
    """What :func:`read_before_model` read for one call."""

    registry: dict[str, tool_registry.ToolSpec]
    """Tool name → spec."""
    last_seq: int
    """The highest ``Switchboard-Seq`` in the call's log (the session continues after it)."""
    logged: CallLog | None
    """After a lapse: the call's log for the rebuild (None otherwise)."""
    state: str | None
    """After a takeover of a call whose agent has a flow: the flow state reached (None: none, or no flow)."""


async def read_before_model(bus: Bus, call_id: str, ended: asyncio.Event, *, takeover: Takeover | None,
                            flow: bool, previous: Owner | None = None) -> ReadBeforeModel:
    """Everything a call's session reads before its first model session, side by side (the model connects
    meanwhile): :func:`load_context` (``previous``: the lapsed owner's entry), after a lapse the call's log
    (:func:`~services.session.rebuild.read_call_log`) and after a takeover with a ``flow`` :func:`restored_state`.

    Raises:
        nats.errors.Error, TimeoutError: a lookup failed (the context's only after ``ended`` was set).
    """
    reads: list[Any] = [load_context(bus, call_id, ended, previous=previous)]
    if takeover == "lapse":  # its owner is gone: nothing more will be logged before the rebuild
        reads.append(read_call_log(bus, call_id, previous=previous))
    if takeover and flow:
        reads.append(restored_state(bus, call_id))
    t0 = time.monotonic()
    tasks = [asyncio.ensure_future(read) for read in reads]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    registry, last_seq = tasks[0].result()
    if takeover:
        log.info("call %s: read before the model in %.2f s (%s)", call_id, time.monotonic() - t0,
                 "the log's tail" if tail_start(previous) is not None else "the whole log")
    return ReadBeforeModel(registry, last_seq, tasks[1].result() if takeover == "lapse" else None,
                           tasks[-1].result() if takeover and flow else None)
