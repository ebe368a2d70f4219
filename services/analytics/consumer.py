"""The analytics consumer: durable JetStream pull consumers of CALLS and RT, written as a downstream team
would write theirs (nats-py public API only; docs/analytics.md walks through it).

- **Durable names** ``<prefix>-calls`` and ``<prefix>-rt`` (prefix ``analytics``; ``SWITCHBOARD_ANALYTICS_CONSUMER``
  overrides it). A durable keeps its position on the server across restarts.
- **Replay from the start**: created with ``DeliverPolicy.ALL``, so a new consumer reads every event the
  streams still hold (``SWITCHBOARD_JS_MAX_AGE``) before the live ones.
- **Only what the KPIs need**: ``filter_subjects`` (:data:`CALLS_TYPES`, :data:`RT_TYPES`). Audio is never
  delivered: not the caller's (``input_audio_buffer.append``), nor the model's (``response.output_audio.delta``),
  whose first message after each ``speech_stopped`` — all that the first-response latency reads — is looked up
  in the stream instead (:mod:`services.analytics.turns`). Bodies no KPI reads (:data:`NO_BODY`) are not decoded.
- **Ack policy** ``AckPolicy.ALL``: after the batch's transaction committed, its last message is acked, which
  acks the batch (``ack_wait`` 60 s; unacked messages are redelivered). A durable made with another ack policy
  or filter (an older version) is recreated to start after the committed position.
- **Idempotency** on the stream sequence: the batch's rows and the stream's last applied sequence commit in
  one transaction (:func:`services.analytics.store.apply_batch`); a redelivered message at or below that
  sequence is skipped, so a crash between commit and ack never counts an event twice.

One task consumes both streams in turn (one batch each, in stream order), so a call's row has one writer; after
batches that were not full it waits ``linger_s`` (0.2 s), so a transaction carries that much traffic; turns
still waiting for audio are looked up again every :data:`~services.analytics.turns.RETRY_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy.ext.asyncio import AsyncEngine

from services.analytics import store, turns
from services.analytics.kpis import KpiEvent
from shared import subjects
from shared.bus import Headers

__all__ = ["CALLS_TYPES", "NO_BODY", "RT_TYPES", "AnalyticsConsumer", "to_event"]

log = logging.getLogger(__name__)

CALLS_TYPES = ("started", "ended", "erased", "session.model_connected")
"""The CALLS events the KPIs read (``call.*.<type>`` filter subjects; not the carriers' marks, for instance)."""
RT_TYPES: tuple[tuple[subjects.Direction, str], ...] = (
    ("server", "input_audio_buffer.speech_started"),
    ("server", "input_audio_buffer.speech_stopped"),
    ("server", "response.created"),
    ("server", "response.done"),
    ("server", "response.function_call_arguments.done"),
    ("server", "session.created"),
    ("client", "session.update"),
    ("client", "conversation.item.create"),
    ("client", "conversation.item.truncate"),
)
"""The Realtime events the KPIs consume (``rt.*.<direction>.<type>`` filter subjects); the first output audio of
a turn is looked up (:mod:`services.analytics.turns`)."""
NO_BODY = frozenset({"input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "response.created",
                     "response.output_audio.delta", "conversation.item.truncate"})
"""RT types whose body no KPI reads: :func:`to_event` gives them ``{}``."""

BatchHook = Callable[[str, store.BatchOutcome], Awaitable[None]]


def to_event(msg: Msg) -> tuple[str, KpiEvent] | None:
    """``(call_id, event)`` of a CALLS/RT JetStream message; None for a subject that is not a call's.

    The time is ``Switchboard-Ts`` (unix ns at publish), else JetStream's storage time; a body that is not a
    JSON object, or one of an RT type in :data:`NO_BODY`, is read as ``{}``.
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
    stream = meta.stream
    try:
        skip = stream == subjects.RT_STREAM.name and parsed.rest in NO_BODY
        body = json.loads(msg.data) if msg.data[:1] == b"{" and not skip else {}
    except ValueError:
        body = {}
    return parsed.call_id, KpiEvent(stream, parsed.direction, parsed.rest, body if isinstance(body, dict) else {},
                                    ts_ns, meta.sequence.stream)


class AnalyticsConsumer:
    """Consumes CALLS and RT into the analytics tables (see the module docstring).

    ``on_batch(stream, outcome)`` runs after each committed batch (metrics, tests).
    """

    def __init__(self, js: JetStreamContext, engine: AsyncEngine, *, durable_prefix: str = "analytics",
                 batch: int = 1024, fetch_timeout: float = 0.5, linger_s: float = 0.2,
                 on_batch: BatchHook | None = None) -> None:
        self.js = js
        self.engine = engine
        self.prefix = durable_prefix
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.linger_s = linger_s
        self.on_batch = on_batch
        self.ready = asyncio.Event()
        self.applied = 0
        self.skipped = 0
        self.failures = 0
        self.first_audio = turns.StreamLookup(js)
        self.waiting: set[str] = set()
        """Calls whose turn waits for audio (looked up again every ``RETRY_S``)."""

    def durable(self, stream: subjects.StreamSpec) -> str:
        """The durable name for ``stream`` (``<prefix>-calls`` / ``<prefix>-rt``)."""
        return f"{self.prefix}-{stream.name.lower()}"

    def _config(self, stream: subjects.StreamSpec, start_after: int) -> ConsumerConfig:
        config = ConsumerConfig(durable_name=self.durable(stream), ack_policy=AckPolicy.ALL,
                                deliver_policy=DeliverPolicy.ALL, ack_wait=60.0, max_deliver=-1,
                                max_ack_pending=20_000, inactive_threshold=None)
        if start_after:
            config.deliver_policy, config.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, start_after + 1
        if stream.name == subjects.RT_STREAM.name:
            config.filter_subjects = [subjects.rt_any_call(d, t) for d, t in RT_TYPES]
        else:
            config.filter_subjects = [subjects.call_any(t) for t in CALLS_TYPES]
        return config

    async def _bind(self, stream: subjects.StreamSpec) -> JetStreamContext.PullSubscription:
        durable = self.durable(stream)
        wanted = self._config(stream, 0)
        try:
            info = await self.js.consumer_info(stream.name, durable)  # exists: resume where it stopped
        except nats.js.errors.NotFoundError:
            await self.js.add_consumer(stream.name, wanted)
        else:
            if (info.config.ack_policy != wanted.ack_policy
                    or set(info.config.filter_subjects or ()) != set(wanted.filter_subjects or ())):
                # made by an older version: start again after what the database holds
                log.info("analytics: recreating durable %s (ack policy or filter changed)", durable)
                await self.js.delete_consumer(stream.name, durable)
                await self.js.add_consumer(stream.name,
                                           self._config(stream, await store.position(self.engine, stream.name)))
        return await self.js.pull_subscribe_bind(durable=durable, stream=stream.name)

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until ``stopping`` is set; a batch in flight is committed and acked first."""
        subs = [(s.name, await self._bind(s)) for s in (subjects.CALLS_STREAM, subjects.RT_STREAM)]
        self.waiting = set(await store.open_turn_calls(self.engine, time.time_ns()))
        self.ready.set()
        looked = time.monotonic()
        try:
            while not stopping.is_set():
                got, full = False, False
                for name, psub in subs:
                    msgs = await self._fetch(psub)
                    if msgs is None:
                        return
                    if msgs:
                        got, full = True, full or len(msgs) >= self.batch
                        await self._handle(name, msgs, stopping)
                if got and not full:  # a trickle: gather linger_s of events per transaction
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), self.linger_s)
                if self.waiting and time.monotonic() - looked >= turns.RETRY_S:
                    looked = time.monotonic()
                    await self._resolve()
        finally:
            for _, psub in subs:
                with contextlib.suppress(Exception):
                    await psub.unsubscribe()

    async def _resolve(self) -> None:
        """Look the waiting turns up again (a failure is logged; they are asked again next time)."""
        try:
            outcome = await store.resolve_turns(self.engine, self.first_audio, sorted(self.waiting), time.time_ns())
        except Exception as exc:
            log.warning("analytics first-audio lookup failed: %s", exc)
            return
        self.waiting = set(outcome.open_turns)
        if outcome.latencies and self.on_batch is not None:
            try:
                await self.on_batch(subjects.RT_STREAM.name, outcome)
            except Exception:
                log.exception("analytics batch hook failed")

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
        rt = stream == subjects.RT_STREAM.name
        delay = 0.2
        while True:
            try:
                outcome = await store.apply_batch(self.engine, stream, events, self.first_audio if rt else None)
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
        await msgs[-1].ack()  # AckPolicy.ALL: acks the whole batch
        if rt and outcome.applied:
            done = {cid for cid, _ in events}
            self.waiting = (self.waiting - done) | set(outcome.open_turns)
        self.applied += outcome.applied
        self.skipped += outcome.skipped
        if self.on_batch is not None:
            try:
                await self.on_batch(stream, outcome)
            except Exception:
                log.exception("analytics batch hook failed")
