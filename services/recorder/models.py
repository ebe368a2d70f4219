"""The recorder's tables (SQLAlchemy Core): the append-only event archive, chain heads, consumer positions,
spans and the projections (calls, transcript turns, tool calls, barge-ins).

Every table belongs to the recorder (its own Alembic version table ``alembic_version_recorder``); the tools
worker may share the database with its own tables. Times are integers: ``*_ns`` unix nanoseconds, ``*_ms``
milliseconds from the start of the call (``calls.started_ns``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "barge_ins",
    "call_keys",
    "calls",
    "chain_gaps",
    "chain_heads",
    "consumer_positions",
    "events",
    "metadata",
    "spans",
    "tool_calls",
    "transcript_turns",
]

metadata = MetaData()

_ID = BigInteger().with_variant(Integer, "sqlite")
"""Auto-increment primary key type (SQLite only auto-increments ``INTEGER PRIMARY KEY``)."""

events = Table(
    "events", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("stream", String(16), nullable=False, doc="JetStream stream name: CALLS or RT"),
    Column("stream_seq", BigInteger, nullable=False, doc="JetStream stream sequence"),
    Column("call_id", String(64), nullable=False),
    Column("chain_index", Integer, nullable=False, doc="1-based position in the call's chain for this stream"),
    Column("subject", String(255), nullable=False),
    Column("direction", String(8), nullable=True, doc="client / server for RT events, null for CALLS"),
    Column("type", String(160), nullable=False,
           doc="Realtime event type (RT) or the subject tail after the call id (CALLS: started, carrier.mark…)"),
    Column("source", String(64), nullable=True, doc="Switchboard-Source"),
    Column("seq", BigInteger, nullable=True, doc="Switchboard-Seq (per call per source)"),
    Column("msg_id", String(160), nullable=True, doc="Nats-Msg-Id"),
    Column("ts_ns", BigInteger, nullable=True, doc="Switchboard-Ts: unix ns at publish"),
    Column("stream_ts_ns", BigInteger, nullable=False, doc="JetStream's storage timestamp, unix ns"),
    Column("trace_id", String(32), nullable=True, doc="from traceparent"),
    Column("headers", Text, nullable=False, doc="every header, canonical JSON"),
    Column("body", LargeBinary, nullable=False, doc="the raw message body, exactly as published"),
    Column("hash", String(64), nullable=False, doc="SHA-256 (hex) of previous hash ‖ canonical record"),
    UniqueConstraint("stream", "stream_seq", name="uq_events_stream_seq"),
    Index("ix_events_call_chain", "call_id", "stream", "chain_index"),
)

chain_heads = Table(
    "chain_heads", metadata,
    Column("call_id", String(64), primary_key=True),
    Column("stream", String(16), primary_key=True),
    Column("chain_index", Integer, nullable=False, doc="number of records in the chain"),
    Column("last_stream_seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False, doc="hash of the last record"),
)

chain_gaps = Table(
    "chain_gaps", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("stream", String(16), nullable=False),
    Column("call_id", String(64), nullable=True,
           doc="the call whose chain holds this gap record; null: the stream-level record of the gap"),
    Column("first_seq", BigInteger, nullable=False, doc="first stream sequence that could not be read"),
    Column("last_seq", BigInteger, nullable=False, doc="last stream sequence that could not be read"),
    Column("reason", String(255), nullable=False),
    Column("detected_ns", BigInteger, nullable=False, doc="unix ns when the recorder found the gap"),
    Column("chain_index", Integer, nullable=True, doc="position in the call's chain (null for stream-level)"),
    Column("hash", String(64), nullable=True, doc="chain hash of the gap record (null for stream-level)"),
    Index("ix_chain_gaps_call", "call_id", "stream"),
)
"""Stream sequences the archive can never hold: one stream-level row per gap plus one record in the chain of
every call the gap may have hit (``services/recorder/chain.py`` :func:`gap_record`)."""

consumer_positions = Table(
    "consumer_positions", metadata,
    Column("stream", String(16), primary_key=True),
    Column("last_stream_seq", BigInteger, nullable=False,
           doc="highest stream sequence committed; saved in the same transaction as the rows"),
)

spans = Table(
    "spans", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("trace_id", String(32), nullable=False),
    Column("span_id", String(16), nullable=False),
    Column("parent_span_id", String(16), nullable=True),
    Column("name", String(255), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("service", String(128), nullable=False),
    Column("start_ns", BigInteger, nullable=False),
    Column("end_ns", BigInteger, nullable=False),
    Column("status", String(8), nullable=False),
    Column("status_message", Text, nullable=True),
    Column("attributes", Text, nullable=False, doc="JSON object"),
    Column("events", Text, nullable=False, doc="JSON list"),
    Column("call_id", String(64), nullable=True),
    UniqueConstraint("trace_id", "span_id", name="uq_spans_trace_span"),
    Index("ix_spans_call", "call_id"),
    Index("ix_spans_trace", "trace_id"),
)

calls = Table(
    "calls", metadata,
    Column("call_id", String(64), primary_key=True),
    Column("carrier", String(32), nullable=True),
    Column("agent", String(255), nullable=True),
    Column("audio_format", String(64), nullable=True),
    Column("from_number", String(64), nullable=True),
    Column("to_number", String(64), nullable=True),
    Column("carrier_call_id", String(128), nullable=True),
    Column("stream_id", String(128), nullable=True),
    Column("started_ns", BigInteger, nullable=True),
    Column("ended_ns", BigInteger, nullable=True),
    Column("status", String(16), nullable=False, doc="in_progress / ended"),
    Column("end_reason", String(64), nullable=True),
    Column("trace_id", String(32), nullable=True),
    Column("input_tokens", Integer, nullable=False, default=0),
    Column("output_tokens", Integer, nullable=False, default=0),
    Column("input_text_tokens", Integer, nullable=False, default=0),
    Column("input_audio_tokens", Integer, nullable=False, default=0),
    Column("cached_tokens", Integer, nullable=False, default=0),
    Column("output_text_tokens", Integer, nullable=False, default=0),
    Column("output_audio_tokens", Integer, nullable=False, default=0),
    Column("cost_usd", Float, nullable=True, doc="estimate; prices in shared/pricing.py"),
    Column("turns", Integer, nullable=False, default=0),
    Column("tool_call_count", Integer, nullable=False, default=0),
    Column("barge_in_count", Integer, nullable=False, default=0),
    Column("recording_path", Text, nullable=True),
    Column("disclosure_status", String(16), nullable=True,
           doc="completed / interrupted / unconfirmed / failed (session.disclosure); null: none logged"),
    Column("disclosure_played_ms", Integer, nullable=True, doc="disclosure audio confirmed played (marks)"),
    Column("projected_ns", BigInteger, nullable=True, doc="when the projections were last rebuilt"),
    Column("erased_ns", BigInteger, nullable=True, doc="when the call's data key was destroyed (null: not erased)"),
    Column("erased_by", String(128), nullable=True, doc="who erased it (API/CLI caller, or retention)"),
    Column("erase_reason", String(32), nullable=True, doc="request / retention"),
    Index("ix_calls_started", "started_ns"),
)

call_keys = Table(
    "call_keys", metadata,
    Column("call_id", String(64), primary_key=True),
    Column("key_id", String(64), nullable=False, doc="the key-encryption key that wrapped it (Kms.key_id)"),
    Column("wrapped_key", LargeBinary, nullable=False, doc="the call's AES-256 data key, wrapped"),
    Column("created_ns", BigInteger, nullable=False),
)
"""Per-call data keys (services/recorder/crypto.py); not append-only: erasing a call deletes its row."""

transcript_turns = Table(
    "transcript_turns", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("call_id", String(64), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("role", String(16), nullable=False, doc="user / assistant"),
    Column("item_id", String(128), nullable=True),
    Column("text", Text, nullable=False),
    Column("start_ms", Integer, nullable=True),
    Column("end_ms", Integer, nullable=True),
    Column("interrupted", Boolean, nullable=False, default=False),
    UniqueConstraint("call_id", "idx", name="uq_turns_call_idx"),
)

tool_calls = Table(
    "tool_calls", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("call_id", String(64), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("tool_call_id", String(128), nullable=True, doc="the Realtime function call's call_id"),
    Column("name", String(128), nullable=False),
    Column("arguments", Text, nullable=False, doc="JSON string exactly as the model produced it"),
    Column("output", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("requested_ms", Integer, nullable=True),
    Column("completed_ms", Integer, nullable=True),
    Column("latency_ms", Float, nullable=True),
    UniqueConstraint("call_id", "idx", name="uq_tool_calls_call_idx"),
)

barge_ins = Table(
    "barge_ins", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("call_id", String(64), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("at_ms", Integer, nullable=False, doc="speech_started, ms from call start"),
    Column("item_id", String(128), nullable=True, doc="the interrupted assistant item"),
    Column("audio_end_ms", Integer, nullable=True, doc="ms of that item actually played (truncate)"),
    Column("clear_latency_ms", Float, nullable=True, doc="speech_started → command.clear"),
    UniqueConstraint("call_id", "idx", name="uq_barge_ins_call_idx"),
)
