"""An outbound call through the real processes: ``switchboard dial`` asks the gateway (``POST /calls/outbound``), the
gateway creates the call through the carrier's REST API (a local fake), and the fake carrier — as the carrier does
once the callee answers — connects the caller simulator, which plays a scenario as the callee (book-appointment over
Twilio, unknown-request over Telnyx: one system, and a booking takes its slot).
The call runs the agent asked for, completes (the agent hangs up through the carrier's API), the carrier's
answering-machine verdict is in the call's log, and the recorder archived the call. Every webhook is signed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from typer.testing import CliRunner

from shared.bus import Bus
from switchboard.caller import run_scenario
from switchboard.caller.carriers import CallerLine, dial
from switchboard.caller.signing import CarrierKeys, new_telnyx_key, telnyx_headers, twilio_signature
from switchboard.cli import app as cli
from switchboard.cli.demo import wait_archived
from switchboard.scenario import load_scenario, read_call_log
from tests.e2e.conftest import ROOT, SPEED, System, running_system
from tests.integration.carrier_support import Dialed, FakeCarrierApi, serving

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TELNYX_PRIVATE, TELNYX_PUBLIC = new_telnyx_key()
KEYS = CarrierKeys(twilio_auth_token="e2e-outbound-twilio-token-0123456789", telnyx_private_key=TELNYX_PRIVATE)
ACCOUNT_SID = "AC" + "5" * 32
API_TOKEN = "e2e-outbound-api-token-0123456789"
FROM = "+15550100300"


@pytest.fixture(scope="module")
async def fake_api() -> AsyncIterator[FakeCarrierApi]:
    async with serving(FakeCarrierApi()) as fake:
        yield fake


@pytest.fixture(scope="module")
async def outbound_system(tmp_path_factory: pytest.TempPathFactory,
                          fake_api: FakeCarrierApi) -> AsyncIterator[System]:
    env = {"SWITCHBOARD_INSECURE_DEV": "false", "SWITCHBOARD_API_TOKEN": API_TOKEN,
           "SWITCHBOARD_OUTBOUND_FROM": FROM, "SWITCHBOARD_TWILIO_AUTH_TOKEN": KEYS.twilio_auth_token or "",
           "SWITCHBOARD_TWILIO_ACCOUNT_SID": ACCOUNT_SID, "SWITCHBOARD_TWILIO_API_URL": fake_api.url,
           "SWITCHBOARD_TELNYX_PUBLIC_KEY": TELNYX_PUBLIC, "SWITCHBOARD_TELNYX_API_KEY": "KEY-e2e-outbound",
           "SWITCHBOARD_TELNYX_API_URL": fake_api.url + "/v2", "SWITCHBOARD_TELNYX_ACCOUNT_SID": "e2e-account"}
    async with running_system(tmp_path_factory.mktemp("e2e-outbound"), env) as running:
        yield running


async def amd_verdict(call: Dialed, verdict: str) -> None:
    """What the carrier does once its detection finished: post the signed ``AnsweredBy``."""
    assert call.amd_url is not None
    async with httpx.AsyncClient(timeout=10) as client:
        if call.carrier == "twilio":
            form = {"CallSid": call.carrier_call_id, "AnsweredBy": verdict}
            signature = twilio_signature(KEYS.twilio_auth_token or "", call.amd_url, form)
            answer = await client.post(call.amd_url, data=form, headers={"X-Twilio-Signature": signature})
        else:
            raw = urlencode({"CallSid": call.carrier_call_id, "AnsweredBy": verdict}).encode()
            answer = await client.post(call.amd_url, content=raw, headers={
                "Content-Type": "application/x-www-form-urlencoded", **telnyx_headers(TELNYX_PRIVATE, raw)})
    answer.raise_for_status()


async def call_log(system: System, call_id: str) -> dict[str, Any]:
    bus = await Bus.connect(system.nats_url, name="e2e-outbound", source="test")
    try:
        log = await read_call_log(bus, call_id)
    finally:
        await bus.close()
    return dict(log.calls)  # the last payload of each kind


@pytest.mark.parametrize(("carrier", "scenario"), [("twilio", "book-appointment"), ("telnyx", "unknown-request")])
async def test_outbound_call_connects_and_completes(outbound_system: System, fake_api: FakeCarrierApi,
                                                    carrier: str, scenario: str) -> None:
    system = outbound_system
    placed: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def answer(params: dict[str, str]) -> CallerLine:
        """The callee's phone: place the call with the CLI, then pick up when the fake carrier rings."""
        ringing: asyncio.Future[CallerLine] = asyncio.get_running_loop().create_future()

        async def pick_up(call: Dialed) -> None:
            try:
                ringing.set_result(await dial(call.carrier, system.gateway_url, from_=call.from_, to=call.to,
                                              params=params, keys=KEYS, answer_url=call.answer_url, twiml=call.twiml,
                                              carrier_call_id=call.carrier_call_id))
                await amd_verdict(call, "human")
            except Exception as exc:  # surfaces in the simulator's failures
                if not ringing.done():
                    ringing.set_exception(exc)

        fake_api.on_dial = pick_up
        result = await asyncio.to_thread(
            CliRunner().invoke, cli, ["dial", "+15557654321", "--agent", "receptionist", "--carrier", carrier,
                                      "--amd", "--gateway", system.gateway_url, "--json"],
            env={"SWITCHBOARD_API_TOKEN": API_TOKEN})
        assert result.exit_code == 0, result.output
        await placed.put(json.loads(result.output))
        return await ringing

    lines: list[str] = []
    outcome = await run_scenario(load_scenario(ROOT / "scenarios" / f"{scenario}.yaml"),
                                 gateway_url=system.gateway_url, nats_url=system.nats_url, speed=SPEED,
                                 out=lines.append, carrier=carrier, keys=KEYS, answer=answer)
    created = placed.get_nowait()
    assert outcome.call_id == created["call_id"], outcome.failures
    assert outcome.ok, f"{carrier}: {outcome.failures}\n" + "\n".join(lines)
    events = await call_log(system, created["call_id"])
    assert events["started"]["agent"] == "receptionist" and events["started"]["carrier"] == carrier
    assert events["carrier.amd"]["answered_by"] == "human" and events["carrier.amd"]["human"] is True
    assert events["ended"]["reason"] == "agent_hangup"
    leg = events["started"]["carrier_call_id"]
    assert [r for r in fake_api.of(carrier, "hangup") if leg in r["path"]], "the agent's hangup reached the carrier"
    async with httpx.AsyncClient(base_url=system.recorder_url, timeout=10,
                                 headers={"Authorization": f"Bearer {API_TOKEN}"}) as client:
        archived = await wait_archived(client, created["call_id"])
    assert archived.get("projected_ns"), f"call {created['call_id']} not archived: {archived}"
