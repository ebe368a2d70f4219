"""Receptionist tables: customers, appointments (one booking per slot), tool_results (idempotency).

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create customers, appointments and tool_results."""
    op.create_table(
        "customers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("phone", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_customers"),
        sa.UniqueConstraint("phone", name="uq_customers_phone"),
    )
    op.create_table(
        "appointments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("slot_date", sa.Date(), nullable=False),
        sa.Column("slot_time", sa.Time(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("call_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_appointments"),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], name="fk_appointments_customer_id_customers"),
    )
    op.create_index("ix_appointments_customer_id", "appointments", ["customer_id"])
    op.create_index("uq_appointments_booked_slot", "appointments", ["slot_date", "slot_time"], unique=True,
                    sqlite_where=sa.text("status = 'booked'"), postgresql_where=sa.text("status = 'booked'"))
    op.create_table(
        "tool_results",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("tool", sa.String(64), nullable=False),
        sa.Column("tool_call_id", sa.String(128), nullable=False),
        sa.Column("call_id", sa.String(64), nullable=True),
        sa.Column("reply", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tool_results"),
        sa.UniqueConstraint("tool", "tool_call_id", name="uq_tool_results_tool_call"),
    )


def downgrade() -> None:
    """Drop the tables created by :func:`upgrade`."""
    op.drop_table("tool_results")
    op.drop_index("uq_appointments_booked_slot", table_name="appointments")
    op.drop_index("ix_appointments_customer_id", table_name="appointments")
    op.drop_table("appointments")
    op.drop_table("customers")
