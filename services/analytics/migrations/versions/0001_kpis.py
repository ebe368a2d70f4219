"""The analytics schema: per-call KPI rows, first-response latencies, committed stream positions.

Revision ID: kpi0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "kpi0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create the analytics tables."""
    op.create_table(
        "kpi_calls",
        sa.Column("call_id", sa.String(64), primary_key=True),
        sa.Column("agent", sa.String(255), nullable=True),
        sa.Column("agent_version", sa.String(32), nullable=True),
        sa.Column("carrier", sa.String(32), nullable=True),
        sa.Column("from_number", sa.String(64), nullable=True),
        sa.Column("started_ns", sa.BigInteger(), nullable=True),
        sa.Column("day", sa.String(10), nullable=True),
        sa.Column("ended_ns", sa.BigInteger(), nullable=True),
        sa.Column("end_reason", sa.String(64), nullable=True),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("billed", sa.Boolean(), nullable=False),
        sa.Column("responses", sa.Integer(), nullable=False),
        sa.Column("interruptions", sa.Integer(), nullable=False),
        sa.Column("interruptions_stopped", sa.Integer(), nullable=False),
        sa.Column("tool_calls", sa.Integer(), nullable=False),
        sa.Column("tool_errors", sa.Integer(), nullable=False),
        sa.Column("tasks_ok", sa.Integer(), nullable=False),
        sa.Column("transfer_called", sa.Boolean(), nullable=False),
        sa.Column("escalated", sa.Boolean(), nullable=False),
        sa.Column("dropped", sa.Boolean(), nullable=False),
        sa.Column("task_completed", sa.Boolean(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("usage", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
    )
    op.create_index("ix_kpi_calls_started", "kpi_calls", ["started_ns"])
    op.create_table(
        "kpi_latencies",
        sa.Column("stream_seq", sa.BigInteger(), primary_key=True),
        sa.Column("call_id", sa.String(64), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
    )
    op.create_index("ix_kpi_latencies_call", "kpi_latencies", ["call_id"])
    op.create_table(
        "kpi_positions",
        sa.Column("stream", sa.String(16), primary_key=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    """Drop the analytics tables."""
    op.drop_table("kpi_positions")
    op.drop_index("ix_kpi_latencies_call", table_name="kpi_latencies")
    op.drop_table("kpi_latencies")
    op.drop_index("ix_kpi_calls_started", table_name="kpi_calls")
    op.drop_table("kpi_calls")
