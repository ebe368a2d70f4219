"""Carrier sockets always end, with the end reason of what actually happened (issue 20 item 6, gateway part):
no ``start`` → closed 1008; no media for ``SWITCHBOARD_CARRIER_IDLE_S`` → ``ended(carrier_silent)``; a frame
over the WebSocket max size → closed 1009 and ``ended(protocol_error)``, never ``caller_hangup``. Twilio and
browser paths, real uvicorn WebSockets and a real nats-server; the timeouts are shortened by settings."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from services.gateway.server import WS_MAX_SIZE, RunningGateway, running_gateway
from shared.bus import Bus
from shared.config import load_settings
from shared.contracts import CarrierError
from switchboard.testing.echo_peer import EchoPeer
from tests.integration.gateway_support import TIMEOUT, Recorder, bus_fixture, media_frame, open_call  # noqa: F401

IDLE_S = 2.0
"""The carrier idle limit in these tests (s; production default 30)."""
START_S = 0.5
"""The start timeout in these tests (s; production 10)."""


@pytest.fixture(name="gw")
async def short_timeouts_gw(bus: Bus, nats_url: str) -> AsyncIterator[RunningGateway]:
    settings = load_settings(nats_url=nats_url, insecure_dev=True, carrier_idle_s=IDLE_S)
    async with running_gateway(bus, settings, start_timeout_s=START_S) as running:
        yield running


async def closed(ws: websockets.ClientConnection) -> tuple[int | None, str]:
    """Wait until the server closes ``ws`` (reading and dropping anything it sends); its code and reason."""
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(TIMEOUT):
            while True:
                await ws.recv()
    return ws.close_code, ws.close_reason or ""


@pytest.mark.parametrize("first", [None, json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})],
                         ids=["silent", "connected-only"])
async def test_twilio_socket_without_start_is_closed_1008(gw: RunningGateway, first: str | None) -> None:
    async with websockets.connect(gw.ws_url + "/twilio/media") as ws:
        if first is not None:
            await ws.send(first)
        code, reason = await closed(ws)
    assert code == 1008 and reason.startswith("no start within")
    assert not gw.gateway.calls


async def test_twilio_no_media_ends_carrier_silent(gw: RunningGateway, recorder: Recorder) -> None:
    ws, call_id, _ = await open_call(gw, recorder)
    code, reason = await closed(ws)
    ended = (await recorder.wait_for(lambda: recorder.of(call_id, "ended")))
    assert len(ended) == 1
    body = ended[0].json()
    assert body["reason"] == "carrier_silent" and body["idle_s"] == IDLE_S
    assert (code, reason) == (1000, "carrier_silent")


async def test_twilio_media_keeps_the_call_and_silence_after_it_ends_it(gw: RunningGateway, peer: EchoPeer,
                                                                        recorder: Recorder) -> None:
    """Media every 40 ms for three idle periods: the call stays up; then silence ends it as ``carrier_silent``."""
    ws, call_id, _ = await open_call(gw, recorder, peer)
    for n in range(1, int(3 * IDLE_S / 0.04)):
        await ws.send(media_frame(b"\x7f" * 160, n))
        await asyncio.sleep(0.04)
    assert not recorder.of(call_id, "ended")
    await closed(ws)
    ended = (await recorder.wait_for(lambda: recorder.of(call_id, "ended")))[0].json()
    assert ended["reason"] == "carrier_silent" and ended["audio_in_ms"] > 0


async def test_twilio_oversized_frame_is_protocol_error(gw: RunningGateway, peer: EchoPeer,
                                                        recorder: Recorder) -> None:
    bystander, other_id, _ = await open_call(gw, recorder, peer)

    async def keep_talking() -> None:  # the bystander is a live call: it keeps sending media
        for n in range(1, 10_000):
            await bystander.send(media_frame(b"\x7f" * 160, n))
            await asyncio.sleep(IDLE_S / 10)

    talking = asyncio.create_task(keep_talking())
    try:
        ws, call_id, _ = await open_call(gw, recorder, peer)
        await ws.send(json.dumps({"event": "media", "media": {"payload": "A" * (WS_MAX_SIZE + 1024)}}))
        code, _ = await closed(ws)
        assert code == 1009
        ended = (await recorder.wait_for(lambda: recorder.of(call_id, "ended")))[0].json()
        assert ended["reason"] == "protocol_error" and ended["close_code"] == 1009
        [error] = recorder.of(call_id, "carrier.error")
        assert CarrierError.parse(error.data) == CarrierError(code=1009, reason="websocket closed with 1009")
        assert not recorder.of(other_id, "ended")  # the other call is untouched
    finally:
        talking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await talking
    await bystander.send(json.dumps({"event": "stop"}))
    assert (await recorder.wait_for(lambda: recorder.of(other_id, "ended")))[0].json()["reason"] == "caller_hangup"
    await bystander.close()


async def test_twilio_close_without_stop_is_caller_hangup(gw: RunningGateway, recorder: Recorder) -> None:
    ws, call_id, _ = await open_call(gw, recorder)
    await ws.close()
    ended = (await recorder.wait_for(lambda: recorder.of(call_id, "ended")))[0].json()
    assert ended["reason"] == "caller_hangup" and ended["close_code"] == 1000


async def browser_socket(gw: RunningGateway) -> websockets.ClientConnection:
    async with httpx.AsyncClient(base_url=gw.http_url) as client:
        token = (await client.post("/browser/token")).json()["token"]
    return await websockets.connect(f"{gw.ws_url}/browser?token={token}")


async def browser_call(gw: RunningGateway) -> tuple[websockets.ClientConnection, str]:
    ws = await browser_socket(gw)
    await ws.send(json.dumps({"event": "start", "sample_rate": 24000}))
    started = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert started["event"] == "started"
    return ws, str(started["call_id"])


async def test_browser_socket_without_start_is_closed_1008(gw: RunningGateway) -> None:
    ws = await browser_socket(gw)
    code, reason = await closed(ws)
    assert code == 1008 and reason.startswith("no start within")


async def test_browser_no_audio_ends_carrier_silent(gw: RunningGateway, recorder: Recorder) -> None:
    ws, call_id = await browser_call(gw)
    code, reason = await closed(ws)
    assert (code, reason) == (1000, "carrier_silent")
    ended = (await recorder.wait_for(lambda: recorder.of(call_id, "ended")))[0].json()
    assert ended["reason"] == "carrier_silent"


async def test_browser_oversized_frame_is_protocol_error(gw: RunningGateway, recorder: Recorder) -> None:
    ws, call_id = await browser_call(gw)
    await ws.send(b"\x00" * (WS_MAX_SIZE + 2))
    code, _ = await closed(ws)
    assert code == 1009
    ended = (await recorder.wait_for(lambda: recorder.of(call_id, "ended")))[0].json()
    assert ended["reason"] == "protocol_error" and ended["close_code"] == 1009
