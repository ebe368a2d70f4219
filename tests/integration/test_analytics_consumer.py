"""The analytics consumer on a real nats-server and SQLite/PostgreSQL: KPIs from published events, resume
without double counting, ``GET /kpis``, and the signed post-call webhook with retries."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.analytics import models, store
from services.analytics.api import CallKpis, Kpis, create_app
from services.analytics.consumer import AnalyticsConsumer, to_event
from services.analytics.db import open_database
from services.analytics.webhook import WebhookSender, verify
from shared import subjects
from shared.bus import Bus
from shared.contracts import CallEnded, CallStarted, SessionModelConnected
from shared.runtime import ServiceContext, serve_http
from switchboard import natsserver
from switchboard.cli.up import _webhook_status


async def place_call(gateway: Bus, session: Bus, call_id: str, *, version: str, reason: str,
                     tool_error: bool = False) -> None:
    """Publish one call's events as the gateway and the session would."""
    started = CallStarted(call_id=call_id, carrier="twilio", agent="receptionist", agent_version=version,
                          from_="+15550100", to="+15550200", audio_format="audio/pcmu",
                          started_at="2026-12-07T10:00:00+00:00")
    await gateway.publish_event(subjects.call_started(call_id), started.encode(), call_id=call_id)
    connected = SessionModelConnected(call_id=call_id, billed=False, agent="receptionist", agent_version=version)
    await session.publish_event(subjects.session_event(call_id, "model_connected"), connected.encode(),
                                call_id=call_id)
    rt: list[tuple[str, str, dict[str, Any]]] = [
          ("server", "input_audio_buffer.speech_stopped", {}), ("server", "response.created", {}),
          ("server", "response.output_audio.delta", {"delta": "AAAA"}),
          ("server", "response.function_call_arguments.done", {"name": "book_appointment", "call_id": "f1"}),
          ("server", "response.done", {"response": {"status": "completed"}}),
          ("client", "input_audio_buffer.append", {"audio": "AAAA"}),  # filtered out by the consumer
          ("client", "conversation.item.create", {"item": {
              "type": "function_call_output", "call_id": "f1",
              "output": json.dumps({"error": "taken"} if tool_error else {"status": "booked"})}})]
    for direction, etype, body in rt:
        build = subjects.rt_client if direction == "client" else subjects.rt_server
        await session.publish_event(build(call_id, etype), {"type": etype, **body}, call_id=call_id)
    await gateway.publish_event(subjects.call_ended(call_id), CallEnded(reason=reason).encode(), call_id=call_id)
    await gateway.flush_acks(5.0)
    await session.flush_acks(5.0)


async def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():  # noqa: ASYNC110 - polls the database, which has no event to wait on
            await asyncio.sleep(0.1)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[Any]:
    eng = await open_database(database_url)
    yield eng
    await eng.dispose()


async def ended(engine: Any, call_ids: list[str]) -> bool:
    rows = [await store.call_figures(engine, c) for c in call_ids]
    return all(r is not None and r["ended_ns"] for r in rows)


