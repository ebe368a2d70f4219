"""``switchboard up`` supervises the embedded nats-server like every other child (issue 20, item 3).

kill -9 of the nats-server: the supervisor restarts it on the same port with the same store dir (the stream
and its message are still there), a client reconnects, and ``up.json`` shows the new pid with restarts=1 and
status ready; the restart backoff doubles while it keeps dying and starts over after a stretch of health.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from nats.js.api import StreamConfig

from shared.bus import Bus
from shared.config import load_settings
from switchboard import natsserver
from switchboard.supervisor import Supervisor


def _nats_row(data_dir: Path) -> dict[str, Any]:
    rows = json.loads((data_dir / "up.json").read_text())["services"]
    return next(r for r in rows if r["name"] == "nats")


async def _until(predicate: Any, what: str, rounds: int = 600) -> None:
    """Wait (bounded, 0.1 s steps) until ``predicate()``; not a timing assertion, a liveness bound."""
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


async def test_killed_nats_server_is_restarted_with_its_data(tmp_path: Path, unique: str) -> None:
    data_dir = tmp_path / "data"
    settings = load_settings(data_dir=data_dir, nats_port=natsserver.free_port(), nats_url=None)
    events: list[str] = []
    supervisor = Supervisor(settings, only={"nats"}, on_event=events.append, healthy_reset_s=6.0,
                            probe_interval_s=0.2)
    await supervisor.start()
    bus: Bus | None = None
    try:
        supervisor.write_state()
        first = _nats_row(data_dir)
        assert first["status"] == "ready" and first["restarts"] == "0" and first["pid"] != "-"
        bus = await Bus.connect(supervisor.nats_url, name="test-sup", source="tools")
        stream, subject = f"SUP{unique}", f"sup.{unique}"
        await bus.js.add_stream(StreamConfig(name=stream, subjects=[subject]))
        await bus.js.publish(subject, b"kept")

        os.kill(int(first["pid"]), signal.SIGKILL)
        await _until(lambda: _nats_row(data_dir)["restarts"] == "1" and _nats_row(data_dir)["status"] == "ready",
                     "up.json shows the restarted nats-server ready")
        second = _nats_row(data_dir)
        assert second["pid"] != first["pid"] and int(second["pid"]) == supervisor.nats_state.pid
        await _until(lambda: bus is not None and bus.nc.is_connected, "the client reconnected")
        kept = await bus.js.get_msg(stream, 1)
        assert kept.data == b"kept"  # same store dir: JetStream data survived

        # backoff: a quick second death doubles it; after 6 s (healthy_reset_s) of health it starts over
        os.kill(int(second["pid"]), signal.SIGKILL)
        await _until(lambda: _nats_row(data_dir)["restarts"] == "2" and supervisor.nats_state.ready,
                     "second restart")
        await _until(lambda: supervisor.nats_state.healthy_for() > 6.5, "6.5 s of health", rounds=1200)
        third = _nats_row(data_dir)
        os.kill(int(third["pid"]), signal.SIGKILL)
        await _until(lambda: _nats_row(data_dir)["restarts"] == "3", "third restart")
        delays = [e.split("restarting in ")[1] for e in events if "restarting in" in e]
        assert delays == ["0.5s", "1.0s", "0.5s"], events
    finally:
        if bus is not None:
            await bus.close()
        await supervisor.stop()
    assert supervisor.nats is not None and supervisor.nats.process.poll() is not None
    assert not natsserver._port_open("127.0.0.1", settings.nats_port)
