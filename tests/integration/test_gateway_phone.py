"""``/phone``'s protocol on the gateway: the microphone's real sample rate (44,100 Hz accepted and converted to
24 kHz, not mislabelled), the call page link, the live transcript forwarded to the page, the agent version
chosen at the start, and the page's assets (AudioWorklet, no ScriptProcessorNode). Real uvicorn WebSockets
and nats-server."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import websockets

from services.gateway.server import RunningGateway
from shared import subjects
from shared.bus import Bus
from tests.integration.gateway_support import TIMEOUT, AudioTap, Recorder, bus_fixture, wait_until  # noqa: F401


async def browser_socket(gw: RunningGateway) -> websockets.ClientConnection:
    async with httpx.AsyncClient(base_url=gw.http_url) as client:
        token = (await client.post("/browser/token")).json()["token"]
    return await websockets.connect(f"{gw.ws_url}/browser?token={token}")


async def test_real_rate_transcript_and_call_page(gw: RunningGateway, recorder: Recorder, audio_tap: AudioTap,
                                                  peer_bus: Bus) -> None:
    ws = await browser_socket(gw)
    await ws.send(json.dumps({"event": "start", "sample_rate": 44100}))
    started = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    call_id = started["call_id"]
    assert started["call_page"].endswith(f"/ui/calls/{call_id}")
    event = (await recorder.wait_for(lambda: recorder.of(call_id, "started")))[0].json()
    assert event["custom_parameters"]["input_format"] == "audio/pcm;rate=44100"
    assert event["audio_format"] == "audio/pcm;rate=24000" and event["agent_version"]

    # one second of a 440 Hz tone at 44.1 kHz arrives as about one second of 24 kHz audio
    t = np.arange(44100) / 44100
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()
    for i in range(0, len(pcm), 1764):  # 20 ms frames
        await ws.send(pcm[i:i + 1764])
    await wait_until(lambda: sum(len(e.data) for e in audio_tap.of(call_id)) >= 2 * 24000 * 0.9)
    received = np.frombuffer(b"".join(e.data for e in audio_tap.of(call_id)), dtype="<i2")
    assert len(received) <= 24000 * 1.01  # not 48 kHz, not the input rate
    spectrum = np.abs(np.fft.rfft(received[2400:21600]))
    peak_hz = np.argmax(spectrum) * 24000 / len(received[2400:21600])
    assert abs(peak_hz - 440) < 10  # pitch kept: the declared rate is the real one

    # the session's transcript events reach the page
    await peer_bus.publish(subjects.rt_server(call_id, "conversation.item.input_audio_transcription.completed"),
                           {"type": "x", "item_id": "u1", "transcript": "book me in"}, call_id=call_id)
    await peer_bus.publish(subjects.rt_server(call_id, "response.output_audio_transcript.delta"),
                           {"type": "x", "item_id": "a1", "delta": "Sure"}, call_id=call_id)
    await peer_bus.publish(subjects.rt_server(call_id, "response.function_call_arguments.done"),
                           {"type": "x", "name": "book_appointment", "arguments": "{}"}, call_id=call_id)
    seen: list[dict[str, object]] = []
    async with asyncio.timeout(TIMEOUT):
        while len(seen) < 3:
            msg = await ws.recv()
            if isinstance(msg, str) and json.loads(msg)["event"] in ("transcript", "transcript_delta", "tool"):
                seen.append(json.loads(msg))
    assert {"event": "transcript", "role": "user", "text": "book me in", "item_id": "u1"} in seen
    assert {"event": "transcript_delta", "item_id": "a1", "delta": "Sure"} in seen
    assert any(m.get("name") == "book_appointment" for m in seen)
    await ws.send(json.dumps({"event": "stop"}))
    await ws.close()


async def test_rates_outside_the_range_are_refused(gw: RunningGateway) -> None:
    for rate in (7999, 48001, "44100", 44100.5):
        ws = await browser_socket(gw)
        await ws.send(json.dumps({"event": "start", "sample_rate": rate}))
        async with asyncio.timeout(TIMEOUT):
            try:
                while True:
                    await ws.recv()
            except websockets.exceptions.ConnectionClosed:
                pass
        assert ws.close_code == 1008 and "sample_rate" in (ws.close_reason or "")


async def test_phone_page_uses_an_audio_worklet(gw: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gw.http_url) as client:
        page = (await client.get("/phone")).text
        script = (await client.get("/phone.js")).text
        worklet = await client.get("/phone-worklet.js")
    assert 'id="transcript"' in page
    assert "audioWorklet.addModule" in script and "createScriptProcessor" not in script
    assert "sample_rate: ctx.sampleRate" in script
    assert worklet.status_code == 200 and "registerProcessor" in worklet.text