async def test_kpis_resume_without_double_counting(buses: tuple[Bus, Bus], engine: Any, unique: str) -> None:
    gateway, session = buses
    calls = {f"call_an{unique}a": ("1", "agent_hangup", False), f"call_an{unique}b": ("2", "agent_hangup", True),
             f"call_an{unique}c": ("2", "carrier_silent", False)}
    for cid, (version, reason, err) in calls.items():
        await place_call(gateway, session, cid, version=version, reason=reason, tool_error=err)

    prefix = f"an{unique}"
    # a first consumer applies what it fetches but "crashes" before acking: nak() makes JetStream redeliver
    first = AnalyticsConsumer(session.js, engine, durable_prefix=prefix)
    for spec in (subjects.CALLS_STREAM, subjects.RT_STREAM):
        psub = await first._bind(spec)
        msgs = await psub.fetch(10_000, timeout=2)
        outcome = await store.apply_batch(engine, spec.name, sorted((e for e in map(to_event, msgs) if e is not None),
                                                                    key=lambda e: e[1].stream_seq),
                                          first.first_audio if spec is subjects.RT_STREAM else None)
        if spec is subjects.CALLS_STREAM:  # the calls that ended in the batch (the metrics and the webhook)
            assert set(calls) <= {fig.call_id for fig in outcome.ended}
        for m in msgs:
            await m.nak()
        await psub.unsubscribe()
    assert await ended(engine, list(calls))
    before = {c: await store.call_figures(engine, c) for c in calls}

    restarted = AnalyticsConsumer(session.js, engine, durable_prefix=prefix)
    stopping = asyncio.Event()
    task = asyncio.create_task(restarted.run(stopping))

    async def redelivered() -> bool:
        return restarted.skipped > 0 and restarted.applied == 0

    await wait_for(redelivered)
    stopping.set()
    await task
    assert {c: await store.call_figures(engine, c) for c in calls} == before  # nothing counted twice

    a = before[f"call_an{unique}a"]
    assert a is not None
    assert (a["agent_version"], a["tool_calls"], a["tool_errors"], a["task_completed"]) == ("1", 1, 0, True)
    assert a["cost_usd"] == 0.0 and len(a["first_response_ms"]) == 1  # billed: false (local model)
    b = before[f"call_an{unique}b"]
    assert b is not None and (b["tool_errors"], b["task_completed"]) == (1, False)
    c = before[f"call_an{unique}c"]
    assert c is not None and c["dropped"] is True

    app = create_app(engine, api_token="secret-token")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/kpis")).status_code == 401
        auth = {"Authorization": "Bearer secret-token"}
        body = (await client.get("/kpis", params={"group_by": "agent_version", "from": "2026-12-07",
                                                   "to": "2026-12-08"}, headers=auth)).json()
        Kpis.model_validate(body)  # what /openapi.json promises
        groups = {g["key"]: g for g in body["groups"]}
        assert groups["1"]["calls"] >= 1 and groups["2"]["calls"] >= 2
        assert groups["2"]["drop_rate"]["numerator"] >= 1
        assert groups["2"]["tool_success"]["denominator"] >= 2
        empty = (await client.get("/kpis", params={"from": "2030-01-01"}, headers=auth)).json()
        assert empty["groups"] == []
        assert (await client.get("/kpis", params={"from": "yesterday"}, headers=auth)).status_code == 422
        one = await client.get(f"/kpis/calls/call_an{unique}a", headers=auth)
        assert CallKpis.model_validate(one.json()).agent_version == "1"
        doc = (await client.get("/openapi.json")).json()
        assert doc["components"]["securitySchemes"]["bearerAuth"] == {
            "type": "http", "scheme": "bearer", "description": "the service's API token (SWITCHBOARD_API_TOKEN)"}
        assert doc["paths"]["/kpis"]["get"]["security"] == [{"bearerAuth": []}]
        assert doc["paths"]["/kpis"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Kpis"}


async def test_an_older_durable_is_recreated_after_the_committed_position(buses: tuple[Bus, Bus], engine: Any,
                                                                          unique: str) -> None:
    gateway, session = buses
    prefix = f"old{unique}"
    # as an older version made it: explicit acks, every CALLS subject
    old = ConsumerConfig(durable_name=f"{prefix}-calls", ack_policy=AckPolicy.EXPLICIT,
                         deliver_policy=DeliverPolicy.ALL)
    await session.js.add_consumer("CALLS", old)
    committed = (await session.js.stream_info("CALLS")).state.last_seq
    async with engine.begin() as conn:
        await conn.execute(models.kpi_positions.insert().values(stream="CALLS", last_seq=committed))
    call_id = f"call_old{unique}"
    await gateway.publish_event(subjects.carrier_mark(call_id), {"name": "m1"}, call_id=call_id)
    await place_call(gateway, session, call_id, version="1", reason="agent_hangup")

    consumer = AnalyticsConsumer(session.js, engine, durable_prefix=prefix)
    psub = await consumer._bind(subjects.CALLS_STREAM)
    info = await session.js.consumer_info("CALLS", f"{prefix}-calls")
    assert info.config.ack_policy == AckPolicy.ALL
    msgs = await psub.fetch(10_000, timeout=2)
    await psub.unsubscribe()
    assert min(m.metadata.sequence.stream for m in msgs) > committed  # starts after what the database holds
    assert {m.subject for m in msgs if call_id in m.subject} == {  # only what the KPIs read: not the mark
        subjects.call_started(call_id), subjects.session_event(call_id, "model_connected"),
        subjects.call_ended(call_id)}


class Receiver:
    """A webhook endpoint that fails the first ``fail`` deliveries with 503."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.app = FastAPI()

        @self.app.post("/hook")
        async def hook(request: Request) -> JSONResponse:
            body = await request.body()
            if self.fail > 0:
                self.fail -= 1
                return JSONResponse({"busy": True}, status_code=503)
            self.received.append((body, dict(request.headers)))
            return JSONResponse({"ok": True})


async def test_webhook_signed_with_retries(buses: tuple[Bus, Bus], engine: Any, unique: str, nats_url: str) -> None:
    gateway, session = buses
    receiver = Receiver(fail=2)
    port = natsserver.free_port()
    ctx = ServiceContext("hook", None, session, asyncio.Event(), contextlib.AsyncExitStack(), None, None)  # type: ignore[arg-type]
    server = asyncio.create_task(serve_http(ctx, receiver.app, "127.0.0.1", port))
    consumer = AnalyticsConsumer(session.js, engine, durable_prefix=f"wh{unique}")
    sender = WebhookSender(session, engine, f"http://127.0.0.1:{port}/hook", "s3cret", durable=f"wh{unique}-hook")
    stopping = asyncio.Event()
    tasks = [asyncio.create_task(consumer.run(stopping)), asyncio.create_task(sender.run(stopping))]
    await sender.ready.wait()
    call_id = f"call_wh{unique}"
    await place_call(gateway, session, call_id, version="2", reason="agent_hangup")

    async def delivered() -> bool:
        return any(json.loads(b)["call_id"] == call_id for b, _ in receiver.received)

    await wait_for(delivered, timeout=60)
    stopping.set()
    ctx.stopping.set()
    await asyncio.gather(*tasks, server)
    body, headers = next((b, h) for b, h in receiver.received if json.loads(b)["call_id"] == call_id)
    summary = json.loads(body)
    assert summary["end_reason"] == "agent_hangup" and summary["agent_version"] == "2"
    assert summary["kpis"]["tool_calls"] == 1
    assert verify("s3cret", body, headers["switchboard-signature"])
    assert not verify("wrong", body, headers["switchboard-signature"])
    assert not verify("s3cret", body + b" ", headers["switchboard-signature"])
    assert sender.status.retried >= 2 and sender.status.delivered >= 1
    assert sender.status.last_error is not None and "503" in sender.status.last_error
    # switchboard status reads these counters from the analytics service's micro endpoint
    service = await session.add_service(f"switchboard-test-{unique}")
    await session.add_endpoint(service, name="webhook", subject=subjects.webhook_status(),
                               handler=sender.answer_status)
    try:
        shown = await _webhook_status(nats_url)
    finally:
        await service.stop()
    assert shown is not None and shown["delivered"] == sender.status.delivered and "503" in shown["last_error"]
