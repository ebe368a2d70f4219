"""Resuming a call's carrier stream on another gateway: continue the previous gateway's ``Switchboard-Seq``."""

from __future__ import annotations

import math
import time

from shared import subjects
from shared.bus import Bus

__all__ = ["resume_seq"]

_GATEWAY_EVENTS = (subjects.carrier_detached, subjects.carrier_resumed, subjects.carrier_mark, subjects.carrier_dtmf,
                   subjects.call_started)
"""The logged (CALLS) subjects a gateway publishes during a call, to find its last ``Switchboard-Seq``."""
_MIN_AUDIO_MS = 20
"""The shortest caller audio per ``call.<id>.audio.in`` message (ms; ``SWITCHBOARD_GATEWAY_AUDIO_IN_MS`` ≥ 20)."""


async def resume_seq(bus: Bus, call_id: str) -> float | None:
    """Continue this gateway's ``Switchboard-Seq`` for ``call_id`` after the previous gateway's, so the session's
    duplicate filter and JetStream's ``Nats-Msg-Id`` de-duplication never take the new stream's messages for
    repeats. Returns the gap since that gateway's last logged message (ms), None when nothing was logged.

    The last seq is the highest among the gateway's logged messages for the call (``_GATEWAY_EVENTS``). When the
    previous gateway detached cleanly, ``carrier.detached`` was its last message and that seq is exact; otherwise
    (it crashed) it may have published core-NATS audio after its last logged message — at most one message per
    ``_MIN_AUDIO_MS`` of the time since — so the seq continues after that many more.
    """
    last, last_ts, exact = 0, None, False
    for subject in _GATEWAY_EVENTS:
        env = await bus.last_message(subjects.CALLS_STREAM, subject(call_id))
        if env is None or env.source != bus.source or env.seq is None or env.seq <= last:
            continue
        last, last_ts, exact = env.seq, env.ts_ns, subject is subjects.carrier_detached
    gap_ms = (time.time_ns() - last_ts) / 1e6 if last_ts is not None else None
    if not exact and gap_ms is not None:
        last += math.ceil(max(0.0, gap_ms) / _MIN_AUDIO_MS) + 1
    bus.resume_seq(call_id, last)
    return round(gap_ms, 1) if gap_ms is not None else None
