"""A tool worker drains on SIGTERM (issue 22 item 6): it stops its nats.micro service (no new requests reach
it), answers the request in flight, and exits 0. A real ``python -m services.tools`` subprocess on a
module-private nats-server and SQLite."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nats.errors
import pytest

from shared.bus import Bus
from switchboard import natsserver
from tests.integration.tools_support import instances, start_workers, stop_workers, wait_for_workers


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = natsserver.start(tmp_path_factory.mktemp("drain-nats"))
    yield server.url
    server.stop()


async def requests_seen(bus: Bus, endpoint: str) -> int:
    """``num_requests`` of ``endpoint`` over the ``$SRV.STATS`` answers (counted when a request starts)."""
    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox)
    await bus.nc.publish("$SRV.STATS.switchboard-tools", b"", reply=inbox)
    total = 0
    try:
        while True:
            msg = await sub.next_msg(timeout=0.5)
            for e in json.loads(msg.data or b"{}").get("endpoints") or []:
                total += int(e.get("name") == endpoint and e.get("num_requests", 0))
    except TimeoutError:
        pass
    finally:
        await sub.unsubscribe()
    return total


async def test_sigterm_answers_the_request_in_flight_and_takes_no_new_one(own_nats: str, tmp_path: Path) -> None:
    procs: list[subprocess.Popen[bytes]] = start_workers(1, own_nats, f"sqlite+aiosqlite:///{tmp_path}/tools.db",
                                                          tmp_path)
    caller = await Bus.connect(own_nats, name="drain-caller", source="session")
    try:
        await wait_for_workers(caller, procs, tmp_path, endpoint="slow_write")
        body = json.dumps({"arguments": {"seconds": 2}, "tool_call_id": "call_drain_1", "deadline_ms": 20_000,
                           "call": {"call_id": "call_drain", "from": "+15551230001", "to": "+15559870000",
                                    "agent": "receptionist"}}).encode()
        reply = asyncio.create_task(caller.nc.request("tools.slow_write", body, timeout=20))
        async with asyncio.timeout(10):
            while not await requests_seen(caller, "slow_write"):
                pass
        procs[0].send_signal(signal.SIGTERM)
        msg = await reply
        assert not (msg.headers or {}).get("Nats-Service-Error-Code"), msg.headers
        assert json.loads(msg.data)["output"] == {"done": True}
        assert await asyncio.to_thread(procs[0].wait, 30) == 0, (tmp_path / "worker0.log").read_text()
        assert not await instances(caller, "slow_write")
        with pytest.raises(nats.errors.NoRespondersError):
            await caller.nc.request("tools.slow_write", body, timeout=5)
    finally:
        await caller.close()
        stop_workers(procs)
