"""Alembic migrations of the analytics service (version table ``alembic_version_analytics``)."""
