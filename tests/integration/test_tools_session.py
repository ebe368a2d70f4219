"""The session calls tools through ``call_tool`` (issue 20, item 5): a real session service, the real local model
(espeak-ng speech in), a simulated gateway, and ``book_appointment`` served by two "workers" on a plain nats-py
queue subscription: the first attempt is swallowed (a stalled worker), a later one answered. The caller still
gets its booking, and every attempt carries the same ``tool_call_id`` and absolute ``Switchboard-Deadline``."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from nats.aio.msg import Msg

from services.localmodel.demo_tools import DEMO_TOOLS
from services.session.call import CallOptions, ModelEndpoint
from services.session.service import SessionService
from services.tools.worker import QUEUE_GROUP
from shared import subjects, tool_registry
from shared.bus import Bus, Headers
from shared.config import load_settings
from shared.tool_registry import ToolSpec
from tests.integration.session_support import ROOT, SimGateway, speech
from tests.integration.sessionbus_support import buses_fixture, model_url_fixture  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def service(buses: tuple[Bus, Bus, Bus], model_url: str, nats_url: str,
                  tmp_path: Path) -> AsyncIterator[SessionService]:
    agent = tmp_path / "receptionist.yaml"
    agent.write_text(yaml.safe_dump(yaml.safe_load((ROOT / "agents" / "receptionist.yaml").read_text())))
    settings = load_settings(nats_url=nats_url, agent=agent, js_max_age=600)
    svc = SessionService(buses[0], settings, endpoint=ModelEndpoint(model_url, None, "gpt-realtime"),
                         options=CallOptions(barge_in_settle_s=2.0))
    await svc.start()
    yield svc
    await svc.stop()


async def test_session_books_through_call_tool_past_a_stalled_attempt(
        buses: tuple[Bus, Bus, Bus], service: SessionService) -> None:
    _, gateway_bus, tools_bus = buses
    attempts: list[tuple[dict[str, str], dict[str, Any], float]] = []

    async def serve(msg: Msg) -> None:
        body = json.loads(msg.data)
        attempts.append((dict(msg.headers or {}), body, time.time() * 1000))
        if len(attempts) == 1:
            return  # the stalled worker: never answers
        args = body["arguments"]
        await msg.respond(json.dumps({"output": {"status": "booked", "appointment_id": 7, "name": args.get("name"),
                                                 "date": args.get("date"), "time": args.get("time")}}).encode())

    book = next(t for t in DEMO_TOOLS if t["name"] == "book_appointment")
    await tool_registry.publish(tools_bus.js, [ToolSpec("book_appointment", book["description"], book["parameters"],
                                                        timeout_ms=5000)])
    sub = await tools_bus.nc.subscribe(subjects.tool("book_appointment"), queue=QUEUE_GROUP, cb=serve)
    await tools_bus.nc.flush()
    gw = SimGateway(gateway_bus)
    try:
        await gw.start(agent="receptionist")
        await gw.wait_for(lambda: gw.count("server.response.done") > 0, 60, "greeting")
        for line, what in [("Hi, I would like to book an appointment for tomorrow at ten", "ask for the name"),
                           ("My name is John Smith", "read-back")]:
            done = gw.count("server.response.done")
            await gw.send_audio(await speech(line))
            await gw.wait_for(lambda d=done: gw.count("server.response.done") > d, 60, what)  # type: ignore[misc]
        await gw.send_audio(await speech("Yes please"))

        def outputs() -> list[dict[str, Any]]:
            return [e["item"] for e in gw.of("client.conversation.item.create")
                    if e["item"]["type"] == "function_call_output"]

        await gw.wait_for(lambda: bool(outputs()), 60, "function_call_output")
        assert json.loads(outputs()[0]["output"])["status"] == "booked"
        assert len(attempts) >= 2  # the swallowed attempt was followed by a hedged one
        first_headers, first_body, sent_ms = attempts[0]
        deadline = first_headers[Headers.DEADLINE]
        assert int(deadline) <= sent_ms + 5000  # absolute: at most the registry's 5 s from the first attempt
        for headers, body, _ in attempts:
            assert headers[Headers.DEADLINE] == deadline  # one absolute deadline for every attempt
            assert headers[Headers.CALL_ID] == gw.call_id
            assert body["tool_call_id"] == first_body["tool_call_id"] == outputs()[0]["call_id"]
            assert 0 < body["deadline_ms"] <= 5000
        assert attempts[1][1]["deadline_ms"] < first_body["deadline_ms"]  # a later attempt gets what is left
        await gw.end()
    finally:
        await sub.unsubscribe()
        await gw.close()
