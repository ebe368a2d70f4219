"""The NATS bus: every publish, request and subscription of every service goes through here.

This module is the one place that knows about message headers, serialization and trace propagation
(design.md, "Subjects, streams and payloads" and "Telemetry"); handlers receive an :class:`Envelope` and run
inside the restored trace context, and never touch headers or spans themselves.

Headers on every message (:class:`Headers`): ``Nats-Msg-Id`` (unique event id; JetStream de-duplication),
``traceparent`` (W3C, injected with the global OTel propagator), ``Switchboard-Call-Id``,
``Switchboard-Source``, ``Switchboard-Seq`` (monotonic per call and source, no gaps), ``Switchboard-Ts``
(unix ns at publish) and ``Switchboard-Audio-Format`` on audio.

Spans follow the OTel messaging semantic conventions (``messaging.system="nats"``,
``messaging.destination.name``, ``messaging.destination.template``, ``messaging.operation.type``): a PRODUCER
span ``publish <template>`` per publish and a CONSUMER span ``process <template>`` per handled message,
except for high-rate media subjects (audio frames, audio deltas), which carry ``traceparent`` but get no span
each — 50 spans a second per call would cost more than the audio path itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
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
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from shared import metrics, subjects
from shared.config import Settings
from shared.errors import BusError, PublishFailedError, ServiceCallError
from shared.telemetry import current_call_id

__all__ = [
    "Bus",
    "Envelope",
    "Handler",
    "Headers",
    "Payload",
    "decode_headers_seq",
    "destination_template",
    "is_high_rate",
]

log = logging.getLogger(__name__)

Payload = Mapping[str, Any] | list[Any] | bytes | bytearray | memoryview
"""A message body: a JSON-able mapping/list (serialized compactly) or raw bytes (sent as is)."""


class Headers(StrEnum):
    """Header names carried on every Switchboard message."""

    MSG_ID = "Nats-Msg-Id"
    TRACEPARENT = "traceparent"
    TRACESTATE = "tracestate"
    CALL_ID = "Switchboard-Call-Id"
    SOURCE = "Switchboard-Source"
    SEQ = "Switchboard-Seq"
    TS = "Switchboard-Ts"
    AUDIO_FORMAT = "Switchboard-Audio-Format"
    SERVICE_ERROR = "Nats-Service-Error"
    SERVICE_ERROR_CODE = "Nats-Service-Error-Code"


_HIGH_RATE_SUFFIXES = (
    ".audio.in",
    ".client.input_audio_buffer.append",
    ".server.response.output_audio.delta",
    ".server.response.output_audio_transcript.delta",
    ".server.conversation.item.input_audio_transcription.delta",
    ".carrier.mark",
)


def is_high_rate(subject: str) -> bool:
    """True for media-rate subjects (audio frames, audio/transcript deltas, marks): no span per message."""
    return subject.endswith(_HIGH_RATE_SUFFIXES)


def destination_template(subject: str) -> str:
    """The subject with its call id replaced by ``{call_id}`` (``messaging.destination.template``)."""
    parts = subject.split(".", 2)
    if len(parts) == 3 and parts[0] in ("call", "rt"):
        return f"{parts[0]}.{{call_id}}.{parts[2]}"
    return subject


def decode_headers_seq(headers: Mapping[str, str] | None) -> int | None:
    """``Switchboard-Seq`` as an int, or None when absent or malformed."""
    if not headers:
        return None
    raw = headers.get(Headers.SEQ)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


@dataclass(slots=True)
class Envelope:
    """A received message: body, parsed standard headers and (for requests) a way to answer.

    Attributes:
        subject: the NATS subject.
        data: the raw body (JSON for events, raw audio bytes on ``call.<id>.audio.in``).
        headers: every header as received.
        call_id / source / seq / ts_ns / msg_id: the standard headers, parsed (None when absent).
        msg: the nats-py message (for JetStream ack/nak/metadata).
    """

    subject: str
    data: bytes
    headers: dict[str, str]
    call_id: str | None
    source: str | None
    seq: int | None
    ts_ns: int | None
    msg_id: str | None
    msg: Msg | None = field(default=None, repr=False)
    _bus: Bus | None = field(default=None, repr=False)

    @classmethod
    def from_msg(cls, msg: Msg, bus: Bus | None = None) -> Envelope:
        """Parse a nats-py message into an Envelope (never raises on odd headers)."""
        headers = dict(msg.headers or {})
        ts = headers.get(Headers.TS)
        return cls(
            subject=msg.subject,
            data=msg.data,
            headers=headers,
            call_id=headers.get(Headers.CALL_ID),
            source=headers.get(Headers.SOURCE),
            seq=decode_headers_seq(headers),
            ts_ns=int(ts) if ts and ts.isdigit() else None,
            msg_id=headers.get(Headers.MSG_ID),
            msg=msg,
            _bus=bus,
        )

    def json(self) -> Any:
        """The body parsed as JSON.

        Raises:
            ValueError: the body is not valid UTF-8 JSON.
        """
        return json.loads(self.data)

    @property
    def reply(self) -> str | None:
        """The reply subject of a request, if any."""
        return self.msg.reply if self.msg is not None and self.msg.reply else None

    async def respond(self, payload: Payload, *, headers: Mapping[str, str] | None = None) -> None:
        """Answer a request with ``payload`` (standard headers and trace context included).

        Raises:
            ValueError: the message has no reply subject.
        """
        if self.reply is None or self._bus is None:
            raise ValueError("message has no reply subject")
        await self._bus.publish(self.reply, payload, call_id=self.call_id, headers=headers, traced=False)

    async def respond_error(self, code: int, message: str) -> None:
        """Answer a request with a nats.micro service error (``Nats-Service-Error-Code``, message)."""
        await self.respond(b"", headers={Headers.SERVICE_ERROR: message, Headers.SERVICE_ERROR_CODE: str(code)})


Handler = Callable[[Envelope], Awaitable[None]]
"""``async def handler(env: Envelope) -> None`` — runs inside the message's trace context."""


