"""Database of the analytics service: the recorder's engine options (SQLite WAL / PostgreSQL pool,
:func:`services.recorder.db.create_engine`) and its own Alembic migrations (``alembic_version_analytics``),
so it can share ``SWITCHBOARD_DATABASE_URL`` with the recorder and the tools worker or use its own.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from services.recorder.db import create_engine

__all__ = ["MIGRATIONS_DIR", "migrate", "open_database"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_ADVISORY_LOCK = 0x4B5049  # arbitrary constant naming "analytics migrations" (PostgreSQL)


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK})
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the analytics tables to the newest revision (idempotent)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def open_database(url: str) -> AsyncEngine:
    """An engine for ``url`` with the analytics tables migrated; the caller disposes it.

    Raises:
        sqlalchemy.exc.ArgumentError: malformed URL or missing driver.
    """
    engine = create_engine(url)
    try:
        await migrate(engine)
    except BaseException:
        await engine.dispose()
        raise
    return engine
