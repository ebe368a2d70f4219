"""Message envelopes and header conventions (see :mod:`shared.bus`)."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson
from nats.aio.msg import Msg
from opentelemetry.trace import SpanKind

__all__ = [
    "Dispatcher",
    "Envelope",
    "Handler",
    "Headers",
    "Payload",
    "Replier",
    "decode_headers_seq",
    "destination_template",
    "encode_payload",
    "is_high_rate",
]

Payload = Mapping[str, Any] | list[Any] | bytes | bytearray | memoryview
"""A message body: a JSON-able mapping/list (serialized compactly) or raw bytes (sent as is)."""


class Replier(Protocol):
    """What an :class:`Envelope` answers a request through: :meth:`shared.bus.Bus.publish`."""

    async def publish(self, subject: str, payload: Payload, *, call_id: str | None = None,
                      headers: Mapping[str, str] | None = None, traced: bool | None = None) -> dict[str, str]:
        """Publish ``payload`` on ``subject`` with the standard headers; returns the headers sent."""
        ...


class Dispatcher(Replier, Protocol):
    """What the stream and nats.micro parts of the bus run handlers through: :meth:`shared.bus.Bus.dispatch`
    (trace context, CONSUMER/SERVER span, errors logged) and :meth:`shared.bus.Bus.publish`."""

    async def dispatch(self, env: Envelope, handler: Handler, *, traced: bool | None = None,
                       span_name: str | None = None, attributes: Mapping[str, Any] | None = None,
                       kind: SpanKind = SpanKind.CONSUMER) -> None:
        """Run ``handler(env)`` in the message's trace context."""
        ...




class Headers:
    """Header names carried on every Switchboard message.

    Plain ``str`` constants, not an enum: they are read several times per message on the media path, and an
    enum member costs an extra attribute lookup each time.
    """

    MSG_ID: Final = "Nats-Msg-Id"
    TRACEPARENT: Final = "traceparent"
    TRACESTATE: Final = "tracestate"
    CALL_ID: Final = "Switchboard-Call-Id"
    SOURCE: Final = "Switchboard-Source"
    SEQ: Final = "Switchboard-Seq"
    TS: Final = "Switchboard-Ts"
    AUDIO_FORMAT: Final = "Switchboard-Audio-Format"
    DEADLINE: Final = "Switchboard-Deadline"
    """Absolute deadline of a request, unix time in integer ms (tool requests; docs/tools.md)."""
    EPOCH: Final = "Switchboard-Epoch"
    """The call owner's epoch (a positive integer) on everything a session instance publishes for a call it
    owns (``services/session/ownership.py``); receivers ignore commands and audio of an epoch lower than the
    highest they have seen for the call."""
    REPLAY: Final = "Switchboard-Replay"
    """On ``call.<id>.audio.in`` sent again by ``command.replay`` (value: the byte offset of the chunk)."""
    SERVICE_ERROR: Final = "Nats-Service-Error"
    SERVICE_ERROR_CODE: Final = "Nats-Service-Error-Code"


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
    _bus: Replier | None = field(default=None, repr=False)

    @classmethod
    def from_msg(cls, msg: Msg, bus: Replier | None = None) -> Envelope:
        """Parse a nats-py message into an Envelope (never raises on odd headers).

        ``headers`` is the message's own dict (nats-py builds one per message), not a copy: treat it as
        read-only.
        """
        return cls.from_parts(msg.subject, msg.data, msg.headers, bus, msg=msg)

    @classmethod
    def from_parts(cls, subject: str, data: bytes, headers: dict[str, str] | None, bus: Replier | None = None, *,
                   msg: Msg | None = None) -> Envelope:
        """An Envelope from a message's public parts (e.g. a nats.micro ``Request``'s ``subject``, ``data`` and
        ``headers``); without ``msg`` it has no :attr:`reply` (answer through whatever delivered it). Never
        raises on odd headers; ``headers`` is kept, not copied."""
        headers = headers if headers is not None else {}
        get = headers.get
        ts = get(Headers.TS)
        return cls(
            subject,
            data,
            headers,
            get(Headers.CALL_ID),
            get(Headers.SOURCE),
            decode_headers_seq(headers),
            int(ts) if ts and ts.isdigit() else None,
            get(Headers.MSG_ID),
            msg,
            bus,
        )

    @classmethod
    def from_stored(cls, subject: str, data: bytes, headers: dict[str, str],
                    bus: Replier | None = None) -> Envelope:
        """An Envelope for a message read from a stream by sequence or subject (no nats-py ``Msg``)."""
        get = headers.get
        ts = get(Headers.TS)
        return cls(subject, data, headers, get(Headers.CALL_ID), get(Headers.SOURCE), decode_headers_seq(headers),
                   int(ts) if ts and ts.isdigit() else None, get(Headers.MSG_ID), None, bus)

    def json(self) -> Any:
        """The body parsed as JSON.

        Raises:
            ValueError: the body is not valid UTF-8 JSON.
        """
        return json.loads(self.data)

    def json_fast(self) -> Any:
        """The body parsed as strict RFC 8259 JSON by orjson (several times cheaper than :meth:`json` on the
        audio path), for bodies of known shape whose integers fit in 64 bits — orjson reads a larger integer as
        a float, so anything that may carry one (tool outputs, arbitrary events) uses :meth:`json`.

        Raises:
            ValueError: the body is not valid UTF-8 JSON (``NaN``/``Infinity`` literals included).
        """
        return orjson.loads(self.data)

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
    """Serialize a payload: bytes pass through; mappings/lists become compact UTF-8 JSON.

    JSON comes from orjson (an order of magnitude cheaper than ``json.dumps`` for a small event): the same bytes
    as ``json.dumps(payload, separators=(",", ":"), ensure_ascii=False)`` for strings,
    integers, booleans, null, lists and objects; floats in their shortest form (``1e16``, not ``1e+16``); NaN and
    infinities as ``null`` (``json.dumps`` writes ``NaN``, which is not JSON). What orjson refuses — keys that are
    not strings, integers beyond 64 bits — goes through ``json.dumps`` unchanged, so nothing is rounded or lost.

    Raises:
        TypeError: a value JSON cannot represent.
    """
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


