"""Alembic revisions of the recorder."""
