"""JetStream streams and ordered replay for :class:`shared.bus.Bus` (see :mod:`shared.bus`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from shared import subjects
from shared.bus.envelope import Dispatcher, Envelope, Handler
from shared.config import Settings

__all__ = ["Streams"]

log = logging.getLogger("shared.bus")


class Streams:
    """Stream management and replay, a part of :class:`~shared.bus.Bus` (which delegates to it).

    Args:
        js: the connection's JetStream context.
        source: the bus's ``Switchboard-Source`` (the default of :meth:`last_seq`).
        bus: what handlers run through and envelopes answer through (the owning bus).
    """

    def __init__(self, js: JetStreamContext, source: str, bus: Dispatcher) -> None:
        self.js = js
        self.source = source
        self._bus = bus

    async def ensure_streams(self, settings: Settings) -> None:
        """Create or update the CALLS, RT and TRACES streams (idempotent; safe from every service).

        File storage, limits retention, ``max_age`` from ``SWITCHBOARD_JS_MAX_AGE`` (TRACES: at most 1 h),
        a ``Nats-Msg-Id`` duplicate window and ``num_replicas`` from ``SWITCHBOARD_JS_REPLICAS``. Only the
        operator identity may change an existing stream's configuration (:mod:`shared.natsauth`): for a service
        whose settings differ from the stream's, the refused update is logged and the stream kept as it is.
        """
        for spec in subjects.STREAMS:
            max_age = min(settings.js_max_age, 3600.0) if spec.short_lived else settings.js_max_age
            config = StreamConfig(
                name=spec.name,
                subjects=list(spec.subjects),
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                discard=DiscardPolicy.OLD,
                max_age=max_age,
                duplicate_window=min(settings.js_duplicate_window, max_age),
                num_replicas=settings.js_replicas,
            )
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError:
                try:
                    await self.js.update_stream(config)
                except (nats.errors.Error, TimeoutError) as exc:
                    log.warning("stream %s differs from this service's settings and was not updated (%s); "
                                "an operator updates it (switchboard up does at start)", spec.name, exc)

    async def replay(
        self, filter_subject: str | Sequence[str], stream: subjects.StreamSpec, *, batch: int = 512,
        timeout: float = 5.0, headers_only: bool = False, since: datetime | None = None
    ) -> AsyncIterator[Envelope]:
        """Yield every stored message of ``stream`` matching ``filter_subject`` (one subject, or several:
        JetStream's ``filter_subjects``, nats-server 2.10+), in stream order. ``headers_only``: the messages
        come without their bodies (``data`` empty; JetStream adds ``Nats-Msg-Size``), for a scan that reads
        headers only. ``since`` (timezone-aware): only the messages the stream stored from then on (server
        time; JetStream's ``opt_start_time``).

        Uses an ephemeral pull consumer (deliver all or by start time, no acks) that is deleted afterwards. Ends
        when the consumer reports nothing pending.
        """
        several = not isinstance(filter_subject, str)
        psub = await self.js.pull_subscribe(
            "" if several else str(filter_subject),
            stream=stream.name,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL if since is None else DeliverPolicy.BY_START_TIME,
                opt_start_time=since,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=60.0,
                mem_storage=True,
                filter_subjects=list(filter_subject) if several else None,
                headers_only=headers_only or None,
            ),
        )
        try:
            info = await psub.consumer_info()
            pending = info.num_pending or 0
            while pending > 0:
                try:
                    msgs = await psub.fetch(min(batch, pending), timeout=timeout)
                except nats.errors.TimeoutError:
                    break
                for msg in msgs:
                    yield Envelope.from_msg(msg, self._bus)
                    pending = msg.metadata.num_pending
                    if pending == 0:
                        break
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def follow(self, filter_subject: str, stream: subjects.StreamSpec,
                     handler: Handler) -> JetStreamContext.PushSubscription:
        """Deliver every message ``stream`` stores on ``filter_subject`` — those already stored, then new ones —
        to ``handler(env)``, in stream order, untraced.

        A JetStream ordered consumer (https://docs.nats.io/using-nats/developer/develop_jetstream/consumers,
        "Ordered Consumers"): nats-py recreates it from the last delivered stream sequence after a gap, a missed
        heartbeat or a server restart, so a follower never misses what the log stored while the connection was
        down (a core subscription would). Unsubscribe the returned subscription to stop.
        """
        bus = self._bus

        async def callback(msg: Msg) -> None:
            await bus.dispatch(Envelope.from_msg(msg, bus), handler, traced=False)

        return await self.js.subscribe(filter_subject, stream=stream.name, cb=callback, ordered_consumer=True,
                                       deliver_policy=DeliverPolicy.ALL)

    async def last_seq(self, call_id: str, stream: subjects.StreamSpec, filter_subject: str,
                       source: str | None = None, *, since: datetime | None = None) -> int:
        """The highest ``Switchboard-Seq`` stored for ``call_id`` from ``source`` (0 when none); ``since``: among
        the messages stored from then on only (a scan of the log's tail instead of all of it).

        A session that reconnects or takes over a call calls :meth:`resume_seq` with it so the log stays
        gap-free.
        """
        wanted = source or self.source
        last = 0
        async for env in self.replay(filter_subject, stream, headers_only=True, since=since):  # audio: not read
            if env.source == wanted and env.call_id == call_id and env.seq is not None:
                last = max(last, env.seq)
        return last

    async def last_message(self, stream: subjects.StreamSpec, subject: str) -> Envelope | None:
        """The last message ``stream`` stores on ``subject`` (a literal subject), or None when it has none.

        One JetStream ``STREAM.MSG.GET`` request (``last_by_subj``). Raises the nats-py errors of that request
        (``nats.errors.TimeoutError``, ``nats.js.errors.APIError``) except "not found".
        """
        try:
            raw = await self.js.get_last_msg(stream.name, subject)
        except nats.js.errors.NotFoundError:
            return None
        headers = {str(k): str(v) for k, v in (raw.headers or {}).items()}
        return Envelope.from_stored(raw.subject or subject, raw.data or b"", headers, self._bus)
