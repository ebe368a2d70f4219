"""OpenAI SIP calls against a real nats-server, the gateway app and the local model's SIP side on free ports:
the webhook's signature is checked (nothing published otherwise), a call no session connects to is rejected
through the calls API with ``call.ended`` ``session_lost``, and an unknown call is refused by the calls API, the
sideband and the session."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import httpx
import openai
import pytest

from services.gateway.server import running_gateway
from services.localmodel.session import Send, Session
from services.localmodel.sip import SipSide, bound_port, sign_webhook
from services.session.agent import load_agent
from services.session.model import ModelSocket
from services.session.options import ModelEndpoint
from services.session.sideband import SidebandCall, sideband_url
from shared import subjects
from shared.bus import Bus, Envelope
from shared.config import load_settings
from shared.contracts import CallEnded, CallStarted
from switchboard.caller.sip import SipLine, sip_leg_url

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@pytest.fixture(name="bus")
async def bus_fixture(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_url, name="sip-test", source="gateway")
    await b.ensure_streams(load_settings(js_max_age=600))
    yield b
    await b.close()


def _no_session(send: Send, model: str) -> Session:
    raise AssertionError("no call is accepted in these tests")


@pytest.fixture(name="sip")
async def sip_fixture() -> AsyncIterator[tuple[SipSide, int]]:
    side = SipSide(_no_session, webhook_url="http://127.0.0.1:9/unset", webhook_secret=SECRET)
    task, server = await side.serve("127.0.0.1", 0)
    try:
        yield side, bound_port(server)
    finally:
        await side.end_all()
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def incoming(call_id: str, **headers: str) -> bytes:
    sip = [{"name": "From", "value": "\"Ann\" <sip:+15551230001@trunk.example>;tag=1"},
           {"name": "To", "value": "<sip:+15559870000@sip.api.openai.com>"}]
    sip += [{"name": name, "value": value} for name, value in headers.items()]
    return json.dumps({"object": "event", "id": "evt_1", "type": "realtime.call.incoming",
                       "created_at": int(time.time()), "data": {"call_id": call_id, "sip_headers": sip}}).encode()


def signed(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {"content-type": "application/json", "webhook-id": "wh_1", "webhook-timestamp": str(ts),
            "webhook-signature": sign_webhook(secret, "wh_1", ts, body)}


async def test_only_signed_webhooks_start_calls(bus: Bus, nats_url: str) -> None:
    settings = load_settings(nats_url=nats_url, openai_webhook_secret=SECRET, session_lost_s=600)
    started: list[CallStarted] = []
    arrived = asyncio.Event()

    async def on_started(env: Envelope) -> None:
        started.append(CallStarted.parse(env.data))
        arrived.set()

    sub = await bus.subscribe(subjects.all_calls_started(), on_started)
    async with running_gateway(bus, settings) as gw, httpx.AsyncClient(base_url=gw.http_url) as client:
        body = incoming("rtc_forged")
        wrong = await client.post("/openai/webhook", content=body,
                                  headers=signed(body, "whsec_" + base64.b64encode(b"another key").decode()))
        assert wrong.status_code == 400 and "invalid webhook signature" in wrong.json()["error"]
        unsigned = await client.post("/openai/webhook", content=body, headers={"content-type": "application/json"})
        assert unsigned.status_code == 400 and "webhook-signature" in unsigned.json()["error"]
        stale = await client.post("/openai/webhook", content=body, headers=signed(body, timestamp=1_000_000))
        assert stale.status_code == 400 and "too old" in stale.json()["error"]
        tampered = await client.post("/openai/webhook", content=incoming("rtc_other"), headers=signed(body))
        assert tampered.status_code == 400

        good = incoming("rtc_good", **{"X-Switchboard-Run-Id": "r1", "Call-ID": "sip-call-1"})
        ok = await client.post("/openai/webhook", content=good, headers=signed(good))
        assert ok.status_code == 200, ok.text
        again = await client.post("/openai/webhook", content=good, headers=signed(good))  # a retried delivery
        assert again.json() == {"call_id": ok.json()["call_id"], "duplicate": True}
        async with running_gateway(bus, settings) as other, httpx.AsyncClient(base_url=other.http_url) as second:
            elsewhere = await second.post("/openai/webhook", content=good, headers=signed(good))
        assert elsewhere.json() == {"duplicate": True}  # the retry reached another replica: still one call
        await asyncio.wait_for(arrived.wait(), 15)
        await bus.nc.flush()
    await sub.unsubscribe()
    [call] = started  # the refused deliveries published nothing, the retries no second call
    assert call.call_id == ok.json()["call_id"] and call.carrier == "openai_sip"
    assert (call.carrier_call_id, call.stream_id, call.from_, call.to) == \
        ("rtc_good", "sip-call-1", "+15551230001", "+15559870000")
    assert call.custom_parameters == {"run_id": "r1"}


async def test_no_secret_refuses_every_webhook(bus: Bus, nats_url: str) -> None:
    settings = load_settings(nats_url=nats_url, openai_webhook_secret=None)
    async with running_gateway(bus, settings) as gw, httpx.AsyncClient(base_url=gw.http_url) as client:
        body = incoming("rtc_x")
        response = await client.post("/openai/webhook", content=body, headers=signed(body))
    assert response.status_code == 400 and "SWITCHBOARD_OPENAI_WEBHOOK_SECRET" in response.json()["error"]


async def test_a_call_no_session_takes_is_rejected(bus: Bus, nats_url: str, sip: tuple[SipSide, int]) -> None:
    side, port = sip
    settings = load_settings(nats_url=nats_url, openai_webhook_secret=SECRET, session_lost_s=0.5,
                             openai_api_url=f"http://127.0.0.1:{port}/v1")
    async with running_gateway(bus, settings) as gw:
        side.webhook_url = f"{gw.http_url}/openai/webhook"
        seen: dict[str, Envelope] = {}
        ended_seen = asyncio.Event()

        async def on_event(env: Envelope) -> None:
            seen[subjects.parse(env.subject).rest] = env
            if "ended" in seen:
                ended_seen.set()

        subs = [await bus.subscribe(subjects.all_calls_started(), on_event),
                await bus.subscribe("call.*.ended", on_event)]
        with pytest.raises(ValueError, match="rejected with SIP 480"):
            await SipLine.dial(sip_leg_url(port), from_="+15551230001", to="+15559870000", params={"run_id": "r2"})
        await asyncio.wait_for(ended_seen.wait(), 15)  # published once the reject went through
        for sub in subs:
            await sub.unsubscribe()
        started = CallStarted.parse(seen["started"].data)
        ended = seen["ended"]
        assert subjects.parse(ended.subject).call_id == started.call_id
    assert started.custom_parameters == {"run_id": "r2"} and started.carrier_call_id
    final = CallEnded.parse(ended.data)
    assert final.reason == "session_lost" and final.carrier_call_id == started.carrier_call_id
    assert side.calls == {}  # the rejected call is gone from the SIP side


async def test_an_unknown_call_is_refused(bus: Bus, sip: tuple[SipSide, int]) -> None:
    _, port = sip
    api = f"http://127.0.0.1:{port}/v1"
    client = openai.AsyncOpenAI(api_key="local", base_url=api, max_retries=0)
    try:
        with pytest.raises(openai.NotFoundError, match="unknown call"):
            await client.realtime.calls.accept("rtc_unknown", type="realtime")
        with pytest.raises(openai.NotFoundError):
            await client.realtime.calls.hangup("rtc_unknown")
    finally:
        await client.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await ModelSocket.connect(sideband_url(api, "rtc_unknown"), api_key=None)
    assert refused.value.status == 403

    # a session given a call the API does not know ends it: call.ended session_lost, accept's error kept
    call_id = subjects.new_call_id()
    info = CallStarted(call_id=call_id, carrier="openai_sip", agent="receptionist", audio_format="audio/pcmu",
                       carrier_call_id="rtc_unknown", started_at="2026-01-01T00:00:00+00:00")
    call = SidebandCall(bus, load_agent(ROOT / "agents" / "receptionist.yaml"), info,
                        ModelEndpoint("ws://unused", None, None), api_url=api)
    await call.run()
    await bus.flush_acks(5.0)  # published asynchronously: stored once acknowledged
    ended = await bus.last_message(subjects.CALLS_STREAM, subjects.call_ended(call_id))
    assert ended is not None
    final = CallEnded.parse(ended.data)
    assert final.reason == "session_lost" and final.error is not None and "accept failed" in final.error


async def test_a_webhook_signed_with_another_secret_starts_nothing(bus: Bus, nats_url: str,
                                                                   sip: tuple[SipSide, int]) -> None:
    """The local model signs with a secret the gateway does not have: the gateway answers 400 and the SIP leg is
    closed with that reason; no call starts."""
    side, port = sip
    other = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    settings = load_settings(nats_url=nats_url, openai_webhook_secret=other, session_lost_s=600)
    started: list[Envelope] = []

    async def on_started(env: Envelope) -> None:
        started.append(env)

    sub = await bus.subscribe(subjects.all_calls_started(), on_started)
    async with running_gateway(bus, settings) as gw:
        side.webhook_url = f"{gw.http_url}/openai/webhook"
        with pytest.raises(ValueError, match="webhook failed: HTTP 400"):
            await SipLine.dial(sip_leg_url(port), from_="+15551230001", to="+15559870000", params={})
        await bus.nc.flush()
    await sub.unsubscribe()
    assert started == [] and side.calls == {}
