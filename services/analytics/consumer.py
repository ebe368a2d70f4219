"""The analytics consumer: durable JetStream pull consumers of CALLS and RT, written as a downstream team
would write theirs (nats-py public API only; docs/analytics.md walks through it).

- **Durable names** ``<prefix>-calls`` and ``<prefix>-rt`` (prefix ``analytics``; ``SWITCHBOARD_ANALYTICS_CONSUMER``
  overrides it). A durable keeps its position on the server across restarts.
- **Replay from the start**: created with ``DeliverPolicy.ALL``, so a new consumer reads every event the
  streams still hold (``SWITCHBOARD_JS_MAX_AGE``) before the live ones.
- **Only what the KPIs need**: CALLS whole (small), RT through ``filter_subjects`` (:data:`RT_TYPES`) — caller
  audio (``input_audio_buffer.append``) is never delivered.
- **Ack policy** ``AckPolicy.EXPLICIT``: each message is acked after the batch's transaction committed
  (``ack_wait`` 60 s; unacked messages are redelivered).
- **Idempotency** on the stream sequence: the batch's rows and the stream's last applied sequence commit in
  one transaction (:func:`services.analytics.store.apply_batch`); a redelivered message at or below that
  sequence is skipped, so a crash between commit and ack never counts an event twice.

One task consumes both streams in turn (one batch each, in stream order), so a call's row has one writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy.ext.asyncio import AsyncEngine

from services.analytics import store
from services.analytics.kpis import KpiEvent
from shared import subjects
from shared.bus import Headers

__all__ = ["RT_TYPES", "AnalyticsConsumer", "to_event"]

log = logging.getLogger(__name__)

RT_TYPES: tuple[tuple[subjects.Direction, str], ...] = (
    ("server", "input_audio_buffer.speech_started"),
    ("server", "input_audio_buffer.speech_stopped"),
    ("server", "response.created"),
    ("server", "response.output_audio.delta"),
    ("server", "response.done"),
    ("server", "response.function_call_arguments.done"),
    ("server", "session.created"),
    ("client", "session.update"),
    ("client", "conversation.item.create"),
    ("client", "conversation.item.truncate"),
)
"""The Realtime events the KPIs read (``rt.*.<direction>.<type>`` filter subjects)."""

BatchHook = Callable[[str, store.BatchOutcome], Awaitable[None]]


def to_event(msg: Msg) -> tuple[str, KpiEvent] | None:
    """``(call_id, event)`` of a CALLS/RT JetStream message; None for a subject that is not a call's.

    The time is ``Switchboard-Ts`` (unix ns at publish), else JetStream's storage time; a body that is not a
    JSON object is read as ``{}`` (audio, for instance).
    """
    try:
        parsed = subjects.parse(msg.subject)
    except ValueError:
        return None
    if parsed.call_id is None:
        return None
    meta = msg.metadata
    ts = (msg.headers or {}).get(Headers.TS, "")
    ts_ns = int(ts) if ts.isdigit() else int(meta.timestamp.timestamp() * 1e9)
    try:
        body = json.loads(msg.data) if msg.data[:1] == b"{" else {}
    except ValueError:
        body = {}
    stream = meta.stream
    return parsed.call_id, KpiEvent(stream, parsed.direction, parsed.rest, body if isinstance(body, dict) else {},
                                    ts_ns, meta.sequence.stream)


class AnalyticsConsumer:
    """Consumes CALLS and RT into the analytics tables (see the module docstring).

    ``on_batch(stream, outcome)`` runs after each committed batch (metrics, tests).
    """

    def __init__(self, js: JetStreamContext, engine: AsyncEngine, *, durable_prefix: str = "analytics",
                 batch: int = 256, fetch_timeout: float = 0.5, on_batch: BatchHook | None = None) -> None:
        self.js = js
        self.engine = engine
        self.prefix = durable_prefix
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.on_batch = on_batch
        self.ready = asyncio.Event()
        self.applied = 0
        self.skipped = 0
        self.failures = 0

    def durable(self, stream: subjects.StreamSpec) -> str:
        """The durable name for ``stream`` (``<prefix>-calls`` / ``<prefix>-rt``)."""
        return f"{self.prefix}-{stream.name.lower()}"

    async def _bind(self, stream: subjects.StreamSpec) -> JetStreamContext.PullSubscription:
        durable = self.durable(stream)
        try:
            await self.js.consumer_info(stream.name, durable)  # exists: resume where it stopped
        except nats.js.errors.NotFoundError:
            config = ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT,
                                    deliver_policy=DeliverPolicy.ALL, ack_wait=60.0, max_deliver=-1,
                                    max_ack_pending=20_000, inactive_threshold=None)
            if stream.name == subjects.RT_STREAM.name:
                config.filter_subjects = [subjects.rt_any_call(d, t) for d, t in RT_TYPES]
            await self.js.add_consumer(stream.name, config)
        return await self.js.pull_subscribe_bind(durable=durable, stream=stream.name)

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until ``stopping`` is set; a batch in flight is committed and acked first."""
        subs = [(s.name, await self._bind(s)) for s in (subjects.CALLS_STREAM, subjects.RT_STREAM)]
        self.ready.set()
        try:
            while not stopping.is_set():
                for name, psub in subs:
                    msgs = await self._fetch(psub)
                    if msgs is None:
                        return
                    if msgs:
                        await self._handle(name, msgs, stopping)
        finally:
            for _, psub in subs:
                with contextlib.suppress(Exception):
                    await psub.unsubscribe()

    async def _fetch(self, psub: JetStreamContext.PullSubscription) -> list[Msg] | None:
        try:
            return await psub.fetch(self.batch, timeout=self.fetch_timeout)
        except (nats.errors.TimeoutError, TimeoutError):
            return []
        except nats.errors.ConnectionClosedError:
            return None
        except Exception as exc:  # a reconnect under way: try again
            log.warning("analytics fetch failed: %s", exc)
            await asyncio.sleep(0.5)
            return []

    async def _handle(self, stream: str, msgs: list[Msg], stopping: asyncio.Event) -> None:
        events = [e for e in (to_event(m) for m in msgs) if e is not None]
        events.sort(key=lambda e: e[1].stream_seq)
        delay = 0.2
        while True:
            try:
                outcome = await store.apply_batch(self.engine, stream, events)
                break
            except Exception as exc:  # database down or locked: the same batch again, in order
                self.failures += 1
                log.error("analytics batch of %d %s events failed (retry in %.1fs): %s", len(events), stream,
                          delay, exc)
                if stopping.is_set():
                    return  # unacked: redelivered after the restart, skipped if it had committed
                for m in msgs:
                    with contextlib.suppress(Exception):
                        await m.in_progress()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        for m in msgs:
            await m.ack()
        self.applied += outcome.applied
        self.skipped += outcome.skipped
        if self.on_batch is not None:
            try:
                await self.on_batch(stream, outcome)
            except Exception:
                log.exception("analytics batch hook failed")
