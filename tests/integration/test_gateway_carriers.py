"""Telnyx, Vonage and Plivo through a real gateway and NATS: signed webhooks (verified with the vendors' SDKs,
signed here as the vendors sign), single-use stream tokens, a call per carrier (start, audio both ways, marks,
DTMF, clear, hangup) and bad frames closing with a reason."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from services.gateway.server import RunningGateway, running_gateway
from shared import subjects
from shared.audio import PCM24K, PCMU
from shared.bus import Bus
from shared.carriers import plivo, telnyx, vonage
from shared.carriers.frames import PlayAudio, PlayClear, PlayMark
from shared.config import load_settings
from switchboard.caller.carriers import CallerLine, dial
from switchboard.caller.signing import (
    CarrierKeys,
    new_telnyx_key,
    plivo_headers,
    telnyx_headers,
    vonage_authorization,
)
from switchboard.testing.echo_peer import EchoPeer
from tests.integration.gateway_support import TIMEOUT, Recorder, bus_fixture, wait_until  # noqa: F401

TELNYX_PRIVATE, TELNYX_PUBLIC = new_telnyx_key()
VONAGE_SECRET = "vonage-signature-secret-0123456789abcdef"
PLIVO_TOKEN = "plivo-auth-token-0123456789abcdef0123"
KEYS = CarrierKeys(telnyx_private_key=TELNYX_PRIVATE, vonage_signature_secret=VONAGE_SECRET,
                   plivo_auth_token=PLIVO_TOKEN)
CARRIERS = ("telnyx", "vonage", "plivo")
FORM = {"CallSid": "c1", "CallUUID": "c1", "From": "+15551230001", "To": "+15559870000"}


@pytest.fixture
async def signed_gw(bus: Bus, nats_url: str) -> AsyncIterator[RunningGateway]:
    settings = load_settings(nats_url=nats_url, telnyx_public_key=TELNYX_PUBLIC,
                             vonage_signature_secret=VONAGE_SECRET, plivo_auth_token=PLIVO_TOKEN,
                             insecure_dev=False)
    async with running_gateway(bus, settings) as running:
        yield running


async def webhook(client: httpx.AsyncClient, carrier: str, *, forge: bool = False, tamper: bool = False,
                  sign: bool = True) -> httpx.Response:
    """The carrier's answer webhook, signed as the carrier signs it (or forged / tampered / unsigned)."""
    base = str(client.base_url).rstrip("/")
    sent = {**FORM, "From": "+19999999999"} if tamper else FORM
    if carrier == "telnyx":
        body = urlencode(FORM).encode()
        headers = telnyx_headers(new_telnyx_key()[0] if forge else TELNYX_PRIVATE, body) if sign else {}
        return await client.post("/telnyx/voice", content=urlencode(sent).encode(),
                                 headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})
    if carrier == "vonage":
        body = json.dumps({"from": "15551230001", "to": "15559870000", "uuid": "u1"}).encode()
        auth = vonage_authorization("another-secret-0123456789abcdef0123" if forge else VONAGE_SECRET, body)
        sent_body = body.replace(b"15551230001", b"19999999999") if tamper else body
        return await client.post("/vonage/voice", content=sent_body,
                                 headers={"Authorization": auth, "Content-Type": "application/json"} if sign else {})
    headers = plivo_headers("x" * 36 if forge else PLIVO_TOKEN, base + "/plivo/voice", FORM) if sign else {}
    return await client.post("/plivo/voice", data=sent, headers=headers)


@pytest.mark.parametrize("carrier", CARRIERS)
async def test_webhook_signature_accepted_and_forged_rejected(signed_gw: RunningGateway, carrier: str) -> None:
    async with httpx.AsyncClient(base_url=signed_gw.http_url) as client:
        ok = await webhook(client, carrier)
        forged = await webhook(client, carrier, forge=True)
        tampered = await webhook(client, carrier, tamper=True)
        missing = await webhook(client, carrier, sign=False)
    assert ok.status_code == 200, ok.text
    assert f"/{carrier}/media" in ok.text
    assert (forged.status_code, tampered.status_code, missing.status_code) == (403, 403, 403)


