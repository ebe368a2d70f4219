"""The recorder's REST API over a real archive (NATS → SQLite/PostgreSQL), served in-process over ASGI:
calls, events NDJSON with type globs, transcript, recording, trace waterfall, audit, live SSE, bearer auth."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.recorder import queries
from services.recorder.api import create_app
from services.recorder.db import open_database
from services.recorder.schemas import AuditReport, AuditStreams, Call, CallChain, CallTrace, Transcript
from services.recorder.service import Recorder
from shared import subjects
from shared.bus import Bus
from shared.config import load_settings
from switchboard.testing.scripted import publish_call, script


@pytest.fixture
async def archived(nats_url: str, database_url: str, tmp_path: Path,
                   unique: str) -> AsyncIterator[tuple[AsyncEngine, Bus, str, str]]:
    gateway = await Bus.connect(nats_url, name="test-gateway", source="gateway")
    session = await Bus.connect(nats_url, name="test-session", source="session")
    await gateway.ensure_streams(load_settings(js_max_age=3600))
    engine = await open_database(database_url)
    recorder = Recorder(gateway, engine, tmp_path, durable_prefix=f"api{unique}", settle_s=0.2)
    await recorder.start()
    call_id = f"CAapi{unique}"
    trace_id = secrets.token_hex(16)
    start = time.time_ns()
    root: dict[str, Any] = {
            "trace_id": trace_id, "span_id": secrets.token_hex(8), "parent_span_id": None, "name": "call",
            "kind": "SERVER", "start_ns": start, "end_ns": start + 5_000_000,
            "service": "switchboard-gateway", "attributes": {"switchboard.call_id": call_id}, "events": [],
            "links": [], "status": "UNSET", "status_message": None}
    child = {**root, "span_id": secrets.token_hex(8), "parent_span_id": root["span_id"], "name": "execute_tool",
             "kind": "CLIENT", "start_ns": start + 1_000_000, "service": "switchboard-session",
             "attributes": {"gen_ai.tool.name": "book_appointment"}}
    for record in (child, root):
        await gateway.nc.publish(subjects.OTEL_SPANS, json.dumps(record).encode(),
                                 headers={"Switchboard-Call-Id": call_id})
    await publish_call(gateway, session, call_id, speed=20.0, steps=script(call_id))
    async with asyncio.timeout(60), recorder.finalizer.done:
        await recorder.finalizer.done.wait_for(lambda: call_id in recorder.finalizer.finalized)
    for _ in range(300):  # the TRACES stream may hold earlier tests' spans first
        if len(await queries.call_spans(engine, call_id)) == 2:
            break
        await asyncio.sleep(0.05)
    yield engine, gateway, call_id, trace_id
    await recorder.stop()
    await engine.dispose()
    await gateway.close()
    await session.close()


def client_for(app: object, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://recorder",  # type: ignore[arg-type]
                             headers=headers)


async def test_api_serves_the_archived_call(archived: tuple[AsyncEngine, Bus, str, str]) -> None:
    engine, bus, call_id, trace_id = archived
    app = create_app(engine, api_token=None, bus=bus)
    async with client_for(app) as client:
        listed = (await client.get("/calls", params={"limit": 1000})).json()
        assert call_id in [c["call_id"] for c in listed]
        for row in listed:  # every JSON answer is what /openapi.json promises
            Call.model_validate(row)
        call = (await client.get(f"/calls/{call_id}")).json()
        assert Call.model_validate(call).events
        n_calls = sum(1 for step in script(call_id) if step.subject.startswith("call."))
        assert call["status"] == "ended" and call["events"]["CALLS"] == n_calls
        assert (await client.get("/calls/nope")).status_code == 404
        assert (await client.get("/calls/bad.id")).status_code in (400, 404)

        response = await client.get(f"/calls/{call_id}/events", params={"type": "response.*done"})
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert {line["type"] for line in lines} == {"response.done", "response.output_audio.done",
                                                    "response.output_audio_transcript.done",
                                                    "response.function_call_arguments.done"}
        assert all(line["body"]["type"] == line["type"] for line in lines)
        times = [line["ts_ns"] for line in lines]
        assert times == sorted(times)
        everything = (await client.get(f"/calls/{call_id}/events")).text.splitlines()
        assert len(everything) == len(script(call_id))

        transcript = (await client.get(f"/calls/{call_id}/transcript")).json()
        Transcript.model_validate(transcript)
        assert transcript["final"] is True
        assert [t["role"] for t in transcript["turns"]] == ["user", "assistant", "assistant", "user"]
        assert transcript["tool_calls"][0]["name"] == "book_appointment"

        wav = await client.get(f"/calls/{call_id}/recording.wav")
        assert wav.headers["content-type"] == "audio/wav"
        with wave.open(io.BytesIO(wav.content)) as w:
            assert (w.getnchannels(), w.getframerate()) == (2, 8000)

        traced = (await client.get(f"/calls/{call_id}/trace")).json()
        CallTrace.model_validate(traced)
        assert traced["trace_ids"] == [trace_id]
        assert [(r["name"], r["depth"]) for r in traced["waterfall"]] == [("call", 0), ("execute_tool", 1)]

        audit = (await client.get(f"/calls/{call_id}/audit")).json()
        AuditReport.model_validate(audit)
        CallChain.model_validate((await client.get(f"/calls/{call_id}/chain")).json())
        AuditStreams.model_validate((await client.get("/audit/streams")).json())
        assert audit["ok"] is True and audit["records"]["RT"] == len(script(call_id)) - n_calls

        live = await client.get(f"/calls/{call_id}/live/events")
        frames = [f for f in live.text.split("\n\n") if f.startswith("event:")]
        assert frames[0].startswith("event: turn") and frames[-1].startswith("event: ended")
        page = await client.get(f"/calls/{call_id}/live")
        assert "EventSource" in page.text
        assert (await client.get("/openapi.json")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200


async def test_api_requires_the_bearer_token_when_set(archived: tuple[AsyncEngine, Bus, str, str]) -> None:
    engine, bus, call_id, _ = archived
    app = create_app(engine, api_token="s3cret", bus=bus)
    async with client_for(app) as anonymous:
        assert (await anonymous.get("/calls")).status_code == 401
        assert (await anonymous.get(f"/calls/{call_id}/live")).status_code == 401
        assert (await anonymous.get("/healthz")).status_code == 200
        assert (await anonymous.get(f"/calls/{call_id}/live", params={"access_token": "s3cret"})).status_code == 200
        # ?access_token= is accepted only on what a browser opens without a header (console, live page, player)
        for path in ("/calls", f"/calls/{call_id}", f"/calls/{call_id}/events", "/docs", "/openapi.json"):
            assert (await anonymous.get(path, params={"access_token": "s3cret"})).status_code == 401, path
    async with client_for(app, "wrong") as wrong:
        assert (await wrong.get("/calls")).status_code == 401
        assert (await wrong.get("/openapi.json")).status_code == 401
    async with client_for(app, "s3cret") as good:
        assert (await good.get(f"/calls/{call_id}")).status_code == 200
        assert (await good.get("/docs")).status_code == 200
        assert "/calls/{call_id}/audit" in (await good.get("/openapi.json")).json()["paths"]


async def test_live_page_streams_a_call_in_progress(nats_url: str, database_url: str, tmp_path: Path,
                                                    unique: str) -> None:
    import uvicorn

    from switchboard import natsserver

    gateway = await Bus.connect(nats_url, name="test-gateway", source="gateway")
    session = await Bus.connect(nats_url, name="test-session", source="session")
    await gateway.ensure_streams(load_settings(js_max_age=3600))
    engine = await open_database(database_url)
    recorder = Recorder(gateway, engine, tmp_path, durable_prefix=f"live{unique}", settle_s=0.2)
    await recorder.start()
    port = natsserver.free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine, api_token=None, bus=gateway), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    call_id = f"CAlive{unique}"
    try:
        steps = script(call_id)
        upto = next(i for i, s in enumerate(steps) if s.payload.get("type") == "response.created")
        await publish_call(gateway, session, call_id, speed=0, steps=steps[:upto])  # first user turn only
        for _ in range(300):
            if (await queries.get_call(engine, call_id) or {}).get("events", {}).get("RT", 0) >= upto - 2:
                break
            await asyncio.sleep(0.05)
        for _ in range(600):
            if server.started:
                break
            await asyncio.sleep(0.05)
        frames: list[tuple[str, dict[str, Any]]] = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client, \
                client.stream("GET", f"/calls/{call_id}/live/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    frames.append((event, json.loads(line[6:])))
                    if event == "live":  # subscribed: now the agent speaks and the caller hangs up
                        await publish_call(gateway, session, call_id, speed=0, steps=[
                            s for s in steps[upto:] if "transcript" in s.payload.get("type", "")
                            or s.subject.endswith(".ended")])
                    if event == "ended":
                        break
        kinds = [k for k, _ in frames]
        assert kinds[0] == "turn" and frames[0][1]["text"].startswith("I would like")
        assert kinds.index("live") < kinds.index("delta") < kinds.index("ended")
        spoken = [d for k, d in frames if k == "turn" and d["role"] == "assistant"]
        assert spoken[0]["text"] == "Your appointment is booked for tomorrow at ten."
    finally:
        server.should_exit = True
        await serving
        await recorder.stop()
        await engine.dispose()
        await gateway.close()
        await session.close()
