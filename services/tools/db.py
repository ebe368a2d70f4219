"""The tools database: SQLAlchemy 2 async engine and sessions, and Alembic migrations at start.

URL: ``settings.effective_database_url`` — SQLite (``sqlite+aiosqlite://``, the default, in the data dir) or
PostgreSQL (``postgresql+asyncpg://``).

SQLite notes: WAL journal with ``synchronous=NORMAL`` (a commit survives a crash of the process, as the
idempotency store needs; only a power loss may drop the last commits), ``busy_timeout`` 30 s and every
transaction opened with ``BEGIN IMMEDIATE`` (the write lock is taken at BEGIN), so concurrent writers — other
workers, other processes — queue instead of failing with "database is locked" when a read transaction later
writes (SQLAlchemy docs, "Serializable isolation / Savepoints / Transactional DDL" for pysqlite/aiosqlite).

PostgreSQL notes: migrations run under ``pg_advisory_xact_lock`` so workers starting together migrate once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

__all__ = ["MIGRATIONS", "VERSION_TABLE", "Database"]


MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version_tools"
_LOCK_KEY = 0x5B_70_01  # pg_advisory_xact_lock key for tools migrations


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (see _sqlite_begin)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """An async engine plus session factory for one database URL.

    Raises:
        sqlalchemy.exc.ArgumentError: the URL cannot be parsed or names an unknown driver.
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        parsed = make_url(url)
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: AsyncEngine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})
            event.listen(self.engine.sync_engine, "connect", _sqlite_connect)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        else:
            self.engine = create_async_engine(url, echo=echo, pool_pre_ping=True, pool_size=5, max_overflow=10)
        self.sessions: async_sessionmaker[AsyncSession] = async_sessionmaker(self.engine, expire_on_commit=False)

    async def migrate(self, revision: str = "head") -> None:
        """Upgrade the tools tables to ``revision`` (Alembic ``upgrade`` inside one transaction).

        Safe to call from many workers at once (PostgreSQL advisory lock; SQLite ``BEGIN IMMEDIATE``).
        """
        async with self.engine.begin() as conn:
            if not self.is_sqlite:
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            await conn.run_sync(_upgrade, revision)

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic :class:`Config` for the tools migrations (no ini file), bound to ``connection`` if given."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("version_table", VERSION_TABLE)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection, revision: str) -> None:
    command.upgrade(alembic_config(connection), revision)
