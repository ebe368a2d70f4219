"""Bad input on ``WS /twilio/media``: close 1008 with a reason, ``ended(protocol_error)`` when a call exists,
other calls and the process unaffected; a slow carrier socket never blocks another call."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from services.gateway.server import RunningGateway, running_gateway
from shared.bus import Bus
from shared.config import load_settings
from shared.contracts import CallEnded, CarrierError
from switchboard.testing.echo_peer import EchoPeer
from tests.integration.gateway_support import (  # noqa: F401 - bus_fixture
    TIMEOUT,
    Recorder,
    bus_fixture,
    media_frame,
    open_call,
    recv_json,
    start_frame,
    wait_until,
)

BEFORE_START: list[tuple[str, str | bytes, str]] = [
    ("malformed json", "{not json", "malformed JSON"),
    ("not an object", "[1, 2]", "message is not a JSON object"),
    ("unknown event", '{"event": "dance"}', "unknown event 'dance'"),
    ("media before start", media_frame(b"\xff" * 160, 1), "media before start"),
    ("dtmf before start", '{"event":"dtmf","dtmf":{"digit":"1"}}', "dtmf before start"),
    ("binary frame", b"\x00\x01", "binary frames are not part of the Twilio protocol"),
    ("over 64 KiB", json.dumps({"event": "connected", "pad": "x" * 70_000}), "message over 64 KiB"),
    ("start without fields", '{"event":"start","start":{}}', "invalid start"),
]

AFTER_START: list[tuple[str, str, str]] = [
    ("invalid base64", json.dumps({"event": "media", "media": {"payload": "!!not base64!!"}}),
     "invalid base64 in media.payload"),
    ("second start", start_frame("again"), "second start"),
    ("media over 64 KiB", media_frame(b"\xff" * 60_000, 1), "message over 64 KiB"),
    ("media without payload", '{"event":"media","media":{}}', "invalid media"),
    ("bad dtmf digit", '{"event":"dtmf","dtmf":{"digit":"xyz"}}', "invalid dtmf digit"),
    ("malformed json after start", '{"event": "media", ', "malformed JSON"),
]


@pytest.mark.parametrize(("case", "frame", "reason"), BEFORE_START, ids=[c[0] for c in BEFORE_START])
async def test_bad_input_before_start_closes_1008(gw: RunningGateway, case: str, frame: str | bytes,
                                                  reason: str) -> None:
    async with websockets.connect(gw.ws_url + "/twilio/media", max_size=None) as ws:
        await ws.send(frame)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert ws.close_code == 1008
    assert (ws.close_reason or "").startswith(reason)


@pytest.mark.parametrize(("case", "frame", "reason"), AFTER_START, ids=[c[0] for c in AFTER_START])
async def test_bad_input_after_start_ends_call_and_spares_others(
        gw: RunningGateway, peer: EchoPeer, recorder: Recorder, case: str, frame: str, reason: str) -> None:
    bystander, other_id, _ = await open_call(gw, recorder, peer)
    ws, call_id, _ = await open_call(gw, recorder, peer)
    await ws.send(frame)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert ws.close_code == 1008 and (ws.close_reason or "").startswith(reason)
    ended_env = (await recorder.wait_for(lambda: recorder.of(call_id, "ended")))[0]
    ended = CallEnded.parse(ended_env.data)
    assert ended.reason == "protocol_error" and ended.error is not None and ended.error.startswith(reason)
    # the bad frame is reported as carrier.error (documented in docs/events.asyncapi.yaml), before ended
    [error_env] = recorder.of(call_id, "carrier.error")
    error = CarrierError.parse(error_env.data)
    assert error.code == "invalid_frame" and error.reason == ended.error
    assert error_env.seq is not None and ended_env.seq is not None and error_env.seq < ended_env.seq
    # the other call still works end to end
    for n in (1, 2):  # 40 ms: one audio.in message
        await bystander.send(media_frame(b"\x42" * 160, n))
    msg = await recv_json(bystander)
    assert base64.b64decode(msg["media"]["payload"]) == b"\x42" * 320
    assert not recorder.of(other_id, "ended")
    await bystander.close()


def _garbage(rng: random.Random) -> str:
    """A random frame: mutated valid messages, random JSON values, random text."""
    pick = rng.randrange(4)
    if pick == 0:
        frame = bytearray(media_frame(bytes(rng.randrange(256) for _ in range(160)), 1).encode())
        for _ in range(rng.randrange(1, 6)):
            frame[rng.randrange(len(frame))] = rng.randrange(32, 127)
        return frame.decode("ascii", "replace")
    if pick == 1:
        value: Any = rng.choice([None, 1, "x", [], {"event": rng.choice(["media", "mark", "stop", "start", "?"])}])
        return json.dumps(value)
    if pick == 2:
        return json.dumps({"event": "mark", "mark": {"name": "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(8))}})
    return "".join(chr(rng.randrange(1, 0xD7FF)) for _ in range(rng.randrange(0, 64)))


async def test_random_frames_never_break_the_gateway(gw: RunningGateway, peer: EchoPeer, recorder: Recorder) -> None:
    """Seeded random garbage after a valid start: each socket either carries on or closes 1008/1000."""
    rng = random.Random(1234)
    for _ in range(25):
        ws, _call_id, _ = await open_call(gw, recorder, peer)
        for _ in range(5):
            try:
                await ws.send(_garbage(rng))
            except ConnectionClosed:
                break
        await ws.close()
        assert ws.close_code in (1000, 1008)
    # the gateway still serves a clean call
    ws, _, _ = await open_call(gw, recorder, peer)
    for n in (1, 2):  # 40 ms: one audio.in message
        await ws.send(media_frame(b"\x10" * 160, n))
    assert (await recv_json(ws))["event"] == "media"
    await ws.close()


@pytest.fixture
async def small_queue_gw(bus: Bus, nats_url: str) -> AsyncIterator[RunningGateway]:
    settings = load_settings(nats_url=nats_url, insecure_dev=True)
    async with running_gateway(bus, settings, max_outbound_chunks=8) as running:
        yield running


def _client_frame(text: str) -> bytes:
    """A masked RFC 6455 text frame (client → server)."""
    payload = text.encode()
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = bytes([0x81, 0x80 | size])
    elif size < 65536:
        header = bytes([0x81, 0x80 | 126]) + struct.pack("!H", size)
    else:
        header = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", size)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _stalled_twilio_client(port: int, run_id: str) -> tuple[asyncio.StreamWriter, socket.socket]:
    """A Twilio client on a raw socket with a tiny receive buffer that never reads after the handshake."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no autotuning: the window stays small
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /twilio/media HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert status.startswith(b"HTTP/1.1 101")
    writer.write(_client_frame(start_frame(run_id)))
    await writer.drain()
    return writer, sock


