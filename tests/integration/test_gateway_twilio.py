"""The gateway's Twilio path against a real nats-server, a real uvicorn server and real WebSocket clients.

An :class:`~switchboard.testing.echo_peer.EchoPeer` on its own bus connection stands in for the session.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from services.gateway.outbound import MAX_CHUNK_BYTES
from services.gateway.server import RunningGateway, running_gateway
from shared import subjects
from shared.audio import PCMU
from shared.bus import Bus, Headers
from shared.carriers.twilio import MAX_MESSAGE_BYTES, parse_redirect, parse_twiml
from shared.config import load_settings
from switchboard.testing.echo_peer import EchoPeer
from tests.integration.gateway_support import (  # noqa: F401 - bus_fixture
    TIMEOUT,
    AudioTap,
    Recorder,
    bus_fixture,
    media_frame,
    open_call,
    recv_json,
    wait_until,
)


async def test_twiml_voice_webhook(gw: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gw.http_url) as client:
        r = await client.post("/twilio/voice", data={"From": "+15551230001", "To": "+15559870000", "CallSid": "CA1"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/xml")
    url, params = parse_twiml(r.text)
    assert url == f"ws://127.0.0.1:{gw.port}/twilio/media"
    call_id = params.pop("call_id")  # chosen by the webhook, so the <Redirect> can name it
    assert subjects.validate_call_id(call_id) == call_id
    assert params == {"agent": "receptionist", "caller": "+15551230001", "called": "+15559870000"}
    assert parse_redirect(r.text) == f"http://127.0.0.1:{gw.port}/twilio/voice?resume={call_id}"


async def test_twiml_uses_public_url(bus: Bus, nats_url: str) -> None:
    settings = load_settings(nats_url=nats_url, insecure_dev=True, public_url="https://voice.example.com/base")
    async with running_gateway(bus, settings) as running, httpx.AsyncClient(base_url=running.http_url) as client:
        r = await client.post("/twilio/voice", data={"From": "+1"})
    assert parse_twiml(r.text)[0] == "wss://voice.example.com/base/twilio/media"
    assert (parse_redirect(r.text) or "").startswith("https://voice.example.com/base/twilio/voice?resume=call_")


async def test_full_call_every_message_shape(gw: RunningGateway, peer: EchoPeer, recorder: Recorder,
                                             peer_bus: Bus, audio_tap: AudioTap) -> None:
    ws, call_id, started = await open_call(gw, recorder, peer)
    assert subjects.validate_call_id(call_id) == call_id
    assert started["carrier"] == "twilio" and started["audio_format"] == PCMU
    assert started["from"] == "+15551230001" and started["to"] == "+15559870000"
    assert started["agent"] == "receptionist"
    assert started["carrier_call_id"] == "CA" + "1" * 32
    assert started["stream_id"] == "MZ00000000000000000000000000000001"
    assert started["started_at"]
    # caller audio: in order, raw bytes, with the audio format header, 40 ms (two Twilio frames) a message
    heard = audio_tap.of(call_id)
    frames = [bytes([i]) * 160 for i in range(1, 11)]
    pairs = [frames[i] + frames[i + 1] for i in range(0, len(frames), 2)]
    for n, frame in enumerate(frames, start=1):
        await ws.send(media_frame(frame, n))
    # the echo peer sends each audio.in message back as an output_audio.delta: media then mark, per chunk
    received: list[bytes] = []
    marks: list[str] = []
    while len(marks) < len(pairs):
        msg = await recv_json(ws)
        if msg["event"] == "media":
            assert msg["streamSid"] == "MZ00000000000000000000000000000001"
            assert len(marks) == len(received)  # a mark follows each chunk
            received.append(base64.b64decode(msg["media"]["payload"]))
        else:
            assert msg["event"] == "mark" and msg["streamSid"] == "MZ00000000000000000000000000000001"
            marks.append(msg["mark"]["name"])
    assert received == pairs
    item = peer.item_ids[call_id]
    assert marks == [f"{item}:{320 * n}" for n in range(1, 6)]
    await wait_until(lambda: len(heard) >= len(pairs))
    assert [e.data for e in heard] == pairs
    assert all(e.headers[Headers.AUDIO_FORMAT] == PCMU for e in heard)
    assert [e.seq for e in heard] == sorted(e.seq for e in heard if e.seq is not None)
    # mark echoes (played) → carrier.mark: the first at once, the ones right after it held and replaced by the
    # latest (played_bytes is cumulative), which goes out when the publish interval has passed
    for n, name in enumerate(marks[:3], start=1):
        await ws.send(json.dumps({"event": "mark", "sequenceNumber": str(20 + n), "streamSid": "MZ1",
                                  "mark": {"name": name}}))
    echoes = await recorder.wait_for(lambda: any(e.json()["played_bytes"] == 960
                                                 for e in recorder.of(call_id, "carrier.mark"))
                                     and recorder.of(call_id, "carrier.mark"))
    expected = [{"name": marks[i], "item_id": item, "played_bytes": 320 * (i + 1), "cleared": False} for i in range(3)]
    bodies = [e.json() for e in echoes]
    assert bodies[0] == expected[0] and bodies[-1] == expected[2]
    assert all(b in expected for b in bodies) and sorted(bodies, key=lambda b: b["played_bytes"]) == bodies
    # dtmf
    await ws.send(json.dumps({"event": "dtmf", "streamSid": "MZ1", "sequenceNumber": "30",
                              "dtmf": {"track": "inbound_track", "digit": "7"}}))
    dtmf = await recorder.wait_for(lambda: recorder.of(call_id, "carrier.dtmf"))
    assert dtmf[0].json() == {"digit": "7"}
    # stop → ended(caller_hangup) with durations
    await ws.send(json.dumps({"event": "stop", "sequenceNumber": "31", "streamSid": "MZ1",
                              "stop": {"accountSid": "AC1", "callSid": "CA1"}}))
    ended = (await recorder.wait_for(lambda: recorder.of(call_id, "ended")))[0].json()
    assert ended["reason"] == "caller_hangup"
    assert ended["audio_in_ms"] == 200.0 and ended["audio_out_ms"] == 200.0
    assert ended["duration_ms"] > 0
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert ws.close_code == 1000
    # the lifecycle events are in the CALLS stream, in order
    kinds = [env.subject.split(".", 2)[2] async for env in peer_bus.replay(subjects.call_all(call_id),
                                                                         subjects.CALLS_STREAM)]
    assert kinds[0] == "started" and kinds[-1] == "ended"
    assert kinds.count("carrier.mark") == len(bodies) and "carrier.dtmf" in kinds


async def test_clear_is_prompt_and_pending_marks_echo_cleared(gw: RunningGateway, peer: EchoPeer,
                                                              recorder: Recorder) -> None:
    ws, call_id, _ = await open_call(gw, recorder, peer)
    for i in range(5):
        await peer.send_audio(call_id, bytes([i]) * 800, item_id="item_a")
    names: list[str] = []
    while len(names) < 5:
        msg = await recv_json(ws)
        if msg["event"] == "mark":
            names.append(msg["mark"]["name"])
    # the first two chunks "played"; the rest are pending when the session clears
    for name in names[:2]:
        await ws.send(json.dumps({"event": "mark", "streamSid": "MZ1", "sequenceNumber": "9", "mark": {"name": name}}))
    await recorder.wait_for(lambda: any(e.json()["played_bytes"] == 1600 for e in recorder.of(call_id, "carrier.mark")))
    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    await peer.command(call_id, "clear", {"reason": "barge_in"})
    msg = await recv_json(ws)
    assert msg == {"event": "clear", "streamSid": "MZ00000000000000000000000000000001"}
    assert loop.time() - sent_at < 5.0  # causality with a generous bound; the 10 ms figure is in bench/gateway.py
    # Twilio echoes every pending mark right after a clear
    for name in names[2:]:
        await ws.send(json.dumps({"event": "mark", "streamSid": "MZ1", "sequenceNumber": "9", "mark": {"name": name}}))
    echoes = await recorder.wait_for(lambda: len(recorder.of(call_id, "carrier.mark")) >= 5 and
                                     recorder.of(call_id, "carrier.mark"))
    bodies = [e.json() for e in echoes]
    assert [b["cleared"] for b in bodies] == [False, False, True, True, True]
    assert [b["played_bytes"] for b in bodies] == [800, 1600, 1600, 1600, 1600]
    await ws.close()
    ended = (await recorder.wait_for(lambda: recorder.of(call_id, "ended")))[0].json()
    assert ended["reason"] == "caller_hangup"  # a disconnect without stop


@pytest.mark.parametrize(("verb", "payload", "reason"), [
    ("hangup", {}, "agent_hangup"),
    ("transfer", {"to": "+15550000000"}, "transfer"),
])
async def test_agent_ends_the_stream(gw: RunningGateway, peer: EchoPeer, recorder: Recorder, verb: str,
                                     payload: dict[str, Any], reason: str) -> None:
    ws, call_id, _ = await open_call(gw, recorder, peer)
    await peer.send_audio(call_id, b"\x7f" * 400, item_id="goodbye")
    await peer.command(call_id, verb, payload)
    events: list[str] = []
    with pytest.raises(ConnectionClosed):
        while True:
            events.append((await recv_json(ws))["event"])
    assert events == ["media", "mark"]  # audio already queued is sent before the stream closes
    assert ws.close_code == 1000 and ws.close_reason == reason
    ended = (await recorder.wait_for(lambda: recorder.of(call_id, "ended")))[0].json()
    assert ended["reason"] == reason
    if verb == "transfer":
        assert ended["transfer_to"] == "+15550000000"


async def test_play_command_and_dedupe_of_retried_delta(gw: RunningGateway, peer: EchoPeer, peer_bus: Bus,
                                                        recorder: Recorder) -> None:
    ws, call_id, _ = await open_call(gw, recorder, peer)
    subject = subjects.rt_server(call_id, "response.output_audio.delta")
    event = {"type": "response.output_audio.delta", "item_id": "item_d", "response_id": "r",
             "delta": base64.b64encode(b"\x01" * 160).decode()}
    headers = await peer_bus.publish(subject, event, call_id=call_id)
    # a retried publish carries the same seq: it must not play twice
    await peer_bus.nc.publish(subject, json.dumps(event).encode(), headers=headers)
    await peer.command(call_id, "play", {"audio": base64.b64encode(b"\x02" * 160).decode(), "item_id": "item_p"})
    got = [await recv_json(ws) for _ in range(4)]
    assert [m["event"] for m in got] == ["media", "mark", "media", "mark"]
    assert [m["mark"]["name"] for m in got if m["event"] == "mark"] == ["item_d:160", "item_p:160"]
    await ws.close()


async def test_a_long_delta_goes_out_in_messages_under_twilios_limit(gw: RunningGateway, peer: EchoPeer,
                                                                     peer_bus: Bus, recorder: Recorder) -> None:
    # e.g. what a new session says at once after a handover: 10 s of μ-law in one delta
    ws, call_id, _ = await open_call(gw, recorder, peer)
    audio = bytes(range(256)) * 320
    event = {"type": "response.output_audio.delta", "item_id": "item_l", "response_id": "r",
             "delta": base64.b64encode(audio).decode()}
    await peer_bus.publish(subjects.rt_server(call_id, "response.output_audio.delta"), event, call_id=call_id)
    chunks = -(-len(audio) // MAX_CHUNK_BYTES)
    got = [await recv_json(ws) for _ in range(2 * chunks)]
    media = [base64.b64decode(m["media"]["payload"]) for m in got if m["event"] == "media"]
    assert b"".join(media) == audio and all(len(part) <= MAX_CHUNK_BYTES for part in media)
    assert all(len(json.dumps(m)) < MAX_MESSAGE_BYTES for m in got)
    marks = [m["mark"]["name"] for m in got if m["event"] == "mark"]
    assert marks[-1] == f"item_l:{len(audio)}" and len(marks) == chunks
    await ws.close()


async def test_calls_are_isolated(gw: RunningGateway, peer: EchoPeer, recorder: Recorder) -> None:
    ws_a, call_a, _ = await open_call(gw, recorder, peer)
    ws_b, call_b, _ = await open_call(gw, recorder, peer)
    assert call_a != call_b
    for n in (1, 2):  # 40 ms each: one audio.in message per call
        await ws_a.send(media_frame(b"\xaa" * 160, n))
        await ws_b.send(media_frame(b"\xbb" * 160, n))
    msg_a, msg_b = await recv_json(ws_a), await recv_json(ws_b)
    assert base64.b64decode(msg_a["media"]["payload"]) == b"\xaa" * 320
    assert base64.b64decode(msg_b["media"]["payload"]) == b"\xbb" * 320
    await ws_a.close()
    await ws_b.close()


async def test_one_trace_per_call_rooted_at_the_gateway(gw: RunningGateway, peer: EchoPeer, recorder: Recorder,
                                                        audio_tap: AudioTap) -> None:
    """Every message the gateway publishes for a call carries the trace of the call's root span."""
    from shared.telemetry import setup_telemetry

    setup_telemetry("switchboard-test")  # a real tracer provider (idempotent: the first call wins)
    ws, call_id, _ = await open_call(gw, recorder, peer)
    heard = audio_tap.of(call_id)
    await ws.send(media_frame(b"\x01" * 160, 1))
    await ws.send(media_frame(b"\x02" * 160, 2))  # 40 ms: one audio.in message
    mark = (await recv_json(ws), await recv_json(ws))[1]
    await ws.send(json.dumps({"event": "mark", "streamSid": "MZ1", "sequenceNumber": "3", "mark": mark["mark"]}))
    await recorder.wait_for(lambda: recorder.of(call_id, "carrier.mark"))
    await ws.close()
    await recorder.wait_for(lambda: recorder.of(call_id, "ended"))
    await wait_until(lambda: bool(heard))
    envelopes = [*recorder.of(call_id, "started"), heard[0], *recorder.of(call_id, "carrier.mark"),
                 *recorder.of(call_id, "ended")]
    trace_ids = {env.headers[Headers.TRACEPARENT].split("-")[1] for env in envelopes}
    assert len(trace_ids) == 1 and trace_ids != {"0" * 32}


