"""The analytics service's tables (SQLAlchemy Core): per-call KPI rows, first-response latencies and the
committed stream positions (the idempotency key). Own Alembic version table ``alembic_version_analytics``.

Times: ``*_ns`` unix nanoseconds; ``day`` the UTC date of the call's start (``YYYY-MM-DD``).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text

__all__ = ["kpi_calls", "kpi_latencies", "kpi_positions", "metadata"]

metadata = MetaData()

kpi_calls = Table(
    "kpi_calls", metadata,
    Column("call_id", String(64), primary_key=True),
    Column("agent", String(255), nullable=True),
    Column("agent_version", String(32), nullable=True),
    Column("carrier", String(32), nullable=True),
    Column("from_number", String(64), nullable=True),
    Column("started_ns", BigInteger, nullable=True),
    Column("day", String(10), nullable=True),
    Column("ended_ns", BigInteger, nullable=True),
    Column("end_reason", String(64), nullable=True),
    Column("model", String(128), nullable=True),
    Column("billed", Boolean, nullable=False),
    Column("responses", Integer, nullable=False),
    Column("interruptions", Integer, nullable=False),
    Column("interruptions_stopped", Integer, nullable=False),
    Column("tool_calls", Integer, nullable=False),
    Column("tool_errors", Integer, nullable=False),
    Column("tasks_ok", Integer, nullable=False),
    Column("transfer_called", Boolean, nullable=False),
    Column("escalated", Boolean, nullable=False),
    Column("dropped", Boolean, nullable=False),
    Column("task_completed", Boolean, nullable=False),
    Column("cost_usd", Float, nullable=True, doc="estimate; None = unpriced model"),
    Column("usage", Text, nullable=False, doc="summed response.done usage, JSON"),
    Column("state", Text, nullable=False, doc="reducer state between events, JSON"),
    Index("ix_kpi_calls_started", "started_ns"),
)

kpi_latencies = Table(
    "kpi_latencies", metadata,
    Column("stream_seq", BigInteger, primary_key=True, doc="RT sequence of the audio delta that ended the wait"),
    Column("call_id", String(64), nullable=False),
    Column("latency_ms", Float, nullable=False, doc="speech_stopped -> first output audio delta"),
    Index("ix_kpi_latencies_call", "call_id"),
)

kpi_positions = Table(
    "kpi_positions", metadata,
    Column("stream", String(16), primary_key=True),
    Column("last_seq", BigInteger, nullable=False, doc="highest stream sequence applied, same transaction"),
)
