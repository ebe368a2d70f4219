"""Incoming JetStream messages and archived events as plain records (no I/O).

:class:`Incoming` is what a consumer fetched (stream, stream sequence, storage time, subject, headers, body);
:class:`ArchivedEvent` is a row of the ``events`` table as the projections, recording and replay read it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg

from shared import subjects
from shared.bus import Headers

__all__ = ["ArchivedEvent", "Gap", "Incoming", "classify", "trace_id_of"]


@dataclass(frozen=True, slots=True)
class Incoming:
    """One message fetched from a stream.

    Attributes:
        stream: ``CALLS``, ``RT`` or ``TRACES``.
        stream_seq: JetStream stream sequence (unique within the stream).
        stream_ts_ns: JetStream storage time, unix ns.
        subject / headers / body: the message as published.
    """

    stream: str
    stream_seq: int
    stream_ts_ns: int
    subject: str
    headers: dict[str, str]
    body: bytes

    @classmethod
    def from_msg(cls, msg: Msg) -> Incoming:
        """Build from a JetStream message, reading sequence and timestamp from its ack subject (ns exact).

        Raises:
            ValueError: the message has no JetStream ack subject.
        """
        reply = msg.reply or ""
        tokens = reply.split(".")
        if len(tokens) == 9 and tokens[0] == "$JS":  # $JS.ACK.<stream>.<consumer>.<n>.<sseq>.<cseq>.<ts>.<pend>
            stream, sseq, ts = tokens[2], tokens[5], tokens[7]
        elif len(tokens) >= 11 and tokens[0] == "$JS":  # v2 with domain and account hash
            stream, sseq, ts = tokens[4], tokens[7], tokens[9]
        else:
            raise ValueError(f"not a JetStream message (reply {reply!r})")
        return cls(stream, int(sseq), int(ts), msg.subject, dict(msg.headers or {}), bytes(msg.data))


@dataclass(frozen=True, slots=True)
class Gap:
    """Stream sequences ``first_seq..last_seq`` (inclusive) that can no longer be read from the stream.

    ``reason`` says why, e.g. ``expired or purged (below first_seq 1852)`` or ``deleted from the stream``.
    """

    first_seq: int
    last_seq: int
    reason: str

    def describe(self, stream: str) -> str:
        """``RT stream sequences 1156..1851 (expired or purged …)``."""
        return f"{stream} stream sequences {self.first_seq}..{self.last_seq} ({self.reason})"


def classify(subject: str, headers: dict[str, str]) -> tuple[str, str | None, str]:
    """``(call_id, direction, type)`` of a CALLS/RT subject.

    ``rt.<id>.<client|server>.<type>`` → (id, direction, Realtime event type);
    ``call.<id>.<rest>`` → (id, None, rest) e.g. ``started``, ``carrier.mark``, ``command.clear``.
    A subject that is not ours keeps its tail as type and the ``Switchboard-Call-Id`` header (or its second
    token) as call id, so nothing is lost.
    """
    try:
        parsed = subjects.parse(subject)
        if parsed.call_id is not None:
            return parsed.call_id, parsed.direction, parsed.rest
    except ValueError:
        pass
    parts = subject.split(".")
    call_id = headers.get(Headers.CALL_ID) or (parts[1] if len(parts) > 1 else "unknown")
    return call_id[:64], None, ".".join(parts[2:])[:160] or subject[:160]


def trace_id_of(headers: dict[str, str]) -> str | None:
    """The trace id (32 hex) from a W3C ``traceparent`` header, or None."""
    value = headers.get(Headers.TRACEPARENT)
    if not value:
        return None
    parts = value.split("-")
    if len(parts) >= 3 and len(parts[1]) == 32:
        return parts[1]
    return None


@dataclass(slots=True)
class ArchivedEvent:
    """One archived event (a row of ``events``); ``body`` is the raw bytes as published."""

    stream: str
    stream_seq: int
    call_id: str
    chain_index: int
    subject: str
    direction: str | None
    type: str
    source: str | None
    seq: int | None
    msg_id: str | None
    ts_ns: int | None
    stream_ts_ns: int
    trace_id: str | None
    headers: dict[str, str]
    body: bytes
    hash: str = ""
    _parsed: Any = field(default=None, repr=False)
    _parsed_done: bool = field(default=False, repr=False)

    @property
    def time_ns(self) -> int:
        """When the event happened: ``Switchboard-Ts`` if present, else the stream's storage time."""
        return self.ts_ns if self.ts_ns is not None else self.stream_ts_ns

    def json(self) -> dict[str, Any] | None:
        """The body as a JSON object, or None when it is not valid JSON or not an object."""
        if not self._parsed_done:
            self._parsed_done = True
            try:
                value = json.loads(self.body)
            except (ValueError, UnicodeDecodeError):
                value = None
            self._parsed = value if isinstance(value, dict) else None
        result: dict[str, Any] | None = self._parsed
        return result

    @classmethod
    def from_row(cls, row: Any) -> ArchivedEvent:
        """Build from a SQLAlchemy row (mapping) of ``events``."""
        m = row._mapping if hasattr(row, "_mapping") else row
        try:
            headers = json.loads(m["headers"])
        except ValueError:
            headers = {}
        return cls(
            stream=m["stream"], stream_seq=int(m["stream_seq"]), call_id=m["call_id"],
            chain_index=int(m["chain_index"]), subject=m["subject"], direction=m["direction"], type=m["type"],
            source=m["source"], seq=m["seq"], msg_id=m["msg_id"], ts_ns=m["ts_ns"],
            stream_ts_ns=int(m["stream_ts_ns"]), trace_id=m["trace_id"],
            headers=headers if isinstance(headers, dict) else {}, body=bytes(m["body"]), hash=m["hash"])

    def to_dict(self, *, include_body: bool = True) -> dict[str, Any]:
        """JSON shape for the REST API (``/calls/{id}/events``): the body as JSON when it parses, else
        ``body_b64`` (base64)."""
        out: dict[str, Any] = {
            "stream": self.stream, "stream_seq": self.stream_seq, "call_id": self.call_id,
            "chain_index": self.chain_index, "subject": self.subject, "direction": self.direction,
            "type": self.type, "source": self.source, "seq": self.seq, "msg_id": self.msg_id,
            "ts_ns": self.ts_ns, "stream_ts_ns": self.stream_ts_ns, "trace_id": self.trace_id,
            "headers": self.headers, "hash": self.hash,
        }
        if include_body:
            parsed = self.json()
            if parsed is not None:
                out["body"] = parsed
            else:
                out["body_b64"] = base64.b64encode(self.body).decode()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchivedEvent:
        """The inverse of :meth:`to_dict`: ``body`` (JSON, re-serialised) or ``body_b64`` (absent: empty)."""
        body = json.dumps(d["body"]).encode() if "body" in d else base64.b64decode(d.get("body_b64", ""))
        return cls(d["stream"], d["stream_seq"], d["call_id"], d["chain_index"], d["subject"], d["direction"],
                   d["type"], d["source"], d["seq"], d["msg_id"], d["ts_ns"], d["stream_ts_ns"], d["trace_id"],
                   d["headers"], body, d["hash"])
