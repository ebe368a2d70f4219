"""Twilio signatures (made by the official ``twilio`` library) on the webhook and the WebSocket upgrade,
and browser tokens on ``WS /browser``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
import websockets
from twilio.request_validator import RequestValidator
from websockets.exceptions import ConnectionClosed, InvalidStatus

from services.gateway.app import BrowserToken
from services.gateway.security import SESSION_COOKIE, BrowserTokens, KvNonces, TokenError
from services.gateway.server import RunningGateway, running_gateway
from shared import subjects
from shared.audio import PCM24K, pcm16_to_bytes
from shared.bus import Bus, Headers
from shared.config import load_settings
from tests.integration.gateway_support import (  # noqa: F401 - bus_fixture
    TIMEOUT,
    AudioTap,
    Recorder,
    bus_fixture,
    start_frame,
    wait_until,
)

AUTH_TOKEN = "12345678901234567890123456789012"
PUBLIC = "https://voice.example.com"


@pytest.fixture
async def signed_gw(bus: Bus, nats_url: str) -> AsyncIterator[RunningGateway]:
    settings = load_settings(nats_url=nats_url, twilio_auth_token=AUTH_TOKEN, public_url=PUBLIC)
    async with running_gateway(bus, settings) as running:
        yield running


async def test_voice_webhook_signature_accepted_and_forged_rejected(signed_gw: RunningGateway) -> None:
    form = {"CallSid": "CA123", "From": "+15551230001", "To": "+15559870000", "AccountSid": "AC1"}
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC + "/twilio/voice", form)
    async with httpx.AsyncClient(base_url=signed_gw.http_url) as client:
        ok = await client.post("/twilio/voice", data=form, headers={"X-Twilio-Signature": signature})
        forged = await client.post("/twilio/voice", data=form, headers={"X-Twilio-Signature": "AAAA" + signature[4:]})
        tampered = await client.post("/twilio/voice", data={**form, "From": "+19999999999"},
                                     headers={"X-Twilio-Signature": signature})
        missing = await client.post("/twilio/voice", data=form)
    assert ok.status_code == 200 and "wss://voice.example.com/twilio/media" in ok.text
    assert forged.status_code == 403
    assert tampered.status_code == 403
    assert missing.status_code == 403


async def test_media_upgrade_signature(signed_gw: RunningGateway, recorder: Recorder) -> None:
    signature = RequestValidator(AUTH_TOKEN).compute_signature("wss://voice.example.com/twilio/media", {})
    url = signed_gw.ws_url + "/twilio/media"
    async with websockets.connect(url, additional_headers={"X-Twilio-Signature": signature}) as ws:
        await ws.send(start_frame("signed"))
        await recorder.wait_for(lambda: recorder.started_with("signed"))
    for headers in ({"X-Twilio-Signature": "forged"}, {}):
        with pytest.raises(InvalidStatus) as err:
            await websockets.connect(url, additional_headers=headers)
        assert err.value.response.status_code == 403


async def test_browser_token_and_call(gw: RunningGateway, peer_bus: Bus, recorder: Recorder,
                                      audio_tap: AudioTap) -> None:
    url = gw.ws_url + "/browser"
    async with httpx.AsyncClient(base_url=gw.http_url) as client:
        minted = (await client.post("/browser/token")).json()
        page = await client.get("/phone")
        script = await client.get("/phone.js")
    assert page.status_code == 200 and "/phone.js" in page.text
    assert script.status_code == 200 and "/browser/token" in script.text
    token = minted["token"]
    for bad in ("", "?token=forged.token.value", "?token=" + token[:-2] + "xx"):
        with pytest.raises(InvalidStatus) as err:
            await websockets.connect(url + bad)
        assert err.value.response.status_code == 403
    async with websockets.connect(url + "?token=" + token) as ws:
        await ws.send(json.dumps({"event": "start", "sample_rate": 16000}))
        started = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert started["event"] == "started"
        call_id = started["call_id"]
        info = (await recorder.wait_for(lambda: recorder.of(call_id, "started")))[0].json()
        assert info["carrier"] == "browser" and info["audio_format"] == PCM24K
        heard = audio_tap.of(call_id)
        tone = (np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000) * 8000).astype(np.int16)
        for i in range(0, 16000, 320):  # 1 s at 16 kHz in 20 ms frames
            await ws.send(pcm16_to_bytes(tone[i:i + 320]))
        await wait_until(lambda: sum(len(e.data) for e in heard) >= 47_000)
        assert all(e.headers[Headers.AUDIO_FORMAT] == PCM24K for e in heard)
        # the agent's audio comes back as binary PCM16 24 kHz plus a mark per chunk
        await peer_bus.publish(subjects.rt_server(call_id, "response.output_audio.delta"), {
            "type": "response.output_audio.delta", "item_id": "item_b", "response_id": "r",
            "delta": "AAAAAA=="}, call_id=call_id)
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"\x00" * 4
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) == {"event": "mark", "name": "item_b:4"}
        await ws.send(json.dumps({"event": "mark", "name": "item_b:4"}))
        await recorder.wait_for(lambda: recorder.of(call_id, "carrier.mark"))
        await ws.send(json.dumps({"event": "stop"}))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    ended = (await recorder.wait_for(lambda: recorder.of(call_id, "ended")))[0].json()
    assert ended["reason"] == "caller_hangup" and ended["carrier"] == "browser"
    # a token works once
    with pytest.raises(InvalidStatus):
        await websockets.connect(url + "?token=" + token)


async def test_browser_token_requires_api_token_when_configured(bus: Bus, nats_url: str) -> None:
    settings = load_settings(nats_url=nats_url, api_token="s3cret")
    async with running_gateway(bus, settings) as running, httpx.AsyncClient(base_url=running.http_url) as client:
        assert (await client.post("/browser/token")).status_code == 401
        assert (await client.post("/browser/token", headers={"Authorization": "Bearer wrong"})).status_code == 401
        ok = await client.post("/browser/token", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["token"].count(".") == 2
        BrowserToken.model_validate(ok.json())  # what /openapi.json promises
        doc = (await client.get("/openapi.json")).json()
        assert doc["paths"]["/browser/token"]["post"]["security"] == [{"bearerAuth": []}, {"browserSession": []}]
        assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
        voice = doc["paths"]["/twilio/voice"]["post"]
        assert voice["security"] == [] and "application/xml" in voice["responses"]["200"]["content"]
        assert "application/x-www-form-urlencoded" in voice["requestBody"]["content"]
        # the call with the API token set a session cookie: the page mints more without the API token
        assert SESSION_COOKIE in client.cookies
        again = await client.post("/browser/token")
        assert again.status_code == 200 and again.json()["token"] != ok.json()["token"]


async def test_forged_session_cookie_is_refused(bus: Bus, nats_url: str) -> None:
    settings = load_settings(nats_url=nats_url, api_token="s3cret", token_secret="a" * 64)
    other = BrowserTokens("b" * 64)  # a cookie signed with another secret
    async with running_gateway(bus, settings) as running, httpx.AsyncClient(base_url=running.http_url) as client:
        forged, _ = other.mint_session()
        client.cookies.set(SESSION_COOKIE, forged, path="/browser")
        assert (await client.post("/browser/token")).status_code == 401


async def test_edges_fail_closed_without_secrets(bus: Bus, nats_url: str) -> None:
    """No Twilio auth token, no API token, not in insecure dev mode: webhook, media socket and token refused."""
    settings = load_settings(nats_url=nats_url, twilio_auth_token=None, api_token=None, insecure_dev=False)
    async with running_gateway(bus, settings) as running, httpx.AsyncClient(base_url=running.http_url) as client:
        form = {"CallSid": "CA" + "0" * 32, "From": "+15550001111", "To": "+15550002222"}
        assert (await client.post("/twilio/voice", data=form)).status_code == 403
        assert (await client.post("/twilio/voice", data=form,
                                  headers={"X-Twilio-Signature": "forged"})).status_code == 403
        with pytest.raises(InvalidStatus):
            await websockets.connect(running.ws_url + "/twilio/media")
        assert (await client.post("/browser/token")).status_code == 401


async def test_browser_token_from_one_replica_works_once_on_another(nats_url: str, unique: str) -> None:
    """Two gateway replicas share SWITCHBOARD_TOKEN_SECRET and the NATS KV of used nonces."""
    secret = "s" * 64
    buses = [await Bus.connect(nats_url, name=f"replica-{i}", source="gateway") for i in range(2)]
    try:
        bucket = f"tokens_{unique}"
        a = BrowserTokens(secret, used=KvNonces(buses[0].js, bucket=bucket))
        b = BrowserTokens(secret, used=KvNonces(buses[1].js, bucket=bucket))
        token, _ = a.mint()
        await b.check(token)  # minted on A, accepted on B
        for replica in (a, b):
            with pytest.raises(TokenError, match="already used"):
                await replica.check(token)
        with pytest.raises(TokenError, match="signature"):  # a replica with another secret refuses it
            await BrowserTokens("t" * 64, used=KvNonces(buses[1].js, bucket=bucket)).check(a.mint()[0])
    finally:
        for bus in buses:
            await bus.close()


async def test_ops_routes(gw: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gw.http_url) as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = (await client.get("/readyz")).json()
        assert ready["status"] == "ready" and {c["name"] for c in ready["checks"]} == {"accepting", "nats"}
        assert (await client.get("/metrics")).status_code == 200
