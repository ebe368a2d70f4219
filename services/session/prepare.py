"""What a call's session reads from NATS before its first model session: the tool registry, the log's last
``Switchboard-Seq`` and, for a call taken over, the flow state the previous owner reached.

JetStream lookups that fail while NATS is unreachable or paused (timeouts, no responders, a connection being
re-established) are retried with backoff until they answer or the call ends: a short NATS outage at the start of a
call must not end the call.
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors

from shared import subjects, tool_registry
from shared.bus import Bus
from shared.contracts import ContractError, SessionStateChanged

from .model import backoff_delays

__all__ = ["load_context", "restored_state"]

log = logging.getLogger(__name__)


async def load_context(bus: Bus, call_id: str, ended: asyncio.Event) -> tuple[dict[str, tool_registry.ToolSpec], int]:
    """The tool registry (name → spec) and the highest ``Switchboard-Seq`` already in the call's RT and CALLS log.

    Raises:
        nats.errors.Error, TimeoutError: a lookup failed after ``ended`` was set (the call is over).
    """
    delays = backoff_delays()
    while True:
        try:
            registry, last_rt, last_calls = await asyncio.gather(
                tool_registry.load(bus.js),
                bus.last_seq(call_id, subjects.RT_STREAM, subjects.rt_all(call_id)),
                bus.last_seq(call_id, subjects.CALLS_STREAM, subjects.call_all(call_id)))
            return registry, max(last_rt, last_calls)
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
