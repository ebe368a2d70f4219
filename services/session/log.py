"""The per-call Realtime event log: every client event sent and server event received → ``rt.<id>.*``.

Each event is published with :meth:`shared.bus.Bus.publish_event` (JetStream, asynchronous acks checked off
the hot path, retried with the same ``Nats-Msg-Id``, surfaced on failure) to ``rt.<id>.client.<type>`` or
``rt.<id>.server.<type>`` (docs/architecture.md, "Subjects and streams"). Bodies are the exact bytes sent or
received: server events are never re-serialized.

Order: one lock per call serializes publishes, so ``Switchboard-Seq`` (assigned by the bus when the message is
built) follows publish order and the stream holds a call's events in the order the session saw them, with no
gaps — even when the audio forwarder, the model reader and tool tasks publish concurrently.
"""

from __future__ import annotations

import asyncio
import logging

from shared import subjects
from shared.bus import Bus, Headers

__all__ = ["UNPARSABLE_TYPE", "EventLog"]

log = logging.getLogger(__name__)

SUBJECT_CACHE_SIZE = 256
"""Distinct (direction, type) subjects remembered per call (cleared when full: types come from the model)."""
UNPARSABLE_TYPE = "unparsable"
"""Event type used in the subject when a server frame is not JSON or has no valid ``type`` (kept, not lost)."""


class EventLog:
    """Publishes one call's Realtime events in order (see the module docstring)."""

    def __init__(self, bus: Bus, call_id: str) -> None:
        self.bus = bus
        self.call_id = subjects.validate_call_id(call_id)
        self.lock = asyncio.Lock()
        """Held while sending a client event AND logging it, so socket order equals log order."""
        self.counts: dict[str, int] = {"client": 0, "server": 0}
        self._subjects: dict[tuple[str, str], str] = {}
        """Built subjects by (direction, type): audio appends and deltas log dozens of events a second."""

    def subject(self, direction: str, event_type: str) -> str:
        """``rt.<id>.<direction>.<type>``; an invalid type maps to :data:`UNPARSABLE_TYPE`."""
        key = (direction, event_type)
        subject = self._subjects.get(key)
        if subject is None:
            build = subjects.rt_client if direction == "client" else subjects.rt_server
            try:
                subject = build(self.call_id, event_type)
            except subjects.InvalidSubjectTokenError:
                subject = build(self.call_id, UNPARSABLE_TYPE)
            if len(self._subjects) >= SUBJECT_CACHE_SIZE:
                self._subjects.clear()
            self._subjects[key] = subject
        return subject

    async def publish_locked(self, direction: str, event_type: str, data: bytes) -> int | None:
        """Publish one event; the caller holds :attr:`lock`. Returns its ``Switchboard-Seq``."""
        headers = await self.bus.publish_event(self.subject(direction, event_type), data, call_id=self.call_id)
        self.counts[direction] += 1
        seq = headers.get(Headers.SEQ)
        return int(seq) if seq is not None and seq.isdigit() else None

    async def server(self, event_type: str, data: bytes) -> None:
        """Log a server event exactly as received (``data`` = the frame's bytes)."""
        async with self.lock:
            await self.publish_locked("server", event_type, data)
