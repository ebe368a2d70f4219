"""Call control through each carrier's REST API (a local fake records what arrives): Vonage and Plivo transfers,
hangup through the API after ``command.hangup`` for every carrier, and ``command.dtmf`` where the carrier can send
digits (Twilio cannot: nothing is sent)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
from websockets.exceptions import ConnectionClosed

from services.gateway.amd import plivo_dial_xml
from services.gateway.server import RunningGateway, running_gateway
from shared import subjects
from shared.bus import Bus
from shared.config import load_settings
from switchboard import natsserver
from switchboard.caller.carriers import CallerLine, dial
from switchboard.caller.signing import CarrierKeys, plivo_headers
from tests.integration.carrier_support import PLIVO_ID, VONAGE_APP, VONAGE_KEY, VONAGE_PUBLIC, FakeCarrierApi
from tests.integration.gateway_support import (  # noqa: F401 - fixtures
    TIMEOUT,
    Recorder,
    bus_fixture,
    peer_bus_fixture,
    recorder_fixture,
    wait_until,
)

ACCOUNT_SID = "AC" + "3" * 32
PLIVO_TOKEN = "plivo-auth-token-0123456789abcdef"


@pytest.fixture
async def control_gw(bus: Bus, nats_url: str, fake_api: FakeCarrierApi) -> AsyncIterator[RunningGateway]:
    port = natsserver.free_port()
    settings = load_settings(nats_url=nats_url, insecure_dev=True, public_url=f"http://127.0.0.1:{port}",
                             twilio_account_sid=ACCOUNT_SID, twilio_auth_token="twilio-auth-token-0123456789abcdef01",
                             twilio_api_url=fake_api.url, telnyx_api_key="KEY0123456789",
                             telnyx_api_url=fake_api.url + "/v2", vonage_application_id=VONAGE_APP,
                             vonage_private_key=VONAGE_KEY, vonage_api_url=fake_api.url, plivo_auth_id=PLIVO_ID,
                             plivo_auth_token=PLIVO_TOKEN, plivo_api_url=fake_api.url)
    async with running_gateway(bus, settings, port=port) as running:
        yield running


async def place(gw: RunningGateway, recorder: Recorder, carrier: str, run_id: str) -> tuple[CallerLine, dict[str, str]]:
    line = await dial(carrier, gw.http_url, from_="+15551230001", to="+15559870000", params={"run_id": run_id},
                      keys=CarrierKeys())
    started = await recorder.wait_for(lambda: recorder.started_with(run_id))
    return line, started


async def until_closed(line: CallerLine) -> None:
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(TIMEOUT):
            while True:
                await line.receive()


def test_plivo_dial_xml() -> None:
    assert plivo_dial_xml("+15550001111") == "<Response><Dial><Number>15550001111</Number></Dial></Response>"
    assert "<Dial><User>sip:desk@example.com</User></Dial>" in plivo_dial_xml("sip:desk@example.com")
    with pytest.raises(ValueError, match=r"E\.164"):
        plivo_dial_xml("not a number")


@pytest.mark.parametrize(("carrier", "target"), [("vonage", "+15550001111"), ("vonage", "sip:desk@example.com"),
                                                 ("plivo", "+15550001111"), ("plivo", "sip:desk@example.com")])
async def test_transfer_reaches_vonage_and_plivo_as_documented(
        control_gw: RunningGateway, fake_api: FakeCarrierApi, recorder: Recorder, peer_bus: Bus, carrier: str,
        target: str) -> None:
    line, started = await place(control_gw, recorder, carrier, f"xfer-{carrier}-{target[:4]}")
    call_id, uuid = started["call_id"], started["carrier_call_id"]
    await peer_bus.publish_event(subjects.command(call_id, "transfer"), {"to": target}, call_id=call_id)
    await until_closed(line)
    ended = await recorder.wait_for(lambda: recorder.of(call_id, "ended"))
    assert ended[0].json()["reason"] == "transfer" and ended[0].json()["transfer_to"] == target
    [request] = fake_api.of(carrier, "transfer")
    if carrier == "vonage":
        assert request["method"] == "PUT" and request["path"] == f"/v1/calls/{uuid}"
        endpoint = ({"type": "sip", "uri": target} if target.startswith("sip:")
                    else {"type": "phone", "number": target.removeprefix("+")})
        assert request["body"] == {"action": "transfer", "destination": {
            "type": "ncco", "ncco": [{"action": "connect", "endpoint": [endpoint]}]}}
        claims = jwt.decode(request["auth"].removeprefix("Bearer "), VONAGE_PUBLIC, algorithms=["RS256"])
        assert claims["application_id"] == VONAGE_APP
    else:
        assert request["path"] == f"/v1/Account/{PLIVO_ID}/Call/{uuid}/"
        assert request["body"]["legs"] == "aleg" and request["body"]["aleg_method"] == "POST"
        assert request["auth"] == "Basic " + base64.b64encode(f"{PLIVO_ID}:{PLIVO_TOKEN}".encode()).decode()
        # Plivo then fetches the <Dial> from the aleg_url, signed as it signs every request
        aleg_url = request["body"]["aleg_url"]
        assert aleg_url.startswith(control_gw.http_url + "/plivo/transfer?")
        form = {"CallUUID": uuid}
        async with httpx.AsyncClient() as client:
            answer = await client.post(aleg_url, data=form)
        assert answer.status_code == 200 and answer.text == plivo_dial_xml(target)
    assert [r["action"] for r in fake_api.requests] == ["transfer"]


async def test_plivo_transfer_xml_needs_a_valid_signature(bus: Bus, nats_url: str) -> None:
    port = natsserver.free_port()
    settings = load_settings(nats_url=nats_url, public_url=f"http://127.0.0.1:{port}", plivo_auth_token=PLIVO_TOKEN)
    async with running_gateway(bus, settings, port=port) as gw, httpx.AsyncClient() as client:
        url = f"{gw.http_url}/plivo/transfer?to=%2B15550001111"
        form = {"CallUUID": "u1"}
        refused = await client.post(url, data=form, headers=plivo_headers("wrong-token", url, form))
        answer = await client.post(url, data=form, headers=plivo_headers(PLIVO_TOKEN, url, form))
        bad = f"{gw.http_url}/plivo/transfer?to=12"
        unusable = await client.post(bad, data=form, headers=plivo_headers(PLIVO_TOKEN, bad, form))
    assert refused.status_code == 403
    assert answer.status_code == 200 and "<Number>15550001111</Number>" in answer.text
    assert unusable.status_code == 400 and "E.164" in unusable.text


@pytest.mark.parametrize("carrier", ["twilio", "telnyx", "vonage", "plivo"])
async def test_agent_hangup_ends_the_leg_through_the_api(control_gw: RunningGateway, fake_api: FakeCarrierApi,
                                                         recorder: Recorder, peer_bus: Bus, carrier: str) -> None:
    line, started = await place(control_gw, recorder, carrier, f"hangup-{carrier}")
    call_id, leg = started["call_id"], started["carrier_call_id"]
    await peer_bus.publish_event(subjects.command(call_id, "hangup"), {"reason": "agent_hangup"}, call_id=call_id)
    await until_closed(line)
    ended = await recorder.wait_for(lambda: recorder.of(call_id, "ended"))
    assert ended[0].json()["reason"] == "agent_hangup"
    [request] = fake_api.of(carrier, "hangup")
    expected = {"twilio": ("POST", f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{leg}.json", {"Status": "completed"}),
                "telnyx": ("POST", f"/v2/calls/{leg}/actions/hangup", {}),
                "vonage": ("PUT", f"/v1/calls/{leg}", {"action": "hangup"}),
                "plivo": ("DELETE", f"/v1/Account/{PLIVO_ID}/Call/{leg}/", None)}[carrier]
    assert (request["method"], request["path"], request["body"]) == expected
    assert [r["action"] for r in fake_api.requests] == ["hangup"]


@pytest.mark.parametrize("carrier", ["telnyx", "vonage", "plivo"])
async def test_dtmf_command_sends_digits_through_the_api(control_gw: RunningGateway, fake_api: FakeCarrierApi,
                                                         recorder: Recorder, peer_bus: Bus, carrier: str) -> None:
    line, started = await place(control_gw, recorder, carrier, f"dtmf-{carrier}")
    call_id, leg = started["call_id"], started["carrier_call_id"]
    await peer_bus.publish_event(subjects.command(call_id, "dtmf"), {"digits": "1234#"}, call_id=call_id)
    await wait_until(lambda: fake_api.of(carrier, "dtmf"))
    [request] = fake_api.of(carrier, "dtmf")
    expected = {"telnyx": (f"/v2/calls/{leg}/actions/send_dtmf", {"digits": "1234#"}),
                "vonage": (f"/v1/calls/{leg}/dtmf", {"digits": "1234#"}),
                "plivo": (f"/v1/Account/{PLIVO_ID}/Call/{leg}/DTMF/", {"digits": "1234#", "leg": "aleg"})}[carrier]
    assert (request["path"], request["body"]) == expected
    await line.media(b"\xff" * 160)  # the call goes on
    assert not recorder.of(call_id, "ended")
    await line.stop()
    await recorder.wait_for(lambda: recorder.of(call_id, "ended"))


async def test_twilio_dtmf_is_not_faked(control_gw: RunningGateway, fake_api: FakeCarrierApi, recorder: Recorder,
                                        peer_bus: Bus, caplog: pytest.LogCaptureFixture) -> None:
    line, started = await place(control_gw, recorder, "twilio", "dtmf-twilio")
    call_id = started["call_id"]
    with caplog.at_level("WARNING", logger="services.gateway.call_control"):
        await peer_bus.publish_event(subjects.command(call_id, "dtmf"), {"digits": "12"}, call_id=call_id)
        await wait_until(lambda: "cannot send DTMF" in caplog.text)
    await line.stop()
    await recorder.wait_for(lambda: recorder.of(call_id, "ended"))
    assert fake_api.requests == []
