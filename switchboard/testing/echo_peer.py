"""An echo peer: a stand-in for the session service in gateway tests and ``bench/gateway.py``.

It follows ``call.*.started`` and, per call, answers inbound audio (``call.<id>.audio.in``) with
``rt.<id>.server.response.output_audio.delta`` events carrying the same bytes (base64 ``delta``,
``item_id``, ``response_id``), ``batch`` frames per delta — exactly the shape the real session publishes.
It can also send commands (``call.<id>.command.<verb>``) the way the session does.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable
from typing import Any

from nats.aio.subscription import Subscription

from shared import subjects
from shared.audio import parse_format
from shared.bus import Bus, Envelope
from shared.contracts import CallStarted, parse_command

__all__ = ["EchoPeer"]


class EchoPeer:
    """Echo the inbound audio of every call back as output audio deltas, one once at least ``batch`` frames
    (``frame_bytes`` each: 160 = 20 ms of μ-law) are pending; ``batch=1`` echoes every ``audio.in`` message.

    ``jetstream`` publishes the deltas through JetStream (logged in RT, as the session does); otherwise on
    core NATS. ``on_started(payload)`` is called for each ``call.<id>.started``. :attr:`frames` counts the
    ``audio.in`` messages received per call.
    """

    def __init__(self, bus: Bus, *, batch: int = 1, jetstream: bool = True, frame_bytes: int = 160,
                 on_started: Callable[[dict[str, Any]], None] | None = None) -> None:
        if batch < 1 or frame_bytes < 1:
            raise ValueError("batch must be at least 1 frame and frame_bytes positive")
        self.bus = bus
        self.batch = batch
        self._batch_bytes = batch * frame_bytes
        self.jetstream = jetstream
        self.on_started = on_started
        self.started: dict[str, dict[str, Any]] = {}
        self.frames: dict[str, int] = {}
        self._subs: list[Subscription] = []
        self._pending: dict[str, list[bytes]] = {}
        self._ids = itertools.count(1)
        self.item_ids: dict[str, str] = {}

    async def start(self) -> None:
        """Subscribe to ``call.*.started``."""
        self._subs.append(await self.bus.subscribe(subjects.all_calls_started(), self._on_started))

    async def stop(self) -> None:
        """Unsubscribe everything."""
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()

    async def _on_started(self, env: Envelope) -> None:
        started = CallStarted.parse(env.data)
        payload = started.encode()
        call_id = started.call_id
        self.frames[call_id] = 0
        self.item_ids[call_id] = f"item_echo{next(self._ids)}"

        async def on_audio(audio: Envelope) -> None:
            await self._on_audio(call_id, audio)

        self._subs.append(await self.bus.subscribe(subjects.call_audio_in(call_id), on_audio))
        # as the session does once it listens: the gateway releases the caller audio it held until now
        fmt = parse_format(started.audio_format).realtime_format()
        updated = {"type": "session.updated", "event_id": f"evt_{next(self._ids)}",
                   "session": {"audio": {"input": {"format": fmt}, "output": {"format": fmt}}}}
        subject = subjects.rt_server(call_id, "session.updated")
        if self.jetstream:
            await self.bus.publish_event(subject, updated, call_id=call_id)
        else:
            await self.bus.publish(subject, updated, call_id=call_id)
        self.started[call_id] = payload  # set once the audio subscription is live
        if self.on_started is not None:
            self.on_started(payload)

    async def _on_audio(self, call_id: str, env: Envelope) -> None:
        self.frames[call_id] = self.frames.get(call_id, 0) + 1
        pending = self._pending.setdefault(call_id, [])
        pending.append(env.data)
        if sum(len(part) for part in pending) >= self._batch_bytes:
            self._pending[call_id] = []
            await self.send_audio(call_id, b"".join(pending))

    async def send_audio(self, call_id: str, audio: bytes, item_id: str | None = None) -> None:
        """Publish one ``response.output_audio.delta`` for ``call_id``."""
        event = {"type": "response.output_audio.delta", "event_id": f"evt_{next(self._ids)}",
                 "response_id": "resp_echo", "item_id": item_id or self.item_ids.get(call_id, "item_echo"),
                 "output_index": 0, "content_index": 0, "delta": base64.b64encode(audio).decode()}
        subject = subjects.rt_server(call_id, "response.output_audio.delta")
        if self.jetstream:
            await self.bus.publish_event(subject, event, call_id=call_id)
        else:
            await self.bus.publish(subject, event, call_id=call_id)

    async def command(self, call_id: str, verb: str, payload: dict[str, Any] | None = None) -> None:
        """Publish ``call.<id>.command.<verb>`` (core NATS; the gateway's subscription is core); ``payload`` is
        checked against the verb's contract (:func:`shared.contracts.parse_command`) first."""
        command = parse_command(verb, payload or {})
        await self.bus.publish(subjects.command(call_id, verb), command.encode(), call_id=call_id)
