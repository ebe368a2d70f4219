"""Gap records: stream sequences the recorder found gone from the stream (stream-level and per call chain).

Revision ID: rec0002
Revises: rec0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "rec0002"
down_revision: str | None = "rec0001"
branch_labels: str | None = None
depends_on: str | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create ``chain_gaps``."""
    op.create_table(
        "chain_gaps",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("stream", sa.String(16), nullable=False),
        sa.Column("call_id", sa.String(64), nullable=True),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(255), nullable=False),
        sa.Column("detected_ns", sa.BigInteger(), nullable=False),
        sa.Column("chain_index", sa.Integer(), nullable=True),
        sa.Column("hash", sa.String(64), nullable=True),
    )
    op.create_index("ix_chain_gaps_call", "chain_gaps", ["call_id", "stream"])


def downgrade() -> None:
    """Drop ``chain_gaps``."""
    op.drop_index("ix_chain_gaps_call", table_name="chain_gaps")
    op.drop_table("chain_gaps")
