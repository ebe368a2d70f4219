"""The book-appointment and barge-in scenarios over every carrier (Twilio, Telnyx, Vonage, Plivo), through the
real processes, with the gateway verifying every webhook signature (no insecure development mode): the caller
simulator signs as each vendor signs, with test keys the gateway is configured with.

For each call: the scenario's expectations hold (tool calls, barge-in, who ended it), the call was started by
that carrier with its audio format, and the recorder archived it. The barge-in scenario ends in a transfer: it
reaches a local fake of the carrier's REST API (``tests.integration.carrier_support.py``) as the vendor documents
it, for that call (Plivo's names the gateway's ``/plivo/transfer`` XML, so the gateway's public URL is set); the
book-appointment scenario ends with the agent's hangup, which reaches the fake the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from shared.audio import PCM24K, PCMU
from shared.bus import Bus
from switchboard.caller import run_scenario
from switchboard.caller.signing import CarrierKeys, new_telnyx_key
from switchboard.cli.demo import wait_archived
from switchboard.scenario import load_scenario, read_call_log
from tests.e2e.conftest import ROOT, SPEED, System, running_system
from tests.integration.carrier_support import VONAGE_APP, VONAGE_KEY, FakeCarrierApi, serving

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

TELNYX_PRIVATE, TELNYX_PUBLIC = new_telnyx_key()
KEYS = CarrierKeys(twilio_auth_token="e2e-twilio-auth-token-0123456789ab", telnyx_private_key=TELNYX_PRIVATE,
                   vonage_signature_secret="e2e-vonage-signature-secret-0123456789",
                   plivo_auth_token="e2e-plivo-auth-token-0123456789abcdef")
FORMATS = {"twilio": PCMU, "telnyx": PCMU, "vonage": PCM24K, "plivo": PCMU}
ACCOUNT_SID = "AC" + "2" * 32
TRANSFER_TO = "+15559870100"
"""The tools service's default ``SWITCHBOARD_TRANSFER_NUMBER``."""
FAKE_API = FakeCarrierApi()
PLIVO_AUTH_ID = "MAE2E0000000000000000"


@pytest.fixture(scope="module")
async def fake_api() -> AsyncIterator[FakeCarrierApi]:
    async with serving(FAKE_API) as fake:
        yield fake


@pytest.fixture(scope="module", params=list(FORMATS))
async def carrier_system(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                         fake_api: FakeCarrierApi) -> AsyncIterator[tuple[str, System]]:
    """A fresh system per carrier (the booking scenario takes a slot: each carrier's call must find it free)."""
    env = {"SWITCHBOARD_INSECURE_DEV": "false",
           "SWITCHBOARD_TWILIO_AUTH_TOKEN": KEYS.twilio_auth_token or "",
           "SWITCHBOARD_TELNYX_PUBLIC_KEY": TELNYX_PUBLIC,
           "SWITCHBOARD_VONAGE_SIGNATURE_SECRET": KEYS.vonage_signature_secret or "",
           "SWITCHBOARD_PLIVO_AUTH_TOKEN": KEYS.plivo_auth_token or "",
           "SWITCHBOARD_TWILIO_ACCOUNT_SID": ACCOUNT_SID, "SWITCHBOARD_TWILIO_API_URL": fake_api.url,
           "SWITCHBOARD_TELNYX_API_KEY": "KEY-e2e", "SWITCHBOARD_TELNYX_API_URL": fake_api.url + "/v2",
           "SWITCHBOARD_VONAGE_APPLICATION_ID": VONAGE_APP, "SWITCHBOARD_VONAGE_PRIVATE_KEY": VONAGE_KEY,
           "SWITCHBOARD_VONAGE_API_URL": fake_api.url,
           "SWITCHBOARD_PLIVO_AUTH_ID": PLIVO_AUTH_ID, "SWITCHBOARD_PLIVO_API_URL": fake_api.url,
           "SWITCHBOARD_PUBLIC_URL": "{gateway_url}"}
    carrier = str(request.param)
    async with running_system(tmp_path_factory.mktemp(f"e2e-{carrier}"), env) as running:
        yield carrier, running


