"""Alembic environment for the recorder: runs on the connection handed over by :mod:`services.recorder.db`.

The recorder keeps its own version table (``alembic_version_recorder``) so that the tools worker can share
the database with its own tables and its own version table.
"""

from __future__ import annotations

from alembic import context

from services.recorder.models import metadata

VERSION_TABLE = "alembic_version_recorder"


def _run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("the recorder's migrations run through services.recorder.db.migrate()")
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


_run()
