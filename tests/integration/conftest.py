"""Fixtures shared by the integration tests (a module defining a fixture of the same name uses its own)."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shared.bus import Bus
from shared.config import load_settings
from switchboard import natsserver
from tests.integration.carrier_support import FakeCarrierApi, serving
from tests.integration.gateway_support import (  # noqa: F401 - the gateway tests' fixtures, registered once
    audio_tap_fixture,
    gw_fixture,
    peer_bus_fixture,
    peer_fixture,
    recorder_fixture,
)


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[natsserver.EmbeddedNats]:
    """A nats-server of this test's own (tests stop and freeze it); resumed and stopped afterwards."""
    server = natsserver.start(tmp_path / "nats")
    yield server
    if server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeCarrierApi]:
    """A local fake of the carriers' REST APIs (:mod:`tests.integration.carrier_support`); requests to
    ``+15550009999`` are refused as the vendors refuse an unknown call."""
    async with serving(FakeCarrierApi(fail_targets={"+15550009999"})) as fake:
        yield fake


@pytest.fixture
async def buses(nats_url: str) -> AsyncIterator[tuple[Bus, Bus]]:
    """A gateway-side and a session-side bus connection, with the streams in place (1 h max age)."""
    gateway = await Bus.connect(nats_url, name="test-gateway", source="gateway")
    session = await Bus.connect(nats_url, name="test-session", source="session")
    await gateway.ensure_streams(load_settings(js_max_age=3600))
    yield gateway, session
    await gateway.close()
    await session.close()


async def _connected(nats_url: str, name: str, source: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_url, name=name, source=source)
    await b.ensure_streams(load_settings(js_max_age=600))
    yield b
    await b.close()


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    """A session-side bus connection, with the streams in place (10 min max age)."""
    async for b in _connected(nats_url, "test", "session"):
        yield b


@pytest.fixture
async def gateway_bus(nats_url: str) -> AsyncIterator[Bus]:
    """A gateway-side bus connection (``source="gateway"``), with the streams in place (10 min max age)."""
    async for b in _connected(nats_url, "test-gateway", "gateway"):
        yield b
