"""``POST /calls/outbound``: the gateway creates the call through each carrier's REST API (a local fake), and the
fake — as the carrier does once the callee answers — connects a caller simulator to the gateway with what the
create request carried (the inline TwiML, or the answer URL's markup); the call starts under the call id the route
answered, with the agent asked for. Answering-machine detection results, posted signed as each carrier signs,
become ``call.<id>.carrier.amd``. Every webhook is signature-checked (no insecure development mode)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from typer.testing import CliRunner

from services.gateway.server import RunningGateway, running_gateway
from shared.bus import Bus
from shared.config import load_settings
from shared.contracts import CarrierAmd
from switchboard.caller.carriers import CallerLine, dial
from switchboard.caller.signing import (
    CarrierKeys,
    new_telnyx_key,
    plivo_headers,
    telnyx_headers,
    twilio_signature,
    vonage_authorization,
)
from switchboard.cli import app as cli
from tests.integration.carrier_support import PLIVO_ID, VONAGE_APP, VONAGE_KEY, Dialed, FakeCarrierApi
from tests.integration.gateway_support import (  # noqa: F401 - fixtures
    Recorder,
    bus_fixture,
    peer_bus_fixture,
    recorder_fixture,
    wait_until,
)

ACCOUNT_SID = "AC" + "4" * 32
TELNYX_PRIVATE, TELNYX_PUBLIC = new_telnyx_key()
KEYS = CarrierKeys(twilio_auth_token="outbound-twilio-auth-token-0123456", telnyx_private_key=TELNYX_PRIVATE,
                   vonage_signature_secret="outbound-vonage-signature-secret-0123456789",
                   plivo_auth_token="outbound-plivo-auth-token-0123456789")
API_TOKEN = "outbound-api-token-0123456789"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
FROM = "+15550100200"


@pytest.fixture
async def dial_gw(bus: Bus, nats_url: str, fake_api: FakeCarrierApi) -> AsyncIterator[RunningGateway]:
    settings = load_settings(
        nats_url=nats_url, insecure_dev=False, api_token=API_TOKEN, outbound_from=FROM,
        twilio_account_sid=ACCOUNT_SID, twilio_auth_token=KEYS.twilio_auth_token, twilio_api_url=fake_api.url,
        telnyx_api_key="KEY-outbound", telnyx_api_url=fake_api.url + "/v2", telnyx_public_key=TELNYX_PUBLIC,
        telnyx_account_sid="telnyx-account-1", telnyx_texml_app_id="1293384261075731499",
        vonage_application_id=VONAGE_APP, vonage_private_key=VONAGE_KEY, vonage_api_url=fake_api.url,
        vonage_signature_secret=KEYS.vonage_signature_secret, plivo_auth_id=PLIVO_ID,
        plivo_auth_token=KEYS.plivo_auth_token, plivo_api_url=fake_api.url)
    async with running_gateway(bus, settings) as running:
        yield running


def answer_with_simulator(gw: RunningGateway, fake: FakeCarrierApi, lines: list[CallerLine]) -> None:
    """The fake carrier, once a call is created, answers it as the callee's carrier would."""

    async def pick_up(call: Dialed) -> None:
        lines.append(await dial(call.carrier, gw.http_url, from_=call.from_, to=call.to, params={}, keys=KEYS,
                                answer_url=call.answer_url, twiml=call.twiml, carrier_call_id=call.carrier_call_id))

    fake.on_dial = pick_up


async def post_outbound(gw: RunningGateway, body: dict[str, Any],
                        headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.http_url, timeout=10) as client:
        return await client.post("/calls/outbound", json=body, headers=AUTH if headers is None else headers)


