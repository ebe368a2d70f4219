"""The whole system as separate processes, started once for the e2e suite.

The supervisor of ``switchboard up`` runs embedded NATS and every service (local model, tools, recorder,
session, gateway) on free ports with a private data dir. The local model sends audio as fast as it is
synthesised (``SWITCHBOARD_LOCALMODEL_PACING=fast``) and the caller simulator runs at :data:`SPEED` × real
time; VAD and recognition work on the audio timeline, so the calls are the same as at real time, only shorter.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.config import Settings, load_settings
from switchboard import natsserver
from switchboard.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[2]
SPEED = 3.0
"""Caller simulator pace (× real time) in the e2e suite."""


@dataclass
class System:
    """A running system: its settings (ports, data dir), NATS URL and the environment for CLI commands."""

    settings: Settings
    nats_url: str
    env: dict[str, str]

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.gateway_port}"

    @property
    def recorder_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.recorder_port}"

    @property
    def analytics_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.analytics_port}"


@contextlib.asynccontextmanager
async def running_system(data: Path, extra_env: dict[str, str] | None = None) -> AsyncIterator[System]:
    """``switchboard up``'s supervisor on free ports with data dir ``data``; ``extra_env`` goes to every child
    (``{gateway_url}`` in a value becomes the gateway's base URL, e.g. for ``SWITCHBOARD_PUBLIC_URL``)."""
    ports = {name: natsserver.free_port() for name in ("nats", "gateway", "recorder", "analytics", "localmodel",
                                                "session_metrics", "tools_metrics")}
    gateway_url = f"http://127.0.0.1:{ports['gateway']}"
    extra_env = {key: value.replace("{gateway_url}", gateway_url) for key, value in (extra_env or {}).items()}
    settings = load_settings(data_dir=data, nats_url=None, nats_port=ports["nats"], gateway_port=ports["gateway"],
                             recorder_port=ports["recorder"], analytics_port=ports["analytics"],
                             localmodel_port=ports["localmodel"], session_metrics_port=ports["session_metrics"],
                             tools_metrics_port=ports["tools_metrics"],
                             agent=ROOT / "agents" / "receptionist.yaml", realtime_url=None, openai_api_key=None)
    supervisor = Supervisor(settings, extra_env={"SWITCHBOARD_LOCALMODEL_PACING": "fast", **extra_env})
    try:
        await supervisor.start(ready_timeout=120)
    except RuntimeError:
        await supervisor.stop()
        raise
    env = {**os.environ, **supervisor.child_env(), "SWITCHBOARD_NATS_PORT": str(ports["nats"])}
    try:
        yield System(settings, supervisor.nats_url, env)
    finally:
        await supervisor.stop()


@pytest.fixture(scope="session")
async def system(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
    async with running_system(tmp_path_factory.mktemp("e2e-data")) as running:
        yield running