async def test_caller_audio_goes_out_40_ms_a_message_and_the_rest_before_ended(
        gw: RunningGateway, recorder: Recorder, audio_tap: AudioTap) -> None:
    """Two Twilio frames per ``audio.in`` message; a frame still held when the call ends is published."""
    ws, call_id, _ = await open_call(gw, recorder)
    heard = audio_tap.of(call_id)
    for n in range(1, 4):
        await ws.send(media_frame(bytes([n]) * 160, n))
    await wait_until(lambda: len(heard) >= 1)
    assert [e.data for e in heard] == [b"\x01" * 160 + b"\x02" * 160]  # the third frame is held
    await ws.send(json.dumps({"event": "stop", "sequenceNumber": "9", "streamSid": "MZ1",
                              "stop": {"accountSid": "AC1", "callSid": "CA1"}}))
    ended = (await recorder.wait_for(lambda: recorder.of(call_id, "ended")))[0].json()
    await wait_until(lambda: len(heard) >= 2)
    assert [e.data for e in heard] == [b"\x01" * 160 + b"\x02" * 160, b"\x03" * 160]
    assert ended["audio_in_ms"] == 60.0
    assert heard[1].seq is not None and heard[0].seq is not None and heard[1].seq == heard[0].seq + 1
    await ws.close()