@pytest.mark.parametrize("carrier", ["twilio", "telnyx", "vonage", "plivo"])
async def test_outbound_call_connects_under_our_call_id_with_the_agent_asked_for(
        dial_gw: RunningGateway, fake_api: FakeCarrierApi, recorder: Recorder, carrier: str) -> None:
    lines: list[CallerLine] = []
    answer_with_simulator(dial_gw, fake_api, lines)
    response = await post_outbound(dial_gw, {"to": "+15557654321", "agent": "echo", "carrier": carrier,
                                             "machine_detection": True})
    assert response.status_code == 201, response.text
    created = response.json()
    call_id = created["call_id"]
    assert call_id.startswith("call_") and created["carrier"] == carrier and created["agent"] == "echo"
    assert created["to"] == "+15557654321" and created["from"] == FROM
    [request] = fake_api.of(carrier, "dial")
    [placed] = fake_api.dialed
    body = request["body"]
    if carrier == "twilio":
        assert request["path"] == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json"
        assert (body["To"], body["From"], body["MachineDetection"], body["AsyncAmd"]) == (
            "+15557654321", FROM, "Enable", "true")
        assert "<Connect><Stream" in body["Twiml"] and f'value="{call_id}"' in body["Twiml"]
        assert body["AsyncAmdStatusCallback"] == f"{dial_gw.http_url}/twilio/amd?call_id={call_id}"
    elif carrier == "telnyx":
        assert request["path"] == "/v2/texml/Accounts/telnyx-account-1/Calls"
        assert (body["To"], body["From"], body["ApplicationSid"], body["MachineDetection"]) == (
            "+15557654321", FROM, "1293384261075731499", "Enable")
        assert body["Url"] == f"{dial_gw.http_url}/telnyx/voice?" + urlencode({"agent": "echo", "call_id": call_id})
        assert body["AsyncAmd"] is True and body["AsyncAmdStatusCallback"].endswith(f"/telnyx/amd?call_id={call_id}")
        assert request["auth"] == "Bearer KEY-outbound"
    elif carrier == "vonage":
        assert request["path"] == "/v1/calls"
        assert body["to"] == [{"type": "phone", "number": "15557654321"}]
        assert body["from"] == {"type": "phone", "number": FROM.removeprefix("+")}
        assert body["machine_detection"] == "continue" and body["event_url"][0].endswith(f"call_id={call_id}")
    else:
        assert request["path"] == f"/v1/Account/{PLIVO_ID}/Call/"
        assert (body["to"], body["from"], body["machine_detection"]) == ("15557654321", FROM[1:], "true")
        assert body["machine_detection_url"].endswith(f"/plivo/amd?call_id={call_id}")
    if carrier != "telnyx":  # Telnyx's TeXML create answer has no call id
        assert created["carrier_call_id"] == placed.carrier_call_id
    started = await recorder.wait_for(lambda: recorder.of(call_id, "started"))
    payload = started[0].json()
    assert payload["agent"] == "echo" and payload["carrier"] == carrier
    assert payload["carrier_call_id"] == placed.carrier_call_id
    await wait_until(lambda: lines)
    await lines[0].media(b"\xff" * 160)
    await lines[0].stop()
    ended = await recorder.wait_for(lambda: recorder.of(call_id, "ended"))
    assert ended[0].json()["reason"] == "caller_hangup"


def _amd_request(carrier: str, url: str, leg: str, verdict: str) -> dict[str, Any]:
    if carrier == "twilio":
        form = {"CallSid": leg, "AnsweredBy": verdict, "MachineDetectionDuration": "2410"}
        return {"data": form, "headers": {"X-Twilio-Signature": twilio_signature(KEYS.twilio_auth_token or "", url,
                                                                                   form)}}
    if carrier == "telnyx":
        raw = urlencode({"CallSid": leg, "AnsweredBy": verdict}).encode()
        return {"content": raw, "headers": {"Content-Type": "application/x-www-form-urlencoded",
                                            **telnyx_headers(TELNYX_PRIVATE, raw)}}
    if carrier == "vonage":
        raw = json.dumps({"uuid": leg, "status": verdict}).encode()
        return {"content": raw, "headers": {"Content-Type": "application/json",
                                            "Authorization": vonage_authorization(
                                                KEYS.vonage_signature_secret or "", raw)}}
    form = {"CallUUID": leg, "Machine": "true" if verdict == "machine" else "false"}
    return {"data": form, "headers": plivo_headers(KEYS.plivo_auth_token or "", url, form)}


@pytest.mark.parametrize(("carrier", "verdict", "is_human"), [
    ("twilio", "machine_end_beep", False), ("telnyx", "human", True), ("vonage", "machine", False),
    ("plivo", "human", True)])
async def test_amd_result_is_published_for_the_flow(dial_gw: RunningGateway, fake_api: FakeCarrierApi,
                                                    recorder: Recorder, carrier: str, verdict: str,
                                                    is_human: bool) -> None:
    response = await post_outbound(dial_gw, {"to": "+15557654321", "agent": "receptionist", "carrier": carrier,
                                             "machine_detection": True})
    call_id = response.json()["call_id"]
    [placed] = fake_api.dialed
    assert placed.amd_url is not None
    async with httpx.AsyncClient(timeout=10) as client:
        forged = await client.post(placed.amd_url, data={"AnsweredBy": "human", "Machine": "false"})
        answer = await client.post(placed.amd_url, **_amd_request(carrier, placed.amd_url, placed.carrier_call_id,
                                                                   verdict))
    assert forged.status_code == 403
    assert answer.status_code == 204, answer.text
    [event] = await recorder.wait_for(lambda: recorder.of(call_id, "carrier.amd"))
    amd = CarrierAmd.parse(event.data)
    assert (amd.carrier, amd.human, amd.carrier_call_id) == (carrier, is_human, placed.carrier_call_id)
    assert amd.answered_by == verdict
    if carrier == "twilio":
        assert amd.detection_ms == 2410


