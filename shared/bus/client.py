"""The :class:`Bus` client: publish, request, subscribe and JetStream publish (see :mod:`shared.bus`)."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from shared import metrics, subjects
from shared.bus.acks import AckTracker, FailureCallback
from shared.bus.connection import open_connection
from shared.bus.envelope import (
    Envelope,
    Handler,
    Headers,
    Payload,
    _Deduper,
    _Sequencer,
    destination_template,
    encode_payload,
    is_high_rate,
)
from shared.bus.micro import Micro
from shared.bus.streams import Streams
from shared.bus.wire import flush_shielded
from shared.config import Settings
from shared.errors import PublishFailedError, ServiceCallError
from shared.telemetry import current_call_id

__all__ = ["Bus", "FailureCallback"]

log = logging.getLogger("shared.bus")

HOP_SAMPLE_EVERY = 32
"""``switchboard.bus.hop`` is recorded for every traced message and every 32nd high-rate one (audio frames,
deltas, marks: 25–50 a second per call and direction, so a busy process still records hundreds a second). An SDK
histogram record costs a sizeable fraction of receiving one message, so the audio-rate path samples it."""
SUBSCRIBE_FLUSH_TIMEOUT = 5.0
"""Seconds :meth:`Bus.subscribe` waits for the server to confirm the interest; past it the subscription stands
and is confirmed when the server answers (a paused or restarting server must not fail the caller)."""

CONTEXT_CACHE_SIZE = 4096
"""Extracted trace contexts kept per distinct ``traceparent`` (cleared when full)."""
INJECTION_CACHE_SIZE = 256
"""Injected trace headers kept per current context object for untraced publishes (cleared when full)."""

class Bus:
    """A service's connection to NATS, with Switchboard's headers, tracing and JetStream conventions.

    Create with :meth:`connect`; close with :meth:`close` (drains subscriptions and waits for pending
    JetStream acks). ``source`` names the publishing service (``gateway``, ``session``, …) and scopes
    ``Switchboard-Seq``. Composed of :attr:`acks` (JetStream publish acks), :attr:`streams` (stream set-up
    and replay) and :attr:`micro` (nats.micro services); the bus's methods of the same names delegate to them.
    """

    def __init__(self, nc: NATS, *, source: str, ack_timeout: float = 5.0, max_attempts: int = 5) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.source = source
        self.acks = AckTracker(nc, self.js, ack_timeout=ack_timeout, max_attempts=max_attempts)
        """JetStream publishes awaiting their ack (see :mod:`shared.bus.acks`)."""
        self._seq = _Sequencer()
        self._epochs: dict[str, str] = {}
        self._tracer = trace.get_tracer("switchboard.bus")
        self._contexts: dict[tuple[str | None, str | None], otel_context.Context] = {}
        self._injections: dict[int, tuple[otel_context.Context, dict[str, str]]] = {}
        self._received = 0
        self.streams = Streams(self.js, source, self)
        """Stream set-up and ordered replay (see :mod:`shared.bus.streams`)."""
        self.micro = Micro(nc, self, self._headers)
        """nats.micro services and endpoints (see :mod:`shared.bus.micro`)."""

    @property
    def ack_timeout(self) -> float:
        """Seconds to wait for each JetStream publish attempt's ack."""
        return self.acks.ack_timeout

    @ack_timeout.setter
    def ack_timeout(self, value: float) -> None:
        self.acks.ack_timeout = value

    @property
    def max_attempts(self) -> int:
        """Attempts per JetStream publish, the first included, before it is surfaced as failed."""
        return self.acks.max_attempts

    @max_attempts.setter
    def max_attempts(self, value: int) -> None:
        self.acks.max_attempts = value

    @property
    def failed_publishes(self) -> list[PublishFailedError]:
        """Publishes that failed after every retry (kept, bounded to the last 1000, for inspection)."""
        return self.acks.failed

    # --- connection ------------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        name: str,
        source: str | None = None,
        connect_timeout: float = 30.0,
        ack_timeout: float = 5.0,
        options: Mapping[str, Any] | None = None,
    ) -> Bus:
        """Connect to NATS at ``url`` (comma-separated for a cluster) as ``source`` (default ``name``).

        The connection and its retries are :func:`shared.bus.connection.open_connection`'s: up to
        ``connect_timeout`` seconds for a first server, then reconnecting forever; ``options`` are extra
        ``nats.connect`` arguments (default: those of the environment's settings for ``source``).

        Raises:
            BusError: no server accepted within ``connect_timeout``, or the server refused the credentials.
        """
        nc = await open_connection(url, name=name, identity=source or name, connect_timeout=connect_timeout,
                                   options=options)
        return cls(nc, source=source or name, ack_timeout=ack_timeout)

    async def close(self) -> None:
        """Wait (bounded) for pending JetStream acks, then drain and close the connection."""
        await self.acks.wait_idle(self.ack_timeout * (self.max_attempts + 1))
        self.acks.stop()
        if not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()
            with contextlib.suppress(Exception):
                await self.nc.close()

    def on_publish_failure(self, callback: FailureCallback) -> None:
        """Register ``async callback(error, call_id)`` run when a JetStream publish finally fails."""
        self.acks.on_failure(callback)

    # --- headers and seq -------------------------------------------------------------------------------

    def resume_seq(self, call_id: str, last_seq: int) -> None:
        """Continue ``Switchboard-Seq`` for ``call_id`` after ``last_seq`` (a session that took over)."""
        self._seq.resume(call_id, last_seq)

    def current_seq(self, call_id: str) -> int:
        """The last ``Switchboard-Seq`` taken (or resumed) for ``call_id``, 0 if none; later ones are higher."""
        return self._seq.current(call_id)

    def forget_call(self, call_id: str) -> None:
        """Drop per-call state (seq counter, epoch) once a call is over."""
        self._seq.forget(call_id)
        self._epochs.pop(call_id, None)

    def set_epoch(self, call_id: str, epoch: int | None) -> None:
        """Send ``Switchboard-Epoch: epoch`` on everything published for ``call_id`` from now on (None: stop);
        ``Nats-Msg-Id`` then names the epoch too (``<call>:<source>@<epoch>:<seq>``), so two owners of one call
        never de-duplicate each other's messages."""
        if epoch is None:
            self._epochs.pop(call_id, None)
        else:
            self._epochs[call_id] = str(int(epoch))

    def _headers(self, call_id: str | None, extra: Mapping[str, str] | None, *,
                 reuse_context: bool = False) -> dict[str, str]:
        headers = self._id_headers(call_id)
        self._add_context(headers, extra, reuse_context=reuse_context)
        return headers

    def _id_headers(self, call_id: str | None) -> dict[str, str]:
        """Source, timestamp, call id, seq and ``Nats-Msg-Id`` (the seq is taken now)."""
        headers: dict[str, str] = {Headers.SOURCE: self.source, Headers.TS: str(time.time_ns())}
        if call_id is not None:
            seq = self._seq.next(call_id)
            headers[Headers.CALL_ID] = call_id
            headers[Headers.SEQ] = str(seq)
            epoch = self._epochs.get(call_id)
            if epoch is None:
                headers[Headers.MSG_ID] = f"{call_id}:{self.source}:{seq}"
            else:
                headers[Headers.EPOCH] = epoch
                headers[Headers.MSG_ID] = f"{call_id}:{self.source}@{epoch}:{seq}"
        else:
            headers[Headers.MSG_ID] = secrets.token_hex(12)
        return headers

    def _add_context(self, headers: dict[str, str], extra: Mapping[str, str] | None, *,
                     reuse_context: bool = False) -> None:
        """Add the current trace context (``traceparent``/``tracestate``), then the caller's own headers."""
        if reuse_context:
            headers.update(self._injected())
        else:
            propagate.inject(headers)
        if extra:
            headers.update(extra)

    def _injected(self) -> dict[str, str]:
        """What the global propagator injects for the current context, computed once per context object.

        For untraced (high-rate) publishes: every audio frame of a call is published in the same attached
        context, and injecting per message was a visible share of the gateway's CPU. Contexts are immutable and
        the propagators (W3C trace context, baggage) are functions of the context, so the result is reused
        while the same context object is current; entries keep their context alive, so a recycled ``id`` can
        never match a different context.
        """
        ctx = otel_context.get_current()
        hit = self._injections.get(id(ctx))
        if hit is not None and hit[0] is ctx:
            return hit[1]
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=ctx)
        if len(self._injections) >= INJECTION_CACHE_SIZE:
            self._injections.clear()
        self._injections[id(ctx)] = (ctx, carrier)
        return carrier

    def _send_span(self, operation: str, subject: str, call_id: str | None, size: int,
                   msg_id: str | None = None) -> trace.Span:
        """A PRODUCER span ``publish <template>`` (``operation="publish"``) or a CLIENT span ``send <template>``
        (``operation="request"``), with every attribute given at start: each ``set_attribute`` afterwards
        takes the span's lock and validates again."""
        template = destination_template(subject)
        attributes: dict[str, Any] = {
            "messaging.system": "nats",
            "messaging.operation.type": "send",
            "messaging.operation.name": operation,
            "messaging.destination.name": subject,
            "messaging.destination.template": template,
            "messaging.message.body.size": size,
        }
        if msg_id is not None:
            attributes["messaging.message.id"] = msg_id
        if call_id is not None:
            attributes["switchboard.call_id"] = call_id
        if operation == "publish":
            return self._tracer.start_span(f"publish {template}", kind=SpanKind.PRODUCER, attributes=attributes)
        return self._tracer.start_span(f"send {template}", kind=SpanKind.CLIENT, attributes=attributes)

    async def _send(self, subject: str, data: bytes, call_id: str | None, headers: Mapping[str, str] | None,
                    traced: bool | None, *, jetstream: bool) -> dict[str, str]:
        """Build the headers and send on core NATS or (``jetstream``) through :attr:`acks`; in a PRODUCER
        span unless untraced (default: high-rate subjects are untraced). Returns the headers sent."""
        if traced is None:
            traced = not is_high_rate(subject)
        if not traced:
            hdrs = self._headers(call_id, headers, reuse_context=True)
            await self._send_now(subject, data, hdrs, call_id, jetstream)
            return hdrs
        hdrs = self._id_headers(call_id)
        span = self._send_span("publish", subject, call_id, len(data), hdrs[Headers.MSG_ID])
        with trace.use_span(span, end_on_exit=True):
            self._add_context(hdrs, headers)
            await self._send_now(subject, data, hdrs, call_id, jetstream)
        return hdrs

    async def _send_now(self, subject: str, data: bytes, hdrs: dict[str, str], call_id: str | None,
                        jetstream: bool) -> None:
        if jetstream:
            await self.acks.publish(subject, data, hdrs, call_id)
        else:
            await self.nc.publish(subject, data, headers=hdrs)

    # --- core publish / request ------------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        payload: Payload,
        *,
        call_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        traced: bool | None = None,
    ) -> dict[str, str]:
        """Publish on core NATS (at most once) with the standard headers; returns the headers sent.

        ``traced`` (default: not a high-rate subject) wraps the publish in a PRODUCER span whose context is
        the one injected. Raises nats-py's connection errors when the connection is closed.
        """
        return await self._send(subject, encode_payload(payload), call_id, headers, traced, jetstream=False)

    async def request(
        self,
        subject: str,
        payload: Payload,
        *,
        timeout: float,
        call_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Envelope:
        """Request/reply with the standard headers, in a CLIENT span; returns the reply Envelope.

        Raises:
            ServiceCallError: the responder answered with a nats.micro error (its code and message),
                no responder exists (503) or none answered within ``timeout`` seconds (504).
        """
        data = encode_payload(payload)
        span = self._send_span("request", subject, call_id, len(data))
        with trace.use_span(span, end_on_exit=True):
            hdrs = self._headers(call_id, headers)
            try:
                msg = await self.nc.request(subject, data, timeout=timeout, headers=hdrs)
            except nats.errors.NoRespondersError:
                span.set_status(Status(StatusCode.ERROR, "no responders"))
                raise ServiceCallError(503, "That service is not available right now.") from None
            except (TimeoutError, nats.errors.TimeoutError):
                span.set_status(Status(StatusCode.ERROR, "timeout"))
                raise ServiceCallError(504, "That took too long to answer.") from None
            env = Envelope.from_msg(msg, self)
            code = env.headers.get(Headers.SERVICE_ERROR_CODE)
            if code:
                message = env.headers.get(Headers.SERVICE_ERROR, "error")
                span.set_status(Status(StatusCode.ERROR, message))
                span.set_attribute("error.type", code)
                raise ServiceCallError(int(code) if code.isdigit() else 500, message)
            return env

    # --- JetStream publish -----------------------------------------------------------------------------

    async def publish_event(
        self,
        subject: str,
        payload: Payload,
        *,
        call_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        traced: bool | None = None,
    ) -> dict[str, str]:
        """Publish to JetStream asynchronously; the ack is checked off the caller's path.

        The message is sent at once (in order with the caller's other publishes); :class:`AckTracker` checks
        its ack within ``ack_timeout`` s and, when it fails, retries with the SAME ``Nats-Msg-Id`` (the
        stream's duplicate window drops a copy that did land) up to ``max_attempts``. If every attempt
        fails the failure is surfaced — logged, counted in ``switchboard.bus.publish.failures``, kept in
        :attr:`failed_publishes` and passed to the :meth:`on_publish_failure` callbacks — never dropped
        silently. Returns the headers sent.
        """
        return await self._send(subject, encode_payload(payload), call_id, headers, traced, jetstream=True)

    async def flush_acks(self, timeout: float | None = None) -> None:
        """Wait until every JetStream publish made before this call is acknowledged or surfaced as failed
        (:meth:`AckTracker.wait_settled`: later publishes are not waited for)."""
        await self.acks.wait_settled(timeout)

    # --- subscribe -------------------------------------------------------------------------------------

    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        queue: str = "",
        dedupe: bool = True,
        traced: bool | None = None,
        pending_msgs_limit: int = 65_536,
    ) -> Subscription:
        """Subscribe on core NATS; ``handler(env)`` runs per message inside the restored trace context.

        Messages are handled in arrival order, one at a time per subscription. With ``dedupe`` a message
        whose (``Switchboard-Call-Id``, ``Switchboard-Source``) seq is not newer than the last one seen is
        dropped (a retried publish must not play twice). ``traced`` (default: not a high-rate subject)
        wraps each handler run in a CONSUMER span ``process <template>``. A handler exception is logged and
        recorded on the span; the subscription carries on.

        Cancelling the caller while it waits for the server's confirmation (an HTTP client that went away)
        never harms the connection: the confirmation is awaited through :func:`shared.bus.wire.flush_shielded`.
        """
        deduper = _Deduper() if dedupe else None

        async def callback(msg: Msg) -> None:
            env = Envelope.from_msg(msg, self)
            if deduper is not None and deduper.is_duplicate(env):
                return
            await self.dispatch(env, handler, traced=traced)

        sub = await self.nc.subscribe(subject, queue=queue, cb=callback, pending_msgs_limit=pending_msgs_limit)
        try:
            await flush_shielded(self.nc, SUBSCRIBE_FLUSH_TIMEOUT)  # the server has the interest before we return
        except (nats.errors.FlushTimeoutError, nats.errors.ConnectionReconnectingError) as exc:
            # NATS is paused or reconnecting: the subscription stands and nats-py sends it again on reconnect;
            # failing here would end a call over a blip it survives otherwise
            log.warning("subscribed to %s while the server did not answer (%s); it takes effect when it does",
                        subject, type(exc).__name__)
        return sub

    def _context_of(self, headers: Mapping[str, str]) -> otel_context.Context:
        """The trace context carried by ``headers`` (W3C ``traceparent``/``tracestate``), cached per value:
        every frame of a call carries the same ``traceparent``, and extracting it again per message is wasted."""
        key = (headers.get(Headers.TRACEPARENT), headers.get(Headers.TRACESTATE))
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = propagate.extract(headers)
            if len(self._contexts) >= CONTEXT_CACHE_SIZE:
                self._contexts.clear()
            self._contexts[key] = ctx
        return ctx

    async def dispatch(self, env: Envelope, handler: Handler, *, traced: bool | None = None,
                       span_name: str | None = None, attributes: Mapping[str, Any] | None = None,
                       kind: SpanKind = SpanKind.CONSUMER) -> None:
        """Run ``handler(env)`` in the message's trace context (and a CONSUMER span unless high-rate).

        Records the bus hop latency (``Switchboard-Ts`` → now). Exceptions are logged, not raised.
        """
        if traced is None:
            traced = not is_high_rate(env.subject)
        self._received += 1
        if env.ts_ns is not None and (traced or self._received % HOP_SAMPLE_EVERY == 0):
            metrics.BUS_HOP.record((time.time_ns() - env.ts_ns) / 1e9,
                                   {"messaging.destination.template": destination_template(env.subject)})
        token = otel_context.attach(self._context_of(env.headers))
        call_token = current_call_id.set(env.call_id)
        try:
            if not traced:
                try:
                    await handler(env)
                except Exception:
                    log.exception("handler for %s failed", env.subject)
                return
            template = destination_template(env.subject)
            attrs: dict[str, Any] = {
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": env.subject,
                "messaging.destination.template": template,
                "messaging.message.body.size": len(env.data),
            }
            if env.msg_id:
                attrs["messaging.message.id"] = env.msg_id
            if env.call_id:
                attrs["switchboard.call_id"] = env.call_id
            if attributes:
                attrs.update(attributes)
            with self._tracer.start_as_current_span(
                span_name or f"process {template}", kind=kind, attributes=attrs,
                record_exception=True, set_status_on_exception=True,
            ) as span:
                try:
                    await handler(env)
                except Exception as exc:
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    log.exception("handler for %s failed", env.subject)
        finally:
            current_call_id.reset(call_token)
            otel_context.detach(token)

    # --- streams and nats.micro (delegated) -------------------------------------------------------------

    async def ensure_streams(self, settings: Settings) -> None:
        """Create or update the CALLS, RT and TRACES streams: :meth:`Streams.ensure_streams`."""
        await self.streams.ensure_streams(settings)

    def replay(self, filter_subject: str | Sequence[str], stream: subjects.StreamSpec, *, batch: int = 512,
               timeout: float = 5.0) -> AsyncIterator[Envelope]:
        """Every stored message of ``stream`` on ``filter_subject``, in stream order: :meth:`Streams.replay`."""
        return self.streams.replay(filter_subject, stream, batch=batch, timeout=timeout)

    async def follow(self, filter_subject: str, stream: subjects.StreamSpec,
                     handler: Handler) -> JetStreamContext.PushSubscription:
        """Stored then new messages of ``stream`` to ``handler``, in order: :meth:`Streams.follow`."""
        return await self.streams.follow(filter_subject, stream, handler)

    async def last_message(self, stream: subjects.StreamSpec, subject: str) -> Envelope | None:
        """The last message ``stream`` stores on ``subject``: :meth:`Streams.last_message`."""
        return await self.streams.last_message(stream, subject)

    async def add_service(self, name: str, *, version: str = "0.1.0", description: str = "",
                          metadata: Mapping[str, str] | None = None) -> Any:
        """Register a nats.micro service: :meth:`Micro.add_service`."""
        return await self.micro.add_service(name, version=version, description=description, metadata=metadata)

    async def add_endpoint(self, service: Any, *, name: str, subject: str,
                           handler: Callable[[Envelope], Awaitable[Payload]], queue_group: str = "q",
                           metadata: Mapping[str, str] | None = None, span_name: str | None = None,
                           span_attributes: Mapping[str, Any] | None = None) -> None:
        """Add a request/reply endpoint to a nats.micro ``service``: :meth:`Micro.add_endpoint`."""
        await self.micro.add_endpoint(service, name=name, subject=subject, handler=handler,
                                      queue_group=queue_group, metadata=metadata, span_name=span_name,
                                      span_attributes=span_attributes)

    @property
    def requests_in_flight(self) -> int:
        """Endpoint requests being handled now: :attr:`Micro.requests_in_flight`."""
        return self.micro.requests_in_flight

    async def requests_done(self, timeout: float) -> bool:
        """Wait until no endpoint request is in flight, at most ``timeout`` s: :meth:`Micro.requests_done`."""
        return await self.micro.requests_done(timeout)
