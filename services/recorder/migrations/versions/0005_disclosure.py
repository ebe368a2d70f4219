"""The calls projection shows the disclosure: its status and the audio the carrier confirmed played.

Both columns are projected from ``call.<id>.session.disclosure`` (services/recorder/projections.py); null for
calls of agents without a disclosure and for calls finalized before this revision.

Revision ID: rec0005
Revises: rec0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "rec0005"
down_revision: str | None = "rec0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add ``calls.disclosure_status`` and ``calls.disclosure_played_ms``."""
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("disclosure_status", sa.String(16), nullable=True))
        batch.add_column(sa.Column("disclosure_played_ms", sa.Integer(), nullable=True))


def downgrade() -> None:
    """Drop the two columns."""
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("disclosure_played_ms")
        batch.drop_column("disclosure_status")