async def started_payload(system: System, call_id: str) -> dict[str, Any]:
    bus = await Bus.connect(system.nats_url, name="e2e-carriers", source="test")
    try:
        log = await read_call_log(bus, call_id)
    finally:
        await bus.close()
    for rest, payload in log.calls:
        if rest == "started":
            return payload
    raise AssertionError(f"call {call_id} has no call.started")


@pytest.mark.parametrize("scenario", ["book-appointment", "barge-in"])
async def test_scenario_over_carrier(carrier_system: tuple[str, System], scenario: str) -> None:
    carrier, signed_system = carrier_system
    lines: list[str] = []
    result = await run_scenario(load_scenario(ROOT / "scenarios" / f"{scenario}.yaml"),
                                gateway_url=signed_system.gateway_url, nats_url=signed_system.nats_url,
                                speed=SPEED, out=lines.append, carrier=carrier, keys=KEYS)
    assert result.call_id, f"{carrier}/{scenario}: call not placed: {result.failures}"
    assert result.ok, f"{carrier}/{scenario}: {result.failures}\n" + "\n".join(lines)
    started = await started_payload(signed_system, result.call_id)
    assert started["carrier"] == carrier and started["audio_format"] == FORMATS[carrier]
    async with httpx.AsyncClient(base_url=signed_system.recorder_url, timeout=10) as client:
        call = await wait_archived(client, result.call_id)
    assert call.get("projected_ns"), f"call {result.call_id} not archived: {call}"
    leg = [r for r in FAKE_API.requests if started["carrier_call_id"] in r["path"]]
    transfers = [r for r in leg if r["action"] == "transfer"]
    hangups = [r for r in leg if r["action"] == "hangup"]
    assert hangups if scenario == "book-appointment" else not hangups, leg
    if scenario == "barge-in" and carrier == "twilio":
        [request] = transfers
        assert request["path"] == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{started['carrier_call_id']}.json"
        assert f"<Dial>{TRANSFER_TO}</Dial>" in request["body"]["Twiml"]
    elif scenario == "barge-in" and carrier == "telnyx":
        [request] = transfers
        assert request["path"] == f"/v2/calls/{started['carrier_call_id']}/actions/transfer"
        assert request["body"]["to"] == TRANSFER_TO
    elif scenario == "barge-in" and carrier == "vonage":
        [request] = transfers
        assert request["method"] == "PUT" and request["path"] == f"/v1/calls/{started['carrier_call_id']}"
        assert request["body"]["destination"]["ncco"][0]["endpoint"] == [
            {"type": "phone", "number": TRANSFER_TO.removeprefix("+")}]
    elif scenario == "barge-in" and carrier == "plivo":
        [request] = transfers
        assert request["path"] == f"/v1/Account/{PLIVO_AUTH_ID}/Call/{started['carrier_call_id']}/"
        assert request["body"]["legs"] == "aleg"
        assert request["body"]["aleg_url"] == (f"{signed_system.gateway_url}/plivo/transfer?"
                                               + urlencode({"to": TRANSFER_TO}))
    else:
        assert transfers == []


async def test_unsigned_webhooks_are_refused(carrier_system: tuple[str, System]) -> None:
    """The same system without keys on the caller's side: the carrier's webhook answers 403."""
    carrier, signed_system = carrier_system
    result = await run_scenario(load_scenario(ROOT / "scenarios" / "book-appointment.yaml"),
                                gateway_url=signed_system.gateway_url, nats_url=signed_system.nats_url,
                                speed=SPEED, carrier=carrier, keys=CarrierKeys(), turn_timeout=5)
    assert result.call_id is None and any("403" in f for f in result.failures), result.failures
