"""No session serves a call any more (its owner died, no peer took it over): after ``SWITCHBOARD_SESSION_LOST_S``
the gateway tells the caller and ends the call with ``session_lost`` (issue 22 item 3) — never dead air until the
caller hangs up. Real gateway (uvicorn WebSockets), real nats-server and the real call-owners KV bucket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from websockets.exceptions import ConnectionClosed

from services.gateway.server import RunningGateway, running_gateway
from services.session.ownership import Ownership
from shared.bus import Bus
from shared.carriers import twilio as tw
from shared.config import load_settings
from switchboard.caller.client import TwilioCallerSocket, post_twiml, voice_form
from tests.integration.gateway_support import TIMEOUT, Recorder, bus_fixture  # noqa: F401

LOST_S = 2.0


@pytest.fixture(name="gw")
async def lost_gw(bus: Bus, nats_url: str) -> AsyncIterator[RunningGateway]:
    settings = load_settings(nats_url=nats_url, insecure_dev=True, session_lost_s=LOST_S)
    async with running_gateway(bus, settings) as running:
        yield running


async def test_a_call_whose_owner_vanished_is_told_and_ended_session_lost(gw: RunningGateway, recorder: Recorder,
                                                                         peer_bus: Bus) -> None:
    form = voice_form(from_="+15551230001", to="+15559870000", call_sid="CA" + "9" * 32)
    url, params = tw.parse_twiml(await post_twiml(gw.http_url + "/twilio/voice", form))
    call_id = params["call_id"]
    owner = Ownership(peer_bus.js, instance="doomed")
    await owner.start(watch=False)
    assert await owner.claim(call_id) == 1
    sock = await TwilioCallerSocket.connect(url)
    await sock.start(params)
    await recorder.wait_for(lambda: recorder.of(call_id, "started"))
    await asyncio.sleep(LOST_S + 1.5)  # owned all along: nothing happens
    assert not recorder.of(call_id, "ended")

    await owner.stop()  # the owner dies: its entry is no longer renewed and expires
    heard = 0
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(TIMEOUT + LOST_S + 10):
            while True:
                message = tw.parse_outbound(await sock.ws.recv())
                if isinstance(message, tw.OutboundMedia):
                    heard += len(tw.decode_payload(message.media.payload))
    assert heard > 8000  # more than a second of the notice was played to the caller
    ended = await recorder.wait_for(lambda: recorder.of(call_id, "ended"))
    assert [e.json()["reason"] for e in ended] == ["session_lost"]