@pytest.mark.parametrize(("body", "headers", "status", "problem"), [
    ({"to": "+15557654321", "agent": "echo"}, {}, 401, "API token"),
    ({"to": "+15557654321", "agent": "echo"}, {"Authorization": "Bearer wrong"}, 401, "API token"),
    ({"to": "5557654321", "agent": "echo"}, AUTH, 422, "to"),
    ({"to": "+15557654321", "agent": "../etc/passwd"}, AUTH, 422, "agent"),
    ({"to": "+15557654321", "agent": "echo", "carrier": "exotel"}, AUTH, 422, "carrier"),
    ({"to": "+15557654321", "agent": "echo", "colour": "red"}, AUTH, 422, "colour"),
    ({"to": "+15557654321", "agent": "nobody"}, AUTH, 400, "unknown agent"),
    ({"to": "+15550009999", "agent": "echo"}, AUTH, 502, "twilio API refused"),
    ({"to": "+15550009999", "agent": "echo", "carrier": "plivo"}, AUTH, 502, "plivo API refused"),
])
async def test_bad_requests_get_a_clear_error(dial_gw: RunningGateway, fake_api: FakeCarrierApi, body: dict[str, Any],
                                              headers: dict[str, str], status: int, problem: str) -> None:
    response = await post_outbound(dial_gw, body, headers)
    assert response.status_code == status, response.text
    assert problem in response.text
    assert fake_api.dialed == []


async def test_carrier_without_call_control_or_caller_id_is_refused(bus: Bus, nats_url: str) -> None:
    settings = load_settings(nats_url=nats_url, api_token=API_TOKEN, twilio_account_sid=ACCOUNT_SID,
                             twilio_auth_token=KEYS.twilio_auth_token, twilio_api_url="http://127.0.0.1:9")
    async with running_gateway(bus, settings) as gw:
        no_control = await post_outbound(gw, {"to": "+15557654321", "agent": "echo", "carrier": "vonage"})
        no_from = await post_outbound(gw, {"to": "+15557654321", "agent": "echo"})
    assert no_control.status_code == 400 and "no call control configured for vonage" in no_control.text
    assert no_from.status_code == 400 and "SWITCHBOARD_OUTBOUND_FROM" in no_from.text


async def test_switchboard_dial_places_the_call_through_the_gateway(dial_gw: RunningGateway,
                                                                    fake_api: FakeCarrierApi,
                                                                    recorder: Recorder) -> None:
    lines: list[CallerLine] = []
    answer_with_simulator(dial_gw, fake_api, lines)
    runner = CliRunner()
    env = {"SWITCHBOARD_API_TOKEN": API_TOKEN}
    placed = await asyncio.to_thread(runner.invoke, cli, ["dial", "+15557654321", "--agent", "echo", "--carrier",
                                                         "telnyx", "--gateway", dial_gw.http_url, "--json"], env=env)
    assert placed.exit_code == 0, placed.output
    created = json.loads(placed.output)
    started = await recorder.wait_for(lambda: recorder.of(created["call_id"], "started"))
    assert started[0].json()["agent"] == "echo" and started[0].json()["carrier"] == "telnyx"
    refused = await asyncio.to_thread(runner.invoke, cli, ["dial", "5557654321", "--agent", "echo", "--gateway",
                                                          dial_gw.http_url], env=env)
    assert refused.exit_code == 1 and "422" in refused.output and "to:" in refused.output
    await wait_until(lambda: lines)
    await lines[0].stop()


async def test_answer_url_with_a_bad_call_id_is_refused(dial_gw: RunningGateway) -> None:
    url = f"{dial_gw.http_url}/plivo/voice?agent=echo&call_id=bad.id"
    form = {"CallUUID": "u1", "From": FROM, "To": "+15557654321"}
    async with httpx.AsyncClient(timeout=10) as client:
        refused = await client.post(url, data=form, headers=plivo_headers(KEYS.plivo_auth_token or "", url, form))
    assert refused.status_code == 400 and "invalid call_id" in refused.text