def encode_payload(payload: Payload) -> bytes:
    """Serialize a payload: bytes pass through; mappings/lists become compact UTF-8 JSON."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


class _Sequencer:
    """``Switchboard-Seq`` per call id for one source: 1, 2, 3, … with no gaps."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def next(self, call_id: str) -> int:
        value = self._last.get(call_id, 0) + 1
        self._last[call_id] = value
        return value

    def resume(self, call_id: str, last_seq: int) -> None:
        self._last[call_id] = max(last_seq, self._last.get(call_id, 0))

    def forget(self, call_id: str) -> None:
        self._last.pop(call_id, None)


class _Deduper:
    """Drops live core-NATS messages whose (call, source) seq is not newer than the last one seen."""

    def __init__(self, capacity: int = 20_000) -> None:
        self._last: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._capacity = capacity

    def is_duplicate(self, env: Envelope) -> bool:
        if env.seq is None or env.call_id is None or env.source is None:
            return False
        key = (env.call_id, env.source)
        last = self._last.get(key)
        if last is not None and env.seq <= last:
            return True
        self._last[key] = env.seq
        self._last.move_to_end(key)
        if len(self._last) > self._capacity:
            self._last.popitem(last=False)
        return False


FailureCallback = Callable[[PublishFailedError, str | None], Awaitable[None]]


