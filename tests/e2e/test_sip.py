"""An OpenAI SIP call through the real processes, offline: the local model plays OpenAI and the SIP trunk.

The caller simulator dials the local model's SIP leg (``--carrier openai-sip``); the local model POSTs a signed
``realtime.call.incoming`` to the gateway's ``/openai/webhook`` (verified with the same
``SWITCHBOARD_OPENAI_WEBHOOK_SECRET``), the gateway publishes ``call.started`` (carrier ``openai_sip``), the session
accepts the call through ``/v1/realtime/calls/{id}/accept`` and serves it over the sideband WebSocket. The
book-appointment scenario's expectations hold (the booking tool call with its arguments, the agent ended the
call), the gateway carried no audio, and the recorder archived the call's events with intact hash chains.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from shared import subjects
from shared.bus import Bus
from switchboard import natsserver
from switchboard.caller import run_scenario
from switchboard.caller.sip import CARRIER, sip_leg_url
from switchboard.scenario import load_scenario, read_call_log
from tests.e2e.conftest import ROOT, SPEED, System, running_system

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@pytest.fixture(scope="module")
async def sip_system(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[System, int]]:
    port = natsserver.free_port()
    env = {"SWITCHBOARD_LOCALMODEL_SIP_PORT": str(port), "SWITCHBOARD_OPENAI_WEBHOOK_SECRET": SECRET}
    async with running_system(tmp_path_factory.mktemp("e2e-sip"), env) as running:
        yield running, port


async def ended_call(system: System, call_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The recorder's record of ``call_id`` once ended and projected (a SIP call has no audio to render)."""
    deadline = time.monotonic() + timeout
    call: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=system.recorder_url, timeout=10) as client:
        while time.monotonic() < deadline:
            response = await client.get(f"/calls/{call_id}")
            if response.status_code == 200:
                call = response.json()
                if call.get("status") == "ended" and call.get("projected_ns"):
                    return call
            await asyncio.sleep(0.5)
    return call


async def test_sip_call_books_an_appointment(sip_system: tuple[System, int]) -> None:
    system, sip_port = sip_system
    lines: list[str] = []
    result = await run_scenario(load_scenario(ROOT / "scenarios" / "book-appointment.yaml"),
                                gateway_url=system.gateway_url, nats_url=system.nats_url, speed=SPEED,
                                out=lines.append, carrier=CARRIER, sip_url=sip_leg_url(sip_port))
    assert result.call_id, f"call not placed: {result.failures}"
    assert result.ok, f"{result.failures}\n" + "\n".join(lines)
    assert [c["name"] for c in result.tool_calls].count("book_appointment") == 1

    bus = await Bus.connect(system.nats_url, name="e2e-sip", source="test")
    try:
        log = await read_call_log(bus, result.call_id)
        audio_in = [env async for env in bus.replay(subjects.call_all(result.call_id), subjects.CALLS_STREAM)
                    if env.subject.endswith(".audio.in")]
    finally:
        await bus.close()
    started = dict(log.calls)["started"]
    assert started["carrier"] == "openai_sip" and started["carrier_call_id"].startswith("rtc_")
    assert started["from"] == "+15551230001" and started["to"] == "+15559870000"
    ended = dict(log.calls)["ended"]
    assert ended["reason"] == "agent_hangup" and ended["carrier_call_id"] == started["carrier_call_id"]
    assert audio_in == []  # the gateway carries no media on a SIP call

    call = await ended_call(system, result.call_id)
    assert call.get("status") == "ended", f"call {result.call_id} not archived: {call}"
    assert call["end_reason"] == "agent_hangup"
    assert call["events"]["RT"] > 0
    async with httpx.AsyncClient(base_url=system.recorder_url, timeout=30) as client:
        archived = (await client.get(f"/calls/{result.call_id}/events", params={"body": "false"})).text
        audit = (await client.get(f"/calls/{result.call_id}/audit")).json()
    assert audit["ok"], audit["problems"]
    types = {json.loads(line).get("type") for line in archived.splitlines() if line.strip()}
    assert {"session.update", "response.function_call_arguments.done", "conversation.item.create"} <= types


async def test_sip_call_barge_in_and_transfer(sip_system: tuple[System, int]) -> None:
    """The caller talks over the greeting: the model stops the playback itself (``output_audio_buffer.cleared``
    for the greeting; on SIP clearing is the model's, so no ``command.clear`` is logged), the agent transfers the
    call with a SIP REFER and the call ends ``transfer``."""
    system, sip_port = sip_system
    scenario = load_scenario(ROOT / "scenarios" / "barge-in.yaml")
    scenario = scenario.model_copy(update={"expect": scenario.expect.model_copy(update={"barge_in": None})})
    lines: list[str] = []
    result = await run_scenario(scenario, gateway_url=system.gateway_url, nats_url=system.nats_url, speed=SPEED,
                                out=lines.append, carrier=CARRIER, sip_url=sip_leg_url(sip_port))
    assert result.call_id, f"call not placed: {result.failures}"
    assert result.ok, f"{result.failures}\n" + "\n".join(lines)
    bus = await Bus.connect(system.nats_url, name="e2e-sip", source="test")
    try:
        log = await read_call_log(bus, result.call_id)
    finally:
        await bus.close()
    [cleared] = log.server_events("output_audio_buffer.cleared")  # the greeting stopped at the caller's speech
    [greeting] = log.server_events("response.done")[:1]
    assert cleared["response_id"] == greeting["response"]["id"]
    assert not any(rest == "command.clear" for rest, _ in log.calls)
    ended = dict(log.calls)["ended"]
    assert ended["reason"] == "transfer" and ended["transfer_to"]
