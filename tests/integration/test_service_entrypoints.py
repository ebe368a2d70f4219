"""``python -m services.session`` and ``python -m services.gateway``: each runs on uvloop
(``shared.runtime.install_uvloop``), reports ready on its ``started`` log line, serves ``/metrics`` (the session
on ``SWITCHBOARD_SESSION_METRICS_PORT``, the gateway on its API port), and stops cleanly on SIGTERM.

Real processes against a real nats-server: this is the path ``switchboard up`` and the Kubernetes pods take,
which the in-process service tests do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from shared import subjects
from shared.bus import Bus, Envelope
from switchboard import natsserver
from tests.conftest import NatsAuth
from tests.integration.gateway_support import media_frame, start_frame, wait_until

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


async def status_soon(http: httpx.AsyncClient, status: int, *, timeout: float = 10.0) -> bool:
    """Whether ``GET /readyz`` answers ``status`` within ``timeout`` s (asked every 50 ms)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if (await http.get("/readyz")).status_code == status:
                return True
        await asyncio.sleep(0.05)
    return False


async def test_gateway_sigterm_drains_live_calls_then_ends_them_drain_timeout(nats_url: str, tmp_path: Path,
                                                                              nats_auth: NatsAuth, bus: Bus) -> None:
    """Issue 22: SIGTERM of the gateway process no longer ends live calls at once as ``caller_hangup``."""
    port = natsserver.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWITCHBOARD_", "OTEL_"))}
    env.update({"SWITCHBOARD_NATS_URL": nats_url, "SWITCHBOARD_DATA_DIR": str(tmp_path),
                "SWITCHBOARD_NATS_NKEY_SEED": str(nats_auth.seeds["gateway"]), "SWITCHBOARD_INSECURE_DEV": "true",
                "SWITCHBOARD_GATEWAY_PORT": str(port), "SWITCHBOARD_DRAIN_S": "2", "PYTHONUNBUFFERED": "1"})
    ended: list[dict[str, object]] = []
    run_id = secrets.token_hex(6)
    started: list[str] = []

    async def on_event(env: Envelope) -> None:
        if env.subject.endswith(".started") and env.json()["custom_parameters"].get("run_id") == run_id:
            started.append(env.subject.split(".")[1])
        elif env.subject.endswith(".ended") and started and env.subject == f"call.{started[0]}.ended":
            ended.append(env.json())

    sub = await bus.subscribe(subjects.all_call_events(), on_event, dedupe=False)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.gateway", cwd=ROOT, env=env,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert await status_soon(http, 200, timeout=60)
            async with websockets.connect(f"ws://127.0.0.1:{port}/twilio/media") as ws:
                await ws.send(start_frame(run_id))
                await wait_until(lambda: bool(started))
                proc.send_signal(signal.SIGTERM)
                assert await status_soon(http, 503)  # not ready, while the call still runs
                await ws.send(media_frame(b"\x7f" * 160, 1))
                assert proc.returncode is None and not ended
                with pytest.raises(ConnectionClosed):
                    async with asyncio.timeout(30):
                        while True:
                            await ws.recv()
                assert ws.close_code == 1001
        code = await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await sub.unsubscribe()
    assert code == 0
    await wait_until(lambda: bool(ended))
    assert [e["reason"] for e in ended] == ["drain_timeout"]
