"""Database engine and migrations for the recorder (SQLAlchemy 2 async; SQLite and PostgreSQL).

- SQLite (``sqlite+aiosqlite://``): WAL journal (readers never block the writer), ``synchronous=NORMAL``,
  a 10 s busy timeout; the parent directory is created.
- PostgreSQL (``postgresql+asyncpg://``): migrations run under a transaction-scoped advisory lock so that two
  recorder processes starting together do not race.

Alembic keeps the recorder's schema version in ``alembic_version_recorder`` (the tools worker has its own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["MIGRATIONS_DIR", "create_engine", "migrate", "open_database"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_ADVISORY_LOCK = 0x5EC0DE7  # arbitrary constant naming "recorder migrations"


def create_engine(url: str) -> AsyncEngine:
    """An async engine for ``url`` with the recorder's connection settings (see module docstring).

    Raises:
        sqlalchemy.exc.ArgumentError: the URL is malformed or its driver is not installed.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 10})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.close()

        return engine
    return create_async_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True)


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK})
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the recorder's tables to the newest Alembic revision (idempotent)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def open_database(url: str) -> AsyncEngine:
    """:func:`create_engine` then :func:`migrate`; the caller disposes the engine."""
    engine = create_engine(url)
    try:
        await migrate(engine)
    except BaseException:
        await engine.dispose()
        raise
    return engine
