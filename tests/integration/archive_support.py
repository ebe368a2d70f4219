"""Tampering with an archive as its database owner would: the append-only triggers dropped first.

The triggers of revision ``rec0003`` refuse UPDATE/DELETE to the recorder; an attacker who owns the database can
drop them, which is what these tests model before rewriting rows (the signed checkpoints must then detect it).
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

GUARDED = ("events", "chain_gaps")


async def drop_guards(conn: AsyncConnection) -> None:
    """Drop the append-only triggers (the database owner's privilege)."""
    for table in GUARDED:
        if conn.dialect.name == "postgresql":
            await conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}"))
            await conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}"))
        else:
            await conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_update"))
            await conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_delete"))