async def test_no_key_refuses_every_request(bus: Bus, nats_url: str) -> None:
    async with running_gateway(bus, load_settings(nats_url=nats_url, insecure_dev=False)) as gw, \
            httpx.AsyncClient(base_url=gw.http_url) as client:
        for carrier in CARRIERS:
            assert (await webhook(client, carrier)).status_code == 403


async def test_telnyx_stale_timestamp_rejected(signed_gw: RunningGateway) -> None:
    body = urlencode(FORM).encode()
    headers = telnyx_headers(TELNYX_PRIVATE, body, timestamp=1_000_000_000)
    async with httpx.AsyncClient(base_url=signed_gw.http_url) as client:
        r = await client.post("/telnyx/voice", content=body,
                              headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 403


@pytest.mark.parametrize("carrier", ["telnyx", "plivo"])
async def test_stream_token_required_and_single_use(signed_gw: RunningGateway, recorder: Recorder,
                                                    carrier: str) -> None:
    async with httpx.AsyncClient(base_url=signed_gw.http_url) as client:
        answer = (await webhook(client, carrier)).text
    url = telnyx.parse_texml(answer)[0] if carrier == "telnyx" else plivo.parse_stream_xml(answer)[0]
    assert "token=" in url
    bare = url.split("?", 1)[0]
    for bad in (bare, bare + "?token=forged.x.y"):
        with pytest.raises(InvalidStatus) as err:
            await websockets.connect(bad)
        assert err.value.response.status_code == 403
    async with websockets.connect(url):
        pass
    with pytest.raises(InvalidStatus) as err:  # used once already
        await websockets.connect(url)
    assert err.value.response.status_code == 403


async def test_vonage_upgrade_needs_the_ncco_authorization(signed_gw: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=signed_gw.http_url) as client:
        ncco = (await webhook(client, "vonage")).json()
    uri, rate, headers, auth = vonage.parse_ncco(ncco)
    assert rate == 16000 and auth and auth.startswith("Bearer ") and headers["caller"] == "15551230001"
    for bad in ({}, {"Authorization": "Bearer forged.x.y"}):
        with pytest.raises(InvalidStatus) as err:
            await websockets.connect(uri, additional_headers=bad)
        assert err.value.response.status_code == 403
    async with websockets.connect(uri, additional_headers={"Authorization": auth}):
        pass


async def next_event(line: CallerLine, kind: type) -> Any:
    async with asyncio.timeout(TIMEOUT):
        while True:
            event = await line.receive()
            if isinstance(event, kind):
                return event


@pytest.mark.parametrize("carrier", CARRIERS)
async def test_call_through_each_carrier(signed_gw: RunningGateway, recorder: Recorder, peer: EchoPeer,
                                         peer_bus: Bus, carrier: str) -> None:
    run_id = f"{carrier}-call"
    line = await dial(carrier, signed_gw.http_url, from_="+15551230001", to="+15559870000",
                      params={"run_id": run_id}, keys=KEYS)
    started = await recorder.wait_for(lambda: recorder.started_with(run_id))
    call_id = started["call_id"]
    assert started["carrier"] == carrier
    assert started["audio_format"] == (PCM24K if carrier == "vonage" else PCMU)
    assert started["agent"] and started["from"] and started["to"]
    await wait_until(lambda: call_id in peer.started)
    # caller audio reaches the bus; the echo peer's answer comes back as the carrier's audio + mark
    for _ in range(10):
        await line.media(b"\x10" * 160)
    audio = await next_event(line, PlayAudio)
    assert audio.audio
    mark = await next_event(line, PlayMark)
    await line.mark(mark.name)
    await recorder.wait_for(lambda: recorder.of(call_id, "carrier.mark"))
    await line.dtmf("7")
    dtmf = await recorder.wait_for(lambda: recorder.of(call_id, "carrier.dtmf"))
    assert dtmf[0].json() == {"digit": "7"}
    # barge-in: the session's clear reaches the carrier; its pending marks come back as cleared
    for _ in range(5):
        await line.media(b"\x20" * 160)
    pending = await next_event(line, PlayMark)
    await peer_bus.publish_event(subjects.command(call_id, "clear"), {}, call_id=call_id)
    await next_event(line, PlayClear)
    if line.echoes_marks_on_clear:
        await line.mark(pending.name)
    else:
        await line.cleared()

    def echoed() -> bool:
        return any(e.json().get("name") == pending.name for e in recorder.of(call_id, "carrier.mark"))
    await recorder.wait_for(echoed)
    await line.stop()
    ended = await recorder.wait_for(lambda: recorder.of(call_id, "ended"))
    assert ended[0].json()["reason"] == "caller_hangup"
    assert ended[0].json()["audio_in_ms"] > 0


BAD_FRAMES: dict[str, list[tuple[str | bytes, str]]] = {
    "telnyx": [("{not json", "malformed JSON"), (b"\x00" * 160, "binary frames"),
               ('{"event":"dtmf","dtmf":{"digit":"xx"}}', "invalid dtmf digit"),
               ('{"event":"media","media":{"payload":"%%%"}}', "invalid base64"),
               ('{"event":"bogus"}', "unknown event")],
    "vonage": [(b"\x00" * 100, "expected 640"),
               ('{"event":"websocket:connected","content-type":"audio/l16;rate=16000"}', "second websocket:connected"),
               ('{"event":"websocket:dtmf","digit":"?"}', "invalid dtmf digit")],
    "plivo": [(b"\x00" * 160, "binary frames"), ('{"event":"playedStream"}', "playedStream"),
              ('[1,2]', "not a JSON object")],
}


@pytest.mark.parametrize(("carrier", "index"), [(c, i) for c, frames in BAD_FRAMES.items()
                                                 for i in range(len(frames))])
async def test_bad_frame_closes_with_reason(signed_gw: RunningGateway, recorder: Recorder, carrier: str,
                                            index: int) -> None:
    frame, reason = BAD_FRAMES[carrier][index]
    run_id = f"bad-{carrier}-{index}"
    line = await dial(carrier, signed_gw.http_url, from_="+15551230001", to="+15559870000",
                      params={"run_id": run_id}, keys=KEYS)
    started = await recorder.wait_for(lambda: recorder.started_with(run_id))
    await line.ws.send(frame)
    with pytest.raises(ConnectionClosed) as err:
        async with asyncio.timeout(TIMEOUT):
            while True:
                await line.ws.recv()
    assert err.value.rcvd is not None and err.value.rcvd.code == 1008
    assert reason in err.value.rcvd.reason
    ended = await recorder.wait_for(lambda: recorder.of(started["call_id"], "ended"))
    assert ended[0].json()["reason"] == "protocol_error"


async def test_media_before_start_and_start_timeout(bus: Bus, nats_url: str) -> None:
    async with running_gateway(bus, load_settings(nats_url=nats_url, insecure_dev=True),
                               start_timeout_s=0.5) as gw:
        async with websockets.connect(gw.ws_url + "/plivo/media") as ws:
            await ws.send(plivo.caller_frame("media", "s", 1, media={"payload": base64.b64encode(b"x").decode()}))
            with pytest.raises(ConnectionClosed) as err:
                await ws.recv()
            assert err.value.rcvd is not None and err.value.rcvd.reason == "media before start"
        async with websockets.connect(gw.ws_url + "/vonage/media") as ws:
            with pytest.raises(ConnectionClosed) as err:
                await ws.recv()
            assert err.value.rcvd is not None and "no start within" in err.value.rcvd.reason
