"""Live calls survive rollouts and crashes (issue 22, "Done when"): the whole system as real processes (the
supervisor of ``switchboard up``) plus a second session instance and a second gateway, and the book-appointment
scenario placed by the caller simulator:

- SIGTERM of the session instance that owns the call mid-call → the peer takes it over and the scenario completes
  with its expected tool call;
- ``kill -9`` of the owning instance with a second instance running → completes;
- SIGTERM of the gateway (``SWITCHBOARD_DRAIN_S=1``) with a second gateway, the simulator following
  ``<Redirect>`` → completes under the same call id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.session.ownership import Owner
from shared import subjects
from shared.bus import Bus, Envelope
from shared.config import load_settings
from switchboard import natsserver
from switchboard.caller import CallResult, run_scenario
from switchboard.scenario import load_scenario
from switchboard.supervisor import Supervisor
from tests.drills_support import terminate
from tests.e2e.conftest import ROOT, SPEED

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

BOOKING = load_scenario(ROOT / "scenarios" / "book-appointment.yaml")


@dataclass
class Rollout:
    """The system, its extra processes and an operator bus."""

    supervisor: Supervisor
    bus: Bus
    gateway_urls: list[str]
    extra: dict[str, asyncio.subprocess.Process]

    def owner_pid(self, owner: Owner) -> int:
        return int(owner.owner.split(":")[1])


async def spawn(supervisor: Supervisor, name: str, log: Path, **env: str) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"services.{name}", cwd=ROOT, env={**supervisor.child_env(name), **env},
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)


async def ready(url: str, timeout: float = 90.0) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(int(timeout / 0.2)):
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url + "/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise AssertionError(f"{url} not ready")


@pytest.fixture
async def rollout(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rollout]:
    # one stack per test: each drill books the demo's slot, and a name misheard after a reconnect would find it
    # taken by the previous drill's booking under another name
    data = tmp_path_factory.mktemp("rollout-data")
    ports = {name: natsserver.free_port() for name in ("nats", "gateway", "gateway2", "recorder", "analytics",
                                                         "localmodel")}
    settings = load_settings(data_dir=data, nats_url=None, nats_port=ports["nats"], gateway_port=ports["gateway"],
                             recorder_port=ports["recorder"], analytics_port=ports["analytics"],
                             localmodel_port=ports["localmodel"], agent=ROOT / "agents" / "receptionist.yaml",
                             realtime_url=None, openai_api_key=None)
    supervisor = Supervisor(settings, extra_env={"SWITCHBOARD_LOCALMODEL_PACING": "fast", "SWITCHBOARD_DRAIN_S": "1"})
    extra: dict[str, asyncio.subprocess.Process] = {}
    bus: Bus | None = None
    try:
        await supervisor.start(ready_timeout=120)
        extra["session2"] = await spawn(supervisor, "session", data / "session2.log")
        extra["gateway2"] = await spawn(supervisor, "gateway", data / "gateway2.log",
                                        SWITCHBOARD_GATEWAY_PORT=str(ports["gateway2"]))
        urls = [f"http://127.0.0.1:{ports['gateway']}", f"http://127.0.0.1:{ports['gateway2']}"]
        await ready(urls[1])
        bus = await Bus.connect(supervisor.nats_url, name="rollout-test", source="test",
                                options=supervisor.operator_options())
        yield Rollout(supervisor, bus, urls, extra)
    finally:
        if bus is not None:
            await bus.close()
        for proc in extra.values():
            await terminate(proc)
        await supervisor.stop()


class Watch:
    """Counts ``response.done`` per call (to act mid-call) from a core subscription."""

    def __init__(self) -> None:
        self.done: dict[str, int] = {}
        self.sub: object = None

    async def start(self, bus: Bus) -> Watch:
        async def on_done(env: Envelope) -> None:
            if env.call_id:
                self.done[env.call_id] = self.done.get(env.call_id, 0) + 1

        self.sub = await bus.subscribe(subjects.rt_any_call("server", "response.done"), on_done)
        return self

    async def call_with(self, responses: int, timeout: float = 120.0) -> str:
        for _ in range(int(timeout / 0.05)):
            for call_id, n in self.done.items():
                if n >= responses:
                    return call_id
            await asyncio.sleep(0.05)
        raise AssertionError(f"no call reached {responses} responses")


async def owner(bus: Bus, call_id: str) -> Owner:
    kv = await bus.js.key_value(subjects.CALL_OWNERS_BUCKET)
    entry = await kv.get(call_id)
    found = Owner.decode(entry.value)
    assert found is not None
    return found


async def place_and_disturb(r: Rollout, disturb: Callable[[str], object], *, gateways: str | None = None,
                            speed: float = SPEED) -> CallResult:
    watch = await Watch().start(r.bus)
    lines: list[str] = []
    call = asyncio.create_task(run_scenario(BOOKING, gateway_url=gateways or r.gateway_urls[0],
                                            nats_url=r.supervisor.nats_url, speed=speed, out=lines.append))
    call_id = await watch.call_with(2)  # the greeting and the first reply are done: mid-call
    result = disturb(call_id)
    if asyncio.iscoroutine(result):
        await result
    outcome = await call
    assert outcome.call_id == call_id
    assert outcome.ok, f"{outcome.failures}\n" + "\n".join(lines)
    assert any(t["name"] == "book_appointment" for t in outcome.tool_calls)
    return outcome


async def test_session_sigterm_mid_call_hands_over_and_the_scenario_completes(rollout: Rollout) -> None:
    before: dict[str, Owner] = {}

    async def sigterm_owner(call_id: str) -> None:
        before[call_id] = await owner(rollout.bus, call_id)
        os.kill(rollout.owner_pid(before[call_id]), signal.SIGTERM)

    result = await place_and_disturb(rollout, sigterm_owner)
    assert result.call_id is not None
    assert before[result.call_id].epoch == 1


async def test_session_kill9_with_a_second_instance_running_completes(rollout: Rollout) -> None:
    killed: list[int] = []

    async def kill_owner(call_id: str) -> None:
        pid = rollout.owner_pid(await owner(rollout.bus, call_id))
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    # real time: the gateway keeps 5 s of caller audio for the takeover's replay, which at 3× speed is
    # shorter than the takeover gap
    result = await place_and_disturb(rollout, kill_owner, speed=1.0)
    assert killed and result.call_id is not None


async def test_gateway_sigterm_with_a_second_gateway_completes_under_the_same_call_id(rollout: Rollout) -> None:
    sup = rollout.supervisor

    def sigterm_gateway(call_id: str) -> None:
        pid = sup.services["gateway"].pid
        assert pid is not None
        os.kill(pid, signal.SIGTERM)

    result = await place_and_disturb(rollout, sigterm_gateway, gateways=",".join(rollout.gateway_urls))
    assert result.call_id is not None
    events = [env.subject async for env in rollout.bus.replay(subjects.call_all(result.call_id),
                                                              subjects.CALLS_STREAM)]
    assert sum(s.endswith(".started") for s in events) == 1
    assert any(s.endswith(".carrier.detached") for s in events)
    assert any(s.endswith(".carrier.resumed") for s in events)
