"""Metrics in seconds on ``/metrics`` for the services without an HTTP API (:mod:`shared.metrics_http`).

The histograms of :mod:`shared.metrics` are recorded in seconds and exported as ``*_seconds`` (OTel and
Prometheus base units); a tool worker process serves its own on ``SWITCHBOARD_TOOLS_METRICS_PORT``, and a port
already taken (a second worker on the host) costs that process its ``/metrics`` only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest

from shared import metrics
from shared.bus import Bus
from shared.errors import ServiceCallError
from shared.metrics_http import serve_metrics
from shared.telemetry import setup_telemetry
from switchboard import natsserver
from tests.conftest import NatsAuth

ROOT = Path(__file__).resolve().parents[2]


def _sample(text: str, name: str, *labels: str) -> float:
    """The value of the first exported sample ``name{…}`` whose labels contain every one of ``labels``."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(label in line for label in labels):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not exported:\n{text[:2000]}")


async def test_histograms_are_exported_in_seconds() -> None:
    setup_telemetry("switchboard-test")
    metrics.TOOL_ROUND_TRIP.record(0.2, {"gen_ai.tool.name": "probe_seconds"})
    metrics.BUS_HOP.record(0.0003, {"messaging.destination.template": "probe.seconds"})
    port = natsserver.free_port()
    server = serve_metrics(port, "127.0.0.1", variable="SWITCHBOARD_TOOLS_METRICS_PORT")
    assert server is not None
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        server.close()
    assert "milliseconds" not in text
    assert _sample(text, "switchboard_tool_duration_seconds_sum", 'gen_ai_tool_name="probe_seconds"') == 0.2
    # the 0.2 s sample is in the 0.25 s bucket and not in the 0.1 s one: bounds are seconds
    assert _sample(text, "switchboard_tool_duration_seconds_bucket", "probe_seconds", 'le="0.25"') == 1
    assert _sample(text, "switchboard_tool_duration_seconds_bucket", "probe_seconds", 'le="0.1"') == 0
    assert _sample(text, "switchboard_bus_hop_duration_seconds_bucket", "probe.seconds", 'le="0.0005"') == 1
    assert _sample(text, "switchboard_bus_hop_duration_seconds_bucket", "probe.seconds", 'le="0.00025"') == 0
    with pytest.raises(OSError):  # closed: the port is free again, nothing answers
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


async def test_port_zero_is_off_and_a_taken_port_only_costs_the_endpoint(caplog: pytest.LogCaptureFixture) -> None:
    assert serve_metrics(0, "127.0.0.1", variable="SWITCHBOARD_SESSION_METRICS_PORT") is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="shared.metrics_http"):
            assert serve_metrics(port, "127.0.0.1", variable="SWITCHBOARD_TOOLS_METRICS_PORT") is None
    assert any("SWITCHBOARD_TOOLS_METRICS_PORT" in r.getMessage() and str(port) in r.getMessage()
               for r in caplog.records)


async def test_a_tool_worker_process_serves_its_metrics(nats_url: str, bus: Bus, tmp_path: Path,
                                                        nats_auth: NatsAuth) -> None:
    port = natsserver.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWITCHBOARD_", "OTEL_"))}
    env.update({"SWITCHBOARD_NATS_URL": nats_url, "SWITCHBOARD_DATA_DIR": str(tmp_path),
                "SWITCHBOARD_NATS_NKEY_SEED": str(nats_auth.seeds["tools"]), "SWITCHBOARD_TOOLS_SEED": "0",
                "SWITCHBOARD_TOOLS_METRICS_PORT": str(port), "PYTHONPATH": str(ROOT)})
    log = (tmp_path / "tools.log").open("wb")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.tools", cwd=ROOT, env=env,
                                                stdout=log, stderr=log)
    log.close()
    try:
        async with asyncio.timeout(90):
            while True:  # until the worker's endpoint answers (503 "no responders" before it is registered)
                try:
                    await bus.request("tools.check_availability", {"arguments": {"date": "tomorrow"}}, timeout=5)
                except ServiceCallError as exc:
                    if exc.code == 400:  # the worker validated the arguments: it answered
                        break
                    await asyncio.sleep(0.2)
                    continue
                raise AssertionError("an invalid date was accepted")
            async with httpx.AsyncClient(timeout=10) as client:
                text = ""
                while "switchboard_bus_hop_duration_seconds_count" not in text:
                    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                    await asyncio.sleep(0.2)
        assert _sample(text, "switchboard_bus_hop_duration_seconds_count", "tools.") >= 1
        assert "milliseconds" not in text
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0, (tmp_path / "tools.log").read_text()[-3000:]