async def test_audio_in_ms_20_publishes_every_frame(bus: Bus, nats_url: str, recorder: Recorder,
                                                   audio_tap: AudioTap) -> None:
    """``SWITCHBOARD_GATEWAY_AUDIO_IN_MS=20``: one ``audio.in`` message per Twilio frame."""
    settings = load_settings(nats_url=nats_url, insecure_dev=True, gateway_audio_in_ms=20)
    async with running_gateway(bus, settings) as gw20:
        ws, call_id, _ = await open_call(gw20, recorder)
        heard = audio_tap.of(call_id)
        for n in range(1, 4):
            await ws.send(media_frame(bytes([n]) * 160, n))
        await wait_until(lambda: len(heard) >= 3)
        assert [e.data for e in heard] == [bytes([n]) * 160 for n in range(1, 4)]
        await ws.close()


async def test_keypad_capture_sends_digits_on_core_nats_only(gw: RunningGateway, peer: EchoPeer, peer_bus: Bus,
                                                             recorder: Recorder) -> None:
    ws, call_id, _ = await open_call(gw, recorder, peer)

    async def command_then_wait(payload: dict[str, Any], item: str) -> None:
        # commands share one subscription, so the play's audio reaching the carrier means the capture was applied
        await peer.command(call_id, "capture", payload)
        await peer.command(call_id, "play", {"audio": base64.b64encode(b"\x02" * 160).decode(), "item_id": item})
        got = [await recv_json(ws) for _ in range(2)]
        assert [m["event"] for m in got] == ["media", "mark"]

    async def press(digit: str, seq: int) -> None:
        await ws.send(json.dumps({"event": "dtmf", "streamSid": "MZ1", "sequenceNumber": str(seq),
                                  "dtmf": {"track": "inbound_track", "digit": digit}}))

    await command_then_wait({"active": True, "state": "card"}, "p1")
    await press("4", 10)
    keypad = await recorder.wait_for(lambda: recorder.of(call_id, "keypad"))
    assert keypad[0].json() == {"digit": "4"}
    assert not recorder.of(call_id, "carrier.dtmf")
    assert await peer_bus.last_message(subjects.CALLS_STREAM, subjects.call_keypad(call_id)) is None
    await command_then_wait({"active": False}, "p2")
    await press("5", 11)
    dtmf = await recorder.wait_for(lambda: recorder.of(call_id, "carrier.dtmf"))
    assert dtmf[0].json() == {"digit": "5"} and len(recorder.of(call_id, "keypad")) == 1
    stored = await peer_bus.last_message(subjects.CALLS_STREAM, subjects.carrier_dtmf(call_id))
    assert stored is not None and stored.json() == {"digit": "5"}
    await ws.close()