class Bus:
    """A service's connection to NATS, with Switchboard's headers, tracing and JetStream conventions.

    Create with :meth:`connect`; close with :meth:`close` (drains subscriptions and waits for pending
    JetStream acks). ``source`` names the publishing service (``gateway``, ``session``, …) and scopes
    ``Switchboard-Seq``.
    """

    def __init__(self, nc: NATS, *, source: str, ack_timeout: float = 5.0, max_attempts: int = 5) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.source = source
        self.ack_timeout = ack_timeout
        self.max_attempts = max_attempts
        self._seq = _Sequencer()
        self._tracer = trace.get_tracer("switchboard.bus")
        self._ack_tasks: set[asyncio.Task[None]] = set()
        self._failure_callbacks: list[FailureCallback] = []
        self.failed_publishes: list[PublishFailedError] = []
        """Publishes that failed after every retry (kept, bounded to the last 1000, for inspection)."""

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
    ) -> Bus:
        """Connect to NATS at ``url`` (comma-separated for a cluster), retrying with backoff.

        Waits up to ``connect_timeout`` seconds for the server to accept (backoff 50 ms doubling to 1 s),
        then keeps reconnecting forever if the connection later drops.

        Raises:
            BusError: no server accepted within ``connect_timeout``.
        """
        deadline = time.monotonic() + connect_timeout
        delay = 0.05
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                nc = await nats.connect(
                    servers=url.split(","),
                    name=name,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    error_cb=_log_error,
                    disconnected_cb=_log_disconnect,
                    reconnected_cb=_log_reconnect,
                )
                return cls(nc, source=source or name, ack_timeout=ack_timeout)
            except (TimeoutError, OSError, nats.errors.Error) as exc:
                last_error = exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise BusError(f"could not connect to NATS at {url} within {connect_timeout:.0f}s: {last_error}")

    async def close(self) -> None:
        """Wait (bounded) for pending JetStream acks, then drain and close the connection."""
        if self._ack_tasks:
            await asyncio.wait(set(self._ack_tasks), timeout=self.ack_timeout * self.max_attempts)
        if not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()
            with contextlib.suppress(Exception):
                await self.nc.close()

    def on_publish_failure(self, callback: FailureCallback) -> None:
        """Register ``async callback(error, call_id)`` run when a JetStream publish finally fails."""
        self._failure_callbacks.append(callback)

    # --- headers and seq -------------------------------------------------------------------------------

    def resume_seq(self, call_id: str, last_seq: int) -> None:
        """Continue ``Switchboard-Seq`` for ``call_id`` after ``last_seq`` (a session that took over)."""
        self._seq.resume(call_id, last_seq)

    def forget_call(self, call_id: str) -> None:
        """Drop per-call state (seq counter) once a call is over."""
        self._seq.forget(call_id)

    def _headers(self, call_id: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers: dict[str, str] = {Headers.SOURCE: self.source, Headers.TS: str(time.time_ns())}
        if call_id is not None:
            seq = self._seq.next(call_id)
            headers[Headers.CALL_ID] = call_id
            headers[Headers.SEQ] = str(seq)
            headers[Headers.MSG_ID] = f"{call_id}:{self.source}:{seq}"
        else:
            headers[Headers.MSG_ID] = secrets.token_hex(12)
        propagate.inject(headers)
        if extra:
            headers.update(extra)
        return headers

    def _producer_span(self, subject: str, call_id: str | None, size: int) -> trace.Span:
        span = self._tracer.start_span(
            f"publish {destination_template(subject)}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.destination.name": subject,
                "messaging.destination.template": destination_template(subject),
                "messaging.message.body.size": size,
            },
        )
        if call_id is not None:
            span.set_attribute("switchboard.call_id", call_id)
        return span

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
        data = encode_payload(payload)
        if traced is None:
            traced = not is_high_rate(subject)
        if not traced:
            hdrs = self._headers(call_id, headers)
            await self.nc.publish(subject, data, headers=hdrs)
            return hdrs
        span = self._producer_span(subject, call_id, len(data))
        with trace.use_span(span, end_on_exit=True):
            hdrs = self._headers(call_id, headers)
            span.set_attribute("messaging.message.id", hdrs[Headers.MSG_ID])
            await self.nc.publish(subject, data, headers=hdrs)
        return hdrs

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
        span = self._tracer.start_span(
            f"send {destination_template(subject)}",
            kind=SpanKind.CLIENT,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "send",
                "messaging.operation.name": "request",
                "messaging.destination.name": subject,
                "messaging.destination.template": destination_template(subject),
                "messaging.message.body.size": len(data),
            },
        )
        if call_id is not None:
            span.set_attribute("switchboard.call_id", call_id)
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

        The message is sent at once (in order with the caller's other publishes); a background task awaits
        the ack for ``ack_timeout`` s and, when it fails, retries with the SAME ``Nats-Msg-Id`` (the
        stream's duplicate window drops a copy that did land) up to ``max_attempts``. If every attempt
        fails the failure is surfaced — logged, counted in ``switchboard.bus.publish.failures``, kept in
        :attr:`failed_publishes` and passed to the :meth:`on_publish_failure` callbacks — never dropped
        silently. Returns the headers sent.
        """
        data = encode_payload(payload)
        if traced is None:
            traced = not is_high_rate(subject)
        span = self._producer_span(subject, call_id, len(data)) if traced else None
        with trace.use_span(span, end_on_exit=True) if span else contextlib.nullcontext():
            hdrs = self._headers(call_id, headers)
            if span is not None:
                span.set_attribute("messaging.message.id", hdrs[Headers.MSG_ID])
            future: asyncio.Future[Any] | None
            try:
                future = await self.js.publish_async(subject, data, headers=dict(hdrs), wait_stall=self.ack_timeout)
            except Exception as exc:  # connection closed/stalled: retried below, not lost
                log.warning("jetstream publish to %s not sent at first attempt: %s", subject, exc)
                future = None
        task = asyncio.create_task(self._confirm(subject, data, hdrs, future, call_id))
        self._ack_tasks.add(task)
        task.add_done_callback(self._ack_tasks.discard)
        return hdrs

    async def _confirm(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str],
        future: asyncio.Future[Any] | None,
        call_id: str | None,
    ) -> None:
        msg_id = headers[Headers.MSG_ID]
        cause = "not sent"
        if future is not None:
            try:
                await asyncio.wait_for(future, self.ack_timeout)
                return
            except (TimeoutError, Exception) as exc:
                cause = f"{type(exc).__name__}: {exc}"
        delay = 0.1
        for attempt in range(2, self.max_attempts + 1):
            metrics.PUBLISH_RETRIES.add(1, {"messaging.destination.template": destination_template(subject)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            try:
                await self.js.publish(subject, data, timeout=self.ack_timeout, headers=dict(headers))
                log.info("jetstream publish to %s (msg id %s) succeeded at attempt %d", subject, msg_id, attempt)
                return
            except Exception as exc:
                cause = f"{type(exc).__name__}: {exc}"
        error = PublishFailedError(subject, msg_id, self.max_attempts, cause)
        metrics.PUBLISH_FAILURES.add(1, {"messaging.destination.template": destination_template(subject)})
        log.error("%s", error, extra={"call_id": call_id})
        self.failed_publishes.append(error)
        del self.failed_publishes[:-1000]
        for callback in self._failure_callbacks:
            try:
                await callback(error, call_id)
            except Exception:
                log.exception("publish-failure callback failed")

    async def flush_acks(self, timeout: float | None = None) -> None:
        """Wait until every pending JetStream publish is acknowledged or surfaced as failed."""
        if self._ack_tasks:
            await asyncio.wait(set(self._ack_tasks), timeout=timeout)

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
        """
        deduper = _Deduper() if dedupe else None

        async def callback(msg: Msg) -> None:
            env = Envelope.from_msg(msg, self)
            if deduper is not None and deduper.is_duplicate(env):
                return
            await self.dispatch(env, handler, traced=traced)

        return await self.nc.subscribe(subject, queue=queue, cb=callback, pending_msgs_limit=pending_msgs_limit)

    async def dispatch(self, env: Envelope, handler: Handler, *, traced: bool | None = None,
                       span_name: str | None = None, attributes: Mapping[str, Any] | None = None,
                       kind: SpanKind = SpanKind.CONSUMER) -> None:
        """Run ``handler(env)`` in the message's trace context (and a CONSUMER span unless high-rate).

        Records the bus hop latency (``Switchboard-Ts`` → now). Exceptions are logged, not raised.
        """
        if env.ts_ns is not None:
            metrics.BUS_HOP.record((time.time_ns() - env.ts_ns) / 1e6,
                                   {"messaging.destination.template": destination_template(env.subject)})
        ctx = propagate.extract(env.headers)
        token = otel_context.attach(ctx)
        call_token = current_call_id.set(env.call_id)
        try:
            if traced is None:
                traced = not is_high_rate(env.subject)
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

    # --- JetStream streams and consumers ---------------------------------------------------------------

    async def ensure_streams(self, settings: Settings) -> None:
        """Create or update the CALLS, RT and TRACES streams (idempotent; safe from every service).

        File storage, limits retention, ``max_age`` from ``SWITCHBOARD_JS_MAX_AGE`` (TRACES: at most 1 h),
        a ``Nats-Msg-Id`` duplicate window and ``num_replicas`` from ``SWITCHBOARD_JS_REPLICAS``.
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
                await self.js.update_stream(config)

    async def replay(
        self, filter_subject: str, stream: subjects.StreamSpec, *, batch: int = 512, timeout: float = 5.0
    ) -> AsyncIterator[Envelope]:
        """Yield every stored message of ``stream`` matching ``filter_subject``, in stream order.

        Uses an ephemeral pull consumer (deliver all, no acks) that is deleted afterwards. Ends when the
        consumer reports nothing pending.
        """
        psub = await self.js.pull_subscribe(
            filter_subject,
            stream=stream.name,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=60.0,
                mem_storage=True,
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
                    yield Envelope.from_msg(msg, self)
                    pending = msg.metadata.num_pending
                    if pending == 0:
                        break
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def last_seq(self, call_id: str, stream: subjects.StreamSpec, filter_subject: str,
                       source: str | None = None) -> int:
        """The highest ``Switchboard-Seq`` stored for ``call_id`` from ``source`` (0 when none).

        A session that reconnects or takes over a call calls :meth:`resume_seq` with it so the log stays
        gap-free.
        """
        wanted = source or self.source
        last = 0
        async for env in self.replay(filter_subject, stream):
            if env.source == wanted and env.call_id == call_id and env.seq is not None:
                last = max(last, env.seq)
        return last

    # --- nats.micro ------------------------------------------------------------------------------------

    async def add_service(self, name: str, *, version: str = "0.1.0", description: str = "",
                          metadata: Mapping[str, str] | None = None) -> Any:
        """Register a nats.micro service ``name`` (answers ``$SRV.PING/INFO/STATS``); returns it.

        Every Switchboard service registers ``switchboard-<service>`` so ``switchboard up`` and
        ``switchboard status`` can find it.
        """
        from nats.micro import add_service

        return await add_service(self.nc, name=name, version=version, description=description,
                                 metadata=dict(metadata or {}))

    async def add_endpoint(
        self,
        service: Any,
        *,
        name: str,
        subject: str,
        handler: Callable[[Envelope], Awaitable[Payload]],
        queue_group: str = "q",
        metadata: Mapping[str, str] | None = None,
        span_name: str | None = None,
        span_attributes: Mapping[str, Any] | None = None,
    ) -> None:
        """Add a request/reply endpoint to a nats.micro ``service``.

        ``handler(env)`` returns the reply payload, or raises :class:`ServiceCallError` (sent as a
        nats.micro error with its code and speakable message). Any other exception becomes a 500 with a
        generic message (logged with the trace id; never a stack trace or ``repr`` to the peer). The handler
        runs in a SERVER span (``span_name``, default ``process <template>``) in the caller's trace.
        """
        from nats.micro.request import Request

        async def micro_handler(request: Request) -> None:
            env = Envelope.from_msg(request._msg, self)

            async def run(e: Envelope) -> None:
                span = trace.get_current_span()
                try:
                    reply = await handler(e)
                except ServiceCallError as exc:
                    span.set_status(Status(StatusCode.ERROR, exc.message))
                    span.set_attribute("error.type", str(exc.code))
                    await request.respond_error(str(exc.code), exc.message)
                    return
                except Exception as exc:
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    span.set_attribute("error.type", type(exc).__name__)
                    log.exception("endpoint %s failed", name)
                    await request.respond_error("500", "Something went wrong on our side.")
                    return
                await request.respond(encode_payload(reply), headers=self._headers(None, None))

            await self.dispatch(env, run, traced=True, span_name=span_name, attributes=span_attributes,
                                kind=SpanKind.SERVER)

        await service.add_endpoint(name=name, subject=subject, handler=micro_handler, queue_group=queue_group,
                                   metadata=dict(metadata or {}))


async def _log_error(exc: Exception) -> None:
    log.warning("nats error: %s", exc)


async def _log_disconnect() -> None:
    log.warning("nats disconnected")


async def _log_reconnect() -> None:
    log.info("nats reconnected")
