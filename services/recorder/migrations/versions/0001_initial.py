"""The recorder's initial schema: event archive, chain heads, consumer positions, spans and projections.

Revision ID: rec0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "rec0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create every recorder table."""
    op.create_table(
        "events",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("stream", sa.String(16), nullable=False),
        sa.Column("stream_seq", sa.BigInteger(), nullable=False),
        sa.Column("call_id", sa.String(64), nullable=False),
        sa.Column("chain_index", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("direction", sa.String(8), nullable=True),
        sa.Column("type", sa.String(160), nullable=False),
        sa.Column("source", sa.String(64), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("msg_id", sa.String(160), nullable=True),
        sa.Column("ts_ns", sa.BigInteger(), nullable=True),
        sa.Column("stream_ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("trace_id", sa.String(32), nullable=True),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("stream", "stream_seq", name="uq_events_stream_seq"),
    )
    op.create_index("ix_events_call_chain", "events", ["call_id", "stream", "chain_index"])
    op.create_table(
        "chain_heads",
        sa.Column("call_id", sa.String(64), primary_key=True),
        sa.Column("stream", sa.String(16), primary_key=True),
        sa.Column("chain_index", sa.Integer(), nullable=False),
        sa.Column("last_stream_seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "consumer_positions",
        sa.Column("stream", sa.String(16), primary_key=True),
        sa.Column("last_stream_seq", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "spans",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("span_id", sa.String(16), nullable=False),
        sa.Column("parent_span_id", sa.String(16), nullable=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("service", sa.String(128), nullable=False),
        sa.Column("start_ns", sa.BigInteger(), nullable=False),
        sa.Column("end_ns", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=True),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("events", sa.Text(), nullable=False),
        sa.Column("call_id", sa.String(64), nullable=True),
        sa.UniqueConstraint("trace_id", "span_id", name="uq_spans_trace_span"),
    )
    op.create_index("ix_spans_call", "spans", ["call_id"])
    op.create_index("ix_spans_trace", "spans", ["trace_id"])
    op.create_table(
        "calls",
        sa.Column("call_id", sa.String(64), primary_key=True),
        sa.Column("carrier", sa.String(32), nullable=True),
        sa.Column("agent", sa.String(255), nullable=True),
        sa.Column("audio_format", sa.String(64), nullable=True),
        sa.Column("from_number", sa.String(64), nullable=True),
        sa.Column("to_number", sa.String(64), nullable=True),
        sa.Column("carrier_call_id", sa.String(128), nullable=True),
        sa.Column("stream_id", sa.String(128), nullable=True),
        sa.Column("started_ns", sa.BigInteger(), nullable=True),
        sa.Column("ended_ns", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("end_reason", sa.String(64), nullable=True),
        sa.Column("trace_id", sa.String(32), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("input_text_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("input_audio_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("cached_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("output_text_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("output_audio_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("turns", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("tool_call_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("barge_in_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("recording_path", sa.Text(), nullable=True),
        sa.Column("projected_ns", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_calls_started", "calls", ["started_ns"])
    op.create_table(
        "transcript_turns",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("call_id", sa.String(64), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("item_id", sa.String(128), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("start_ms", sa.Integer(), nullable=True),
        sa.Column("end_ms", sa.Integer(), nullable=True),
        sa.Column("interrupted", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.UniqueConstraint("call_id", "idx", name="uq_turns_call_idx"),
    )
    op.create_table(
        "tool_calls",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("call_id", sa.String(64), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("tool_call_id", sa.String(128), nullable=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("arguments", sa.Text(), nullable=False),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("requested_ms", sa.Integer(), nullable=True),
        sa.Column("completed_ms", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.UniqueConstraint("call_id", "idx", name="uq_tool_calls_call_idx"),
    )
    op.create_table(
        "barge_ins",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("call_id", sa.String(64), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("at_ms", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.String(128), nullable=True),
        sa.Column("audio_end_ms", sa.Integer(), nullable=True),
        sa.Column("clear_latency_ms", sa.Float(), nullable=True),
        sa.UniqueConstraint("call_id", "idx", name="uq_barge_ins_call_idx"),
    )


def downgrade() -> None:
    """Drop every recorder table."""
    for table in ("barge_ins", "tool_calls", "transcript_turns", "calls", "spans", "consumer_positions",
                  "chain_heads", "events"):
        op.drop_table(table)
