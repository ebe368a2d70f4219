"""Alembic environment for the analytics service: runs on the connection handed over by
:mod:`services.analytics.db`, with its own version table so it can share the recorder's database."""

from __future__ import annotations

from alembic import context

from services.analytics.models import metadata

VERSION_TABLE = "alembic_version_analytics"


def _run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("the analytics migrations run through services.analytics.db.migrate()")
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


_run()
