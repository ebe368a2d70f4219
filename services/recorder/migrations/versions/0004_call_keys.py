"""Crypto-shredding: per-call data keys in their own table, and the erasure columns of ``calls``.

``call_keys`` holds each call's data key wrapped by the key-encryption key (services/recorder/crypto.py). It is
deliberately not append-only: erasing a call deletes its row (``events`` and ``chain_gaps`` stay append-only;
their sealed content becomes unreadable). ``calls.erased_ns`` / ``erased_by`` / ``erase_reason`` record the
erasure (the audited record is the ``call.<id>.erased`` event in the call's CALLS chain).

Revision ID: rec0004
Revises: rec0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "rec0004"
down_revision: str | None = "rec0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create ``call_keys``; add the erasure columns to ``calls``."""
    op.create_table(
        "call_keys",
        sa.Column("call_id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_ns", sa.BigInteger(), nullable=False),
    )
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("erased_ns", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("erased_by", sa.String(128), nullable=True))
        batch.add_column(sa.Column("erase_reason", sa.String(32), nullable=True))


def downgrade() -> None:
    """Drop ``call_keys`` and the erasure columns."""
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("erase_reason")
        batch.drop_column("erased_by")
        batch.drop_column("erased_ns")
    op.drop_table("call_keys")
