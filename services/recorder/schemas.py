"""Response models of the recorder's REST API: what ``/openapi.json`` promises each JSON route returns.

The routes build their JSON from the archive's rows (:mod:`services.recorder.queries`); these models describe
those shapes for the OpenAPI document, and ``tests/integration/test_recorder_api.py`` validates real answers
against them. Row objects (a call, a turn, a span…) name every field the API guarantees and allow more, so a
column added to a projection does not break a client; the envelopes around them are exact.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AuditReport",
    "AuditStreams",
    "Call",
    "CallChain",
    "CallTrace",
    "Transcript",
]


class _Row(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Exact(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Call(_Row):
    """One ``calls`` row plus ``duration_ms`` (ms; null while in progress); ``GET /calls/{id}`` adds
    ``events`` (records per stream). Times are unix ns; tokens summed over the call's ``response.done``."""

    call_id: str
    carrier: str | None
    agent: str | None
    audio_format: str | None
    from_number: str | None
    to_number: str | None
    carrier_call_id: str | None
    stream_id: str | None
    started_ns: int | None
    ended_ns: int | None
    status: str = Field(description="in_progress or ended")
    end_reason: str | None
    trace_id: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None = Field(description="estimate (USD); null: unpriced")
    turns: int
    tool_call_count: int
    barge_in_count: int
    recording_path: str | None
    projected_ns: int | None
    duration_ms: float | None
    events: dict[str, int] | None = Field(None, description="records per stream (GET /calls/{call_id} only)")


class Turn(_Row):
    """A transcript turn: ``role`` user/assistant, ``text``, ``start_ms``/``end_ms`` from the call's start."""

    role: str
    text: str
    item_id: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None


class ToolCallRow(_Row):
    """A tool call: ``name``, ``arguments`` (the model's JSON string), its output and latency."""

    name: str
    tool_call_id: str | None = None
    arguments: str


class BargeIn(_Row):
    """A caller interruption: the interrupted item and what was heard (``audio_end_ms``)."""


class Transcript(_Exact):
    """``GET /calls/{call_id}/transcript``: ``final`` once the call is projected (else computed on the fly)."""

    call_id: str
    final: bool
    turns: list[Turn]
    tool_calls: list[ToolCallRow]
    barge_ins: list[BargeIn]


class Span(_Row):
    """A stored span (``shared.telemetry.span_to_dict``): ids as lower-case hex, times as unix ns."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    start_ns: int
    end_ns: int
    service: str | None
    attributes: dict[str, Any]
    status: str


class WaterfallRow(_Row):
    """A waterfall row: ``depth`` in the tree, ``offset_ms`` from the first span's start, ``duration_ms``."""

    depth: int
    offset_ms: float
    duration_ms: float
    name: str
    service: str | None
    kind: str | None
    status: str | None
    span_id: str
    parent_span_id: str | None
    trace_id: str | None


class CallTrace(_Exact):
    """``GET /calls/{call_id}/trace``."""

    call_id: str
    trace_ids: list[str]
    spans: list[Span]
    waterfall: list[WaterfallRow]


class ChainProblem(_Row):
    """One finding of the audit: ``kind`` (altered, missing, reordered, gap, projection, …) and where."""

    stream: str | None
    kind: str
    description: str


class AuditReport(_Exact):
    """``GET /calls/{call_id}/audit``: ``ok`` when every chain and projection verifies."""

    call_id: str
    ok: bool
    records: dict[str, int] = Field(description="records per stream")
    problems: list[ChainProblem]
    erased: dict[str, Any] | None = Field(None, description="for an erased call: erased_ns, erased_by, reason")


class ChainRecord(_Exact):
    """One chain record (an event or a gap record) with its hash."""

    stream: str
    chain_index: int
    stream_seq: int
    hash: str | None


class CallChain(_Exact):
    """``GET /calls/{call_id}/chain``: every chain record, for checkpoints."""

    call_id: str
    ended_ns: int | None
    rows: list[ChainRecord]


class StreamGap(_Row):
    """A stream-level gap: sequences ``first_seq``–``last_seq`` the stream no longer held, and why."""

    stream: str
    first_seq: int
    last_seq: int
    reason: str


class AuditStreams(_Exact):
    """``GET /audit/streams``: committed position per stream, stream-level gaps, every call id."""

    positions: dict[str, int]
    gaps: list[StreamGap]
    calls: list[str]


class Erasure(_Exact):
    """``DELETE /calls/{call_id}``: the erasure (``already``: the call had been erased before; this request
    only deleted what recording files remained)."""

    call_id: str
    erased_ns: int = Field(description="when the data key was destroyed, unix ns")
    erased_by: str | None
    reason: str | None
    already: bool
    recordings_deleted: list[str] = Field(description="recording files deleted by this request")
