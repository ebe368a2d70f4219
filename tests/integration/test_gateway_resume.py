"""Carrier-level reconnection through TwiML ``<Redirect>`` (issue 22 item 4).

Two gateways on one nats-server and an echo peer standing in for the session (it drops duplicates by
``Switchboard-Seq``, as the session does). A stopping gateway closes its Twilio streams with the resume marker
instead of ending the calls; the redirect, answered by another gateway, reconnects the same call id (no second
``started``) and the caller's audio keeps reaching the peer; once the call has ended, the redirect answers
``<Hangup/>``. Real uvicorn WebSockets, real JetStream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from services.gateway.server import RunningGateway, running_gateway
from shared import subjects
from shared.bus import Bus, Headers
from shared.carriers import twilio as tw
from shared.config import load_settings
from switchboard.caller.client import TwilioCallerSocket, post_twiml, voice_form
from switchboard.testing.echo_peer import EchoPeer
from tests.integration.gateway_support import TIMEOUT, AudioTap, Recorder, bus_fixture, wait_until  # noqa: F401

FORM = voice_form(from_="+15551230001", to="+15559870000", call_sid="CA" + "7" * 32)


@pytest.fixture(name="gw2")
async def second_gateway(nats_url: str) -> AsyncIterator[RunningGateway]:
    bus = await Bus.connect(nats_url, name="gateway-2", source="gateway")
    try:
        async with running_gateway(bus, load_settings(nats_url=nats_url, insecure_dev=True)) as running:
            yield running
    finally:
        await bus.close()


def on(gw: RunningGateway, url: str) -> str:
    """``url`` (an http:// or ws:// URL of any gateway on 127.0.0.1) sent to ``gw`` instead (the load balancer)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://127.0.0.1:{gw.port}/{rest.split('/', 1)[1]}"


async def open_stream(url: str, params: dict[str, str]) -> TwilioCallerSocket:
    sock = await TwilioCallerSocket.connect(url)
    sock.call_sid = FORM["CallSid"]
    await sock.start(params)
    return sock


async def until_closed(sock: TwilioCallerSocket) -> tuple[int | None, str]:
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(TIMEOUT):
            while True:
                await sock.ws.recv()
    return sock.ws.close_code, sock.ws.close_reason or ""


async def echoed(sock: TwilioCallerSocket, frames: int = 3) -> bool:
    """Send ``frames`` caller frames; True once the peer's echo comes back as outbound media."""
    for _ in range(frames):
        await sock.media(b"\x55" * 160)
    async with asyncio.timeout(TIMEOUT):
        while True:
            message = tw.parse_outbound(await sock.ws.recv())
            if isinstance(message, tw.OutboundMedia):
                return True


async def test_a_draining_gateway_hands_its_twilio_call_to_another(
        gw: RunningGateway, gw2: RunningGateway, peer: EchoPeer, recorder: Recorder, audio_tap: AudioTap) -> None:
    document = await post_twiml(gw.http_url + "/twilio/voice", FORM)
    url, params = tw.parse_twiml(document)
    call_id, redirect = params["call_id"], tw.parse_redirect(document)
    assert redirect is not None and redirect.endswith(f"/twilio/voice?resume={call_id}")
    first = await open_stream(url, params)
    await recorder.wait_for(lambda: recorder.of(call_id, "started"))
    await wait_until(lambda: call_id in peer.started)
    assert await echoed(first)

    await gw.gateway.drain(0)  # the drain deadline passed with the call still live
    assert await until_closed(first) == (1000, "resume")
    detached = await recorder.wait_for(lambda: recorder.of(call_id, "carrier.detached"))
    assert detached[0].json()["reason"] == "gateway_drain"
    assert not recorder.of(call_id, "ended")
    before = len(audio_tap.of(call_id))
    last_seq = max(e.seq or 0 for e in audio_tap.of(call_id) + detached)

    # Twilio requests the <Redirect>; the load balancer sends it to the ready gateway
    again = await post_twiml(on(gw2, redirect), FORM)
    url2, params2 = tw.parse_twiml(again)
    assert (params2["call_id"], params2["resume"]) == (call_id, "1")
    assert on(gw2, tw.parse_redirect(again) or "") == on(gw2, redirect)
    second = await open_stream(on(gw2, url2), params2)
    resumed = await recorder.wait_for(lambda: recorder.of(call_id, "carrier.resumed"))
    assert resumed[0].seq is not None and resumed[0].seq > last_seq  # continues the previous gateway's seq
    assert await echoed(second)  # the peer did not drop the new stream's audio as repeats
    assert len(audio_tap.of(call_id)) > before
    assert len(recorder.of(call_id, "started")) == 1  # the same call, not a new one

    await second.stop()
    ended = await recorder.wait_for(lambda: recorder.of(call_id, "ended"))
    assert [e.json()["reason"] for e in ended] == ["caller_hangup"]
    for _ in range(50):  # the ended seen live may be a moment ahead of its copy in the stream
        after = await post_twiml(on(gw2, redirect), FORM)
        if "<Hangup" in after:
            break
        await asyncio.sleep(0.05)
    assert "<Hangup" in after and tw.parse_redirect(after) is None


async def test_agent_hangup_closes_the_stream_and_the_redirect_hangs_up(
        gw: RunningGateway, peer: EchoPeer, recorder: Recorder) -> None:
    document = await post_twiml(gw.http_url + "/twilio/voice", FORM)
    url, params = tw.parse_twiml(document)
    call_id, redirect = params["call_id"], tw.parse_redirect(document)
    sock = await open_stream(url, params)
    await wait_until(lambda: call_id in peer.started)
    await peer.command(call_id, "transfer", {"to": "+15550001111"})
    await until_closed(sock)
    assert redirect is not None
    answer = await post_twiml(redirect, FORM)  # right away, as Twilio does: ended is already stored
    assert "<Dial>+15550001111</Dial>" in answer and "<Stream" not in answer


async def test_resume_of_an_unknown_or_invalid_call(gw: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gw.http_url) as client:
        unknown = await client.post("/twilio/voice", params={"resume": subjects.new_call_id()}, data=FORM)
        invalid = await client.post("/twilio/voice", params={"resume": "no/such id"}, data=FORM)
    assert unknown.status_code == 200 and "<Hangup" in unknown.text
    assert invalid.status_code == 400


async def test_a_stream_cannot_claim_a_live_call_id(gw: RunningGateway, recorder: Recorder) -> None:
    url, params = tw.parse_twiml(await post_twiml(gw.http_url + "/twilio/voice", FORM))
    first = await open_stream(url, params)
    await recorder.wait_for(lambda: recorder.of(params["call_id"], "started"))
    intruder = await open_stream(url, {**params, "resume": "1"})
    code, reason = await until_closed(intruder)
    assert code == 1008 and "already live" in reason
    assert not recorder.of(params["call_id"], "ended")
    await first.stop()
    with contextlib.suppress(ConnectionClosed):
        await first.ws.send(json.dumps({"event": "noop"}))
    await recorder.wait_for(lambda: recorder.of(params["call_id"], "ended"))
    await websockets.connect(url)  # the gateway still serves


async def test_replay_resends_the_kept_caller_audio_from_an_offset(
        gw: RunningGateway, peer: EchoPeer, recorder: Recorder, audio_tap: AudioTap, peer_bus: Bus) -> None:
    url, params = tw.parse_twiml(await post_twiml(gw.http_url + "/twilio/voice", FORM))
    call_id = params["call_id"]
    sock = await open_stream(url, params)
    await wait_until(lambda: call_id in peer.started)
    frames = [bytes([n]) * 160 for n in range(1, 11)]
    for frame in frames:
        await sock.media(frame)
    sent = b"".join(frames)
    await wait_until(lambda: sum(len(e.data) for e in audio_tap.of(call_id)) >= len(sent))
    await peer.command(call_id, "replay", {"from_bytes": 500})
    await wait_until(lambda: any(Headers.REPLAY in e.headers for e in audio_tap.of(call_id)))
    await asyncio.sleep(0.2)
    replayed = [e for e in audio_tap.of(call_id) if Headers.REPLAY in e.headers]
    assert replayed[0].headers[Headers.REPLAY] == "500"
    assert b"".join(e.data for e in replayed) == sent[500:]
    seqs = [e.seq or 0 for e in audio_tap.of(call_id)]
    assert seqs == sorted(seqs)
    await sock.stop()
