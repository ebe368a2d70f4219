"""A stopping gateway drains (issue 22 items 4 and 5): ``/readyz`` 503 at once, no new streams, live calls run
until they end (with their own reason) or ``SWITCHBOARD_DRAIN_S`` passes (``drain_timeout``, never
``caller_hangup``); a socket that breaks without a close handshake ends ``lost``. Real uvicorn WebSockets and
a real nats-server."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from services.gateway.server import RunningGateway
from services.gateway.twilio import disconnect_reason
from switchboard.testing.echo_peer import EchoPeer
from tests.integration.gateway_support import (  # noqa: F401 - bus_fixture
    TIMEOUT,
    Recorder,
    bus_fixture,
    media_frame,
    open_call,
    wait_until,
)


async def readyz(gw: RunningGateway) -> int:
    async with httpx.AsyncClient(base_url=gw.http_url) as client:
        return (await client.get("/readyz")).status_code


async def test_drain_refuses_new_streams_and_lets_live_calls_finish(gw: RunningGateway, recorder: Recorder,
                                                                    peer: EchoPeer) -> None:
    await wait_until(lambda: gw.gateway.readiness is not None and gw.gateway.readiness.ready)
    assert await readyz(gw) == 200
    ws, call_id, _ = await open_call(gw, recorder, peer)
    drain = asyncio.create_task(gw.gateway.drain(3600))
    try:
        await wait_until(lambda: not gw.gateway.accepting)
        await asyncio.sleep(0.05)  # the drain's readiness round (no network) has run
        assert await readyz(gw) == 503  # no wait for the next readiness round
        with pytest.raises((ConnectionClosed, InvalidStatus)):  # refused: 1013 before any start
            async with websockets.connect(gw.ws_url + "/twilio/media") as refused:
                await refused.recv()
        for n in range(1, 6):  # the live call still flows while the gateway drains
            await ws.send(media_frame(b"\x7f" * 160, n))
        await asyncio.sleep(0.2)
        assert not drain.done() and not recorder.of(call_id, "ended")
        await ws.send(json.dumps({"event": "stop"}))
        await asyncio.wait_for(drain, TIMEOUT)  # the last call ended: the drain is over
    finally:
        drain.cancel()
    ended = (await recorder.wait_for(lambda: recorder.of(call_id, "ended")))
    assert [e.json()["reason"] for e in ended] == ["caller_hangup"]
    await ws.close()


async def test_drain_timeout_ends_the_calls_left_with_drain_timeout(gw: RunningGateway, recorder: Recorder,
                                                                   peer: EchoPeer) -> None:
    ws, call_id, _ = await open_call(gw, recorder, peer)
    await asyncio.wait_for(gw.gateway.drain(0.3), TIMEOUT)
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(TIMEOUT):
            while True:
                await ws.recv()
    assert ws.close_code == 1001
    ended = await recorder.wait_for(lambda: recorder.of(call_id, "ended"))
    assert [e.json()["reason"] for e in ended] == ["drain_timeout"]
    assert not gw.gateway.calls


@pytest.mark.parametrize(("code", "reason"), [(1000, "caller_hangup"), (1001, "caller_hangup"),
                                              (1005, "caller_hangup"), (1006, "lost"), (1012, "lost"),
                                              (1007, "protocol_error"), (1009, "protocol_error")])
def test_disconnect_reasons_follow_the_close_code(code: int, reason: str) -> None:
    got, detail = disconnect_reason({"type": "websocket.disconnect", "code": code})
    assert (got, detail["close_code"]) == (reason, code)
