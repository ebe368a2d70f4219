"""Fixtures of the session integration tests that run a real session against the local model: ``model_url``
(one local model per module, fast pacing) and ``buses`` (session, gateway and tools connections to the test's
NATS, with the streams created). Import ``model_url_fixture`` / ``buses_fixture`` into a test module to use them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shared.bus import Bus
from shared.config import load_settings
from tests.integration.session_support import start_localmodel

__all__ = ["buses_fixture", "model_url_fixture"]


@pytest.fixture(scope="module", name="model_url")
async def model_url_fixture() -> AsyncIterator[str]:
    """The local model's WebSocket URL (``ws://127.0.0.1:<port>/v1/realtime``), fast pacing."""
    async with start_localmodel(pacing="fast") as url:
        yield url


@pytest.fixture(name="buses")
async def buses_fixture(nats_url: str) -> AsyncIterator[tuple[Bus, Bus, Bus]]:
    """``(session, gateway, tools)`` buses on the test's NATS, streams ensured (max age 600 s)."""
    session_bus = await Bus.connect(nats_url, name="test-session", source="session")
    gateway_bus = await Bus.connect(nats_url, name="test-gateway", source="gateway")
    tools_bus = await Bus.connect(nats_url, name="test-tools", source="tools")
    await session_bus.ensure_streams(load_settings(js_max_age=600))
    yield session_bus, gateway_bus, tools_bus
    for bus in (gateway_bus, tools_bus, session_bus):
        await bus.close()
