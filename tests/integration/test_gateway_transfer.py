"""``command.transfer`` moves the call through the carrier's REST API (twilio / telnyx SDKs pointed at a local
fake) before the media stream closes, so the caller's leg is transferred rather than dropped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from websockets.exceptions import ConnectionClosed

from services.gateway.call_control import dial_twiml
from services.gateway.server import RunningGateway, running_gateway
from shared import subjects
from shared.bus import Bus
from shared.config import load_settings
from switchboard.caller.carriers import dial
from switchboard.caller.signing import CarrierKeys
from tests.integration.carrier_support import FakeCarrierApi
from tests.integration.gateway_support import TIMEOUT, Recorder, bus_fixture, wait_until  # noqa: F401

ACCOUNT_SID = "AC" + "1" * 32


@pytest.fixture
async def control_gw(bus: Bus, nats_url: str, fake_api: FakeCarrierApi) -> AsyncIterator[RunningGateway]:
    settings = load_settings(nats_url=nats_url, insecure_dev=True, twilio_account_sid=ACCOUNT_SID,
                             twilio_auth_token="twilio-auth-token-0123456789abcdef01",
                             twilio_api_url=fake_api.url, telnyx_api_key="KEY0123456789",
                             telnyx_api_url=fake_api.url + "/v2")
    async with running_gateway(bus, settings) as running:
        yield running


def test_dial_twiml() -> None:
    assert "<Dial>+15550001111</Dial>" in dial_twiml("+15550001111")
    assert "<Dial><Sip>sip:desk@example.com</Sip></Dial>" in dial_twiml("sip:desk@example.com")


@pytest.mark.parametrize(("carrier", "target"), [("twilio", "+15550001111"), ("twilio", "sip:desk@example.com"),
                                                 ("telnyx", "+15550001111"), ("telnyx", "sip:desk@example.com")])
async def test_transfer_reaches_the_carrier_api_before_the_stream_closes(
        control_gw: RunningGateway, fake_api: FakeCarrierApi, recorder: Recorder, peer_bus: Bus, carrier: str,
        target: str) -> None:
    run_id = f"transfer-{carrier}-{target[:4]}"
    line = await dial(carrier, control_gw.http_url, from_="+15551230001", to="+15559870000",
                      params={"run_id": run_id}, keys=CarrierKeys())
    started = await recorder.wait_for(lambda: recorder.started_with(run_id))
    call_id = started["call_id"]
    fake_api.hold = asyncio.Event()
    await peer_bus.publish_event(subjects.command(call_id, "transfer"), {"to": target, "reason": "transfer"},
                                 call_id=call_id)
    await wait_until(lambda: fake_api.requests)
    await line.media(b"\xff" * 160)  # the stream is still open while the carrier handles the transfer
    assert not recorder.of(call_id, "ended")
    fake_api.hold.set()
    fake_api.hold = None
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(TIMEOUT):
            while True:
                await line.receive()
    ended = await recorder.wait_for(lambda: recorder.of(call_id, "ended"))
    assert ended[0].json()["reason"] == "transfer" and ended[0].json()["transfer_to"] == target
    [request] = [r for r in fake_api.requests if r["carrier"] == carrier]
    if carrier == "twilio":
        assert request["path"] == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{started['carrier_call_id']}.json"
        assert request["body"]["Twiml"] == dial_twiml(target)
        assert request["auth"].startswith("Basic ")
    else:
        assert request["path"] == f"/v2/calls/{started['carrier_call_id']}/actions/transfer"
        assert request["body"]["to"] == target and request["auth"] == "Bearer KEY0123456789"
    fake_api.requests.clear()


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_refused_transfer_still_ends_the_call(control_gw: RunningGateway, fake_api: FakeCarrierApi,
                                                    recorder: Recorder, peer_bus: Bus, carrier: str) -> None:
    run_id = f"refused-{carrier}"
    line = await dial(carrier, control_gw.http_url, from_="+15551230001", to="+15559870000",
                      params={"run_id": run_id}, keys=CarrierKeys())
    started = await recorder.wait_for(lambda: recorder.started_with(run_id))
    call_id = started["call_id"]
    await peer_bus.publish_event(subjects.command(call_id, "transfer"), {"to": "+15550009999"}, call_id=call_id)
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(TIMEOUT):
            while True:
                await line.receive()
    ended = await recorder.wait_for(lambda: recorder.of(call_id, "ended"))
    assert ended[0].json()["reason"] == "transfer"
    assert [r["carrier"] for r in fake_api.requests] == [carrier]
    fake_api.requests.clear()
