"""Alembic environment for the tools tables (run through :meth:`services.tools.db.Database.migrate`).

The connection comes from ``config.attributes["connection"]`` (an async engine's ``run_sync``); offline mode
renders SQL for the URL in ``sqlalchemy.url``. Version table: ``alembic_version_tools``.
"""

from __future__ import annotations

from alembic import context

from services.tools.db import VERSION_TABLE
from services.tools.models import Base

config = context.config


def run_offline() -> None:
    """Emit SQL without a database (``alembic upgrade --sql``)."""
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=Base.metadata,
                      version_table=VERSION_TABLE, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Migrate on the connection handed over by :meth:`Database.migrate`."""
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("tools migrations run through services.tools.db.Database.migrate()")
    context.configure(connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
