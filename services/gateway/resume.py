"""Live-call continuity on the gateway (docs/operations.md, "Rollouts and crashes"): continue the previous
gateway's ``Switchboard-Seq`` on a resumed stream (:func:`resume_seq`), keep the last :data:`KEEP_MS` of caller
audio for ``command.replay`` (:class:`KeptAudio`), and notice a call no session owns any more
(:func:`owner_lost`)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from typing import Any

import nats.js.errors

from shared import subjects
from shared.bus import Bus

__all__ = ["KEEP_MS", "SESSION_LOST_LINE", "KeptAudio", "owner_lost", "resume_seq"]

log = logging.getLogger("services.gateway.resume")

KEEP_MS = 5000
"""Caller audio kept per call for ``command.replay`` (ms)."""
SESSION_LOST_LINE = "Sorry, I'm having technical trouble and have to end this call. Please call back."
"""What the gateway says before it ends a call no session serves any more (``session_lost``)."""

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


class KeptAudio:
    """The caller audio of one call published in the last ``keep_ms``, by byte offset into its ``audio.in``.

    Args:
        bytes_per_ms: of the call's audio format.
        keep_ms: how much to keep (ms).
    """

    def __init__(self, bytes_per_ms: float, keep_ms: int = KEEP_MS) -> None:
        self._chunks: deque[tuple[int, bytes]] = deque()
        self._end = 0
        self._keep_bytes = int(bytes_per_ms * keep_ms)

    def add(self, audio: bytes) -> None:
        """Append one published chunk; drop what is older than ``keep_ms``."""
        self._chunks.append((self._end, audio))
        self._end += len(audio)
        while self._chunks and self._end - self._chunks[0][0] > self._keep_bytes:
            self._chunks.popleft()

    def since(self, from_bytes: int) -> list[tuple[int, bytes]]:
        """``(offset, audio)`` of the kept audio from byte offset ``from_bytes`` on, in order; nothing kept from
        there: one empty chunk at the current end (the replay's marker)."""
        parts = [(max(from_bytes, start), audio[max(from_bytes, start) - start:])
                 for start, audio in self._chunks if start + len(audio) > from_bytes]
        return parts or [(self._end, b"")]


async def owner_lost(bus: Bus, call_id: str, lost_s: float, ended: asyncio.Event) -> bool:
    """Watch ``call_id``'s entry in the call-owners KV bucket (``services/session/ownership.py``) once a second;
    True once it has been neither renewed nor replaced for ``lost_s`` s (or is gone) after one was seen — the
    owner died and no peer took the call over — False when ``ended`` is set first. Judged on this process's
    clock from the revisions seen; a call no session ever claimed is never lost; a failed read gives no verdict."""
    kv: Any = None
    revision, changed_at = 0, time.monotonic()
    while not ended.is_set():
        await asyncio.sleep(1.0)
        try:
            kv = kv or await bus.js.key_value(subjects.CALL_OWNERS_BUCKET)
            entry = await kv.get(call_id)
            if int(entry.revision or 0) != revision:
                revision, changed_at = int(entry.revision or 0), time.monotonic()
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            pass
        except Exception as exc:  # NATS blip: no verdict this round
            log.debug("call %s: owner lookup failed: %s", call_id, exc)
            continue
        if revision and time.monotonic() - changed_at >= lost_s:
            return True
    return False
