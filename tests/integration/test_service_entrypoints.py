"""``python -m services.session`` and ``python -m services.gateway``: each runs on uvloop
(``shared.runtime.install_uvloop``), reports ready on its ``started`` log line, serves ``/metrics`` (the session
on ``SWITCHBOARD_SESSION_METRICS_PORT``, the gateway on its API port), and stops cleanly on SIGTERM.

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

import httpx
import pytest

from switchboard import natsserver
from tests.conftest import NatsAuth

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("service", ["session", "gateway"])
async def test_service_runs_on_uvloop_and_stops_on_sigterm(service: str, nats_url: str, tmp_path: Path,
                                                            nats_auth: NatsAuth) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWITCHBOARD_", "OTEL_"))}
    metrics_port = natsserver.free_port()
    env.update({"SWITCHBOARD_NATS_URL": nats_url, "SWITCHBOARD_DATA_DIR": str(tmp_path),
                "SWITCHBOARD_NATS_NKEY_SEED": str(nats_auth.seeds[service]),
                "SWITCHBOARD_GATEWAY_PORT": str(metrics_port if service == "gateway" else natsserver.free_port()),
                "SWITCHBOARD_SESSION_METRICS_PORT": str(metrics_port if service == "session" else 0),
                "PYTHONUNBUFFERED": "1"})
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
        async with httpx.AsyncClient(timeout=10) as client, asyncio.timeout(30):
            while True:  # the gateway's HTTP server may start listening just after its started line
                try:
                    scrape = await client.get(f"http://127.0.0.1:{metrics_port}/metrics")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.1)
        assert scrape.status_code == 200 and "# TYPE " in scrape.text, scrape.text[:500]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), 30)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0, "".join(seen) + rest.decode()
