"""Alembic migrations of the recorder's tables (version table ``alembic_version_recorder``)."""
