"""The local model's HTTP routes, authentication, beta-client refusal, echo mode and clean-up on disconnect."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.localmodel_support import running_server, validate


async def test_health_ready_and_unknown_path() -> None:
    async with running_server() as srv, httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.port}") as http:
        assert (await http.get("/healthz")).status_code == 200
        for _ in range(600):
            if (await http.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert (await http.get("/readyz")).status_code == 200
        assert (await http.get("/nope")).status_code == 404


async def test_token_required_when_configured_and_beta_clients_refused() -> None:
    async with running_server(token="s3cret", mode="echo") as srv:
        url = f"ws://127.0.0.1:{srv.port}/v1/realtime?model=gpt-realtime"
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, additional_headers={"Authorization": "Bearer wrong"}):
                pass
        assert info.value.response.status_code == 401
        with pytest.raises(InvalidStatus):
            async with connect(url):
                pass
        async with connect(url, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            first = json.loads(await ws.recv())
            assert first["type"] == "session.created"
            validate(first)
        async with connect(url, additional_headers={"Authorization": "Bearer s3cret",
                                                    "OpenAI-Beta": "realtime=v1"}) as ws:
            event = json.loads(await ws.recv())
            validate(event)
            assert event["error"]["code"] == "beta_api_shape_disabled"
            with pytest.raises(ConnectionClosed):
                await ws.recv()


async def test_echo_mode_returns_input_audio() -> None:
    async with running_server(mode="echo") as srv, connect(f"ws://127.0.0.1:{srv.port}/v1/realtime?model=x") as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "audio": {
            "input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcmu"}}}}}))
        frames = [bytes([i]) * 160 for i in range(1, 6)]
        for frame in frames:
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(frame).decode()}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        echoed = []
        events = []
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), 10))
            validate(event)
            events.append(event)
            if event["type"] == "response.output_audio.delta":
                echoed.append(base64.b64decode(event["delta"]))
            if event["type"] == "response.done":
                break
        assert echoed == frames
        ids = [e["event_id"] for e in events]
        assert len(set(ids)) == len(ids)
        added = next(e for e in events if e["type"] == "response.output_item.added")
        deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
        assert {(d["response_id"], d["item_id"], d["output_index"], d["content_index"]) for d in deltas} == {
            (added["response_id"], added["item"]["id"], 0, 0)}


async def test_disconnect_mid_response_leaves_no_tasks_and_server_usable() -> None:
    async with running_server(pacing="realtime") as srv:
        url = f"ws://127.0.0.1:{srv.port}/v1/realtime?model=x"
        before = len(asyncio.all_tasks())
        for _ in range(3):
            ws = await connect(url)
            await ws.send(json.dumps({"type": "session.update", "session": {
                "type": "realtime", "instructions": "Greeting: " + "Hello there, nice to meet you. " * 10}}))
            await ws.send(json.dumps({"type": "response.create"}))
            while json.loads(await ws.recv())["type"] != "response.output_audio.delta":
                pass
            await ws.close()
        for _ in range(200):
            if not srv.sessions and len(asyncio.all_tasks()) <= before:
                break
            await asyncio.sleep(0.05)
        assert not srv.sessions
        assert len(asyncio.all_tasks()) <= before
        async with connect(url) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