async def test_slow_socket_drops_its_own_frames_only(small_queue_gw: RunningGateway, peer: EchoPeer,
                                                     recorder: Recorder) -> None:
    """A carrier that stops reading fills its own queue (drops counted); another call is unaffected."""
    writer, _sock = await _stalled_twilio_client(small_queue_gw.port, "stalled")
    slow_id = (await recorder.wait_for(lambda: recorder.started_with("stalled")))["call_id"]
    fast, _fast_id, _ = await open_call(small_queue_gw, recorder, peer)
    chunk = b"\x55" * 30_000  # 40 KB of base64 per frame: the socket buffers fill after a few hundred KB
    bridge = small_queue_gw.gateway.calls[slow_id]
    for _ in range(400):
        await peer.send_audio(slow_id, chunk)
    await peer.bus.nc.flush()
    for n in (1, 2):  # 40 ms: one audio.in message
        await fast.send(media_frame(b"\x33" * 160, n))
    msg = await recv_json(fast)
    assert base64.b64decode(msg["media"]["payload"]) == b"\x33" * 320
    await wait_until(lambda: bridge.queue.dropped > 0)
    await fast.close()
    writer.transport.abort()
    ended = (await recorder.wait_for(lambda: recorder.of(slow_id, "ended")))[0].json()
    assert ended["outbound_dropped"] > 0


async def test_bus_failure_closes_1011_and_the_process_carries_on(nats_url: str) -> None:
    """NATS gone under the gateway: the socket closes with 1011 instead of hanging; the app keeps serving."""
    broken = await Bus.connect(nats_url, name="broken", source="gateway")
    async with running_gateway(broken, load_settings(nats_url=nats_url, insecure_dev=True)) as running:
        await broken.close()
        async with websockets.connect(running.ws_url + "/twilio/media") as ws:
            await ws.send(start_frame("no-bus"))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 1011
        async with websockets.connect(running.ws_url + "/twilio/media") as ws2:
            await ws2.send("{bad")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws2.recv(), TIMEOUT)
        assert ws2.close_code == 1008


frames_strategy = st.lists(st.one_of(
    st.text(max_size=120),
    st.binary(max_size=64),
    st.fixed_dictionaries({"event": st.sampled_from(["media", "mark", "dtmf", "stop", "start", "connected", "x"])},
                          optional={"media": st.dictionaries(st.sampled_from(["payload", "track", "chunk"]),
                                                             st.text(max_size=12) | st.integers(), max_size=3),
                                    "mark": st.dictionaries(st.just("name"), st.text(max_size=12)),
                                    "dtmf": st.dictionaries(st.just("digit"), st.text(max_size=2)),
                                    "streamSid": st.text(max_size=8)}).map(json.dumps),
), min_size=1, max_size=4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=frames_strategy)
async def test_fuzz_twilio_handler(gw: RunningGateway, peer: EchoPeer, recorder: Recorder,
                                   frames: list[str | bytes]) -> None:
    """Hypothesis-generated frames after a valid start: the socket carries on or closes 1000/1008, never
    anything else, and the gateway keeps serving."""
    ws, _call_id, _ = await open_call(gw, recorder, peer)
    for item in frames:
        try:
            await ws.send(item)
        except ConnectionClosed:
            break
    await ws.close()
    assert ws.close_code in (1000, 1008)
    async with httpx.AsyncClient(base_url=gw.http_url) as client:
        assert (await client.get("/healthz")).status_code == 200
