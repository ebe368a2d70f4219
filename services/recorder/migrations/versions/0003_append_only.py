"""The archive is append-only: the database refuses UPDATE and DELETE on archived events and chain gap rows.

SQLite: ``BEFORE UPDATE`` / ``BEFORE DELETE`` triggers that ``RAISE(ABORT, …)``
(https://www.sqlite.org/lang_createtrigger.html, "The RAISE() function"). PostgreSQL: one trigger function
raising an exception, attached ``BEFORE UPDATE OR DELETE … FOR EACH ROW`` and ``BEFORE TRUNCATE … FOR EACH
STATEMENT`` (https://www.postgresql.org/docs/current/plpgsql-trigger.html). A database owner can still drop a
trigger: on PostgreSQL run the recorder as a role that owns nothing and holds only ``SELECT, INSERT`` on
``events`` and ``chain_gaps`` (docs/security.md, "Database role"), and rely on the signed checkpoints
(services/recorder/checkpoints.py) to detect a rewrite by whoever owns the database.

Revision ID: rec0003
Revises: rec0002
"""

from __future__ import annotations

from alembic import op

revision = "rec0003"
down_revision: str | None = "rec0002"
branch_labels: str | None = None
depends_on: str | None = None

GUARDED = ("events", "chain_gaps")
"""Tables whose rows never change once written."""

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION switchboard_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'switchboard: % on % refused: the archive is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$
"""


def upgrade() -> None:
    """Create the append-only triggers for the current dialect."""
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(_PG_FUNCTION)
        for table in GUARDED:
            op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                       f"FOR EACH ROW EXECUTE FUNCTION switchboard_append_only()")
            op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                       f"FOR EACH STATEMENT EXECUTE FUNCTION switchboard_append_only()")
    else:
        for table in GUARDED:
            for verb in ("UPDATE", "DELETE"):
                op.execute(f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                           f"BEGIN SELECT RAISE(ABORT, 'switchboard: {verb} on {table} refused: the archive is "
                           f"append-only'); END")


def downgrade() -> None:
    """Drop the triggers (and the PostgreSQL function)."""
    dialect = op.get_bind().dialect.name
    for table in GUARDED:
        if dialect == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS switchboard_append_only()")