class _Sequencer:
    """``Switchboard-Seq`` per call id for one source: 1, 2, 3, … with no gaps."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def next(self, call_id: str) -> int:
        value = self._last.get(call_id, 0) + 1
        self._last[call_id] = value
        return value

    def current(self, call_id: str) -> int:
        """The last seq taken (or resumed) for ``call_id``; 0: none."""
        return self._last.get(call_id, 0)

    def resume(self, call_id: str, last_seq: int) -> None:
        self._last[call_id] = max(last_seq, self._last.get(call_id, 0))

    def forget(self, call_id: str) -> None:
        self._last.pop(call_id, None)


def epoch_of(headers: dict[str, str]) -> int:
    """The ``Switchboard-Epoch`` header as an int (0 when absent or malformed)."""
    value = headers.get(Headers.EPOCH)
    return int(value) if value and value.isdigit() else 0


class _Deduper:
    """Drops live core-NATS messages whose (call, source, epoch) seq is not newer than the last one seen (two
    owners of one call — old and new, during a handover — count their seqs apart)."""

    def __init__(self, capacity: int = 20_000) -> None:
        self._last: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._capacity = capacity

    def is_duplicate(self, env: Envelope) -> bool:
        if env.seq is None or env.call_id is None or env.source is None:
            return False
        epoch = env.headers.get(Headers.EPOCH)
        key = (env.call_id, env.source if epoch is None else f"{env.source}@{epoch}")
        last = self._last.get(key)
        if last is not None and env.seq <= last:
            return True
        self._last[key] = env.seq
        self._last.move_to_end(key)
        if len(self._last) > self._capacity:
            self._last.popitem(last=False)
        return False
