"""The session/tools exec probe (infra/docker/nats-connected.sh) against a real nats-server connection."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import nats

from shared.config import load_settings

PROBE = Path(__file__).resolve().parents[2] / "infra" / "docker" / "nats-connected.sh"


async def _probe(url: str) -> int:
    env = {**os.environ, "SWITCHBOARD_NATS_URL": url}
    proc = await asyncio.create_subprocess_exec("sh", str(PROBE), env=env)
    return await asyncio.wait_for(proc.wait(), 10)


async def test_probe_passes_only_while_this_process_holds_a_nats_connection(nats_url: str) -> None:
    # the fixture's nats-server listens on a free port nobody else connects to
    assert await _probe(nats_url) == 1
    nc = await nats.connect(nats_url, **load_settings().nats_options())
    try:
        assert await _probe(nats_url) == 0
        # several URLs: passes if any of them is connected
        assert await _probe(f"nats://127.0.0.1:1,{nats_url}") == 0
    finally:
        await nc.close()
    for _ in range(50):  # the closed socket leaves ESTABLISHED promptly; generous bound
        if await _probe(nats_url) == 1:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("probe still passes after the connection closed")
