"""``python -m services.session`` and ``python -m services.gateway``: each runs on uvloop
(``shared.runtime.install_uvloop``), reports ready on its ``started`` log line, and stops cleanly on SIGTERM.

Real processes against a real nats-server: this is the path ``switchboard up`` and the Kubernetes pods take,
which the in-process service tests do not.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from switchboard import natsserver
from tests.conftest import NatsAuth

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("service", ["session", "gateway"])
async def test_service_runs_on_uvloop_and_stops_on_sigterm(service: str, nats_url: str, tmp_path: Path,
                                                            nats_auth: NatsAuth) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWITCHBOARD_", "OTEL_"))}
    env.update({"SWITCHBOARD_NATS_URL": nats_url, "SWITCHBOARD_DATA_DIR": str(tmp_path),
                "SWITCHBOARD_NATS_NKEY_SEED": str(nats_auth.seeds[service]),
                "SWITCHBOARD_GATEWAY_PORT": str(natsserver.free_port()), "PYTHONUNBUFFERED": "1"})
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", f"services.{service}", cwd=ROOT, env=env,
                                                stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    seen: list[str] = []
    started = ""
    try:
        async with asyncio.timeout(60):
            while not started:
                line = (await proc.stderr.readline()).decode()
                if not line:
                    break
                seen.append(line)
                message = json.loads(line).get("msg", "") if line.startswith("{") else line
                if f"service {service} started" in message:
                    started = message
        assert started, "".join(seen)
        assert "on uvloop's event loop" in started, started
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), 30)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0, "".join(seen) + rest.decode()
