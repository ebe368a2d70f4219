"""Redaction (docs/compliance.md, "Redaction"): a booking call with redaction on, through a real nats-server, the
real local model (espeak-ng speech in, pocketsphinx recognition), real test tools and the session service.

The tool gets the raw arguments and answers with a phone number, an e-mail address and a card number; the
caller's name is an agent pattern. None of them may appear in any event the session logged — transcripts, tool
arguments, tool outputs — while the call itself works as without redaction.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.session.call import CallOptions, ModelEndpoint
from services.session.service import SessionService
from shared.bus import Bus
from shared.config import load_settings
from tests.integration.session_support import ROOT, SimGateway, ToolBox, read_log
from tests.integration.sessionbus_support import buses_fixture, model_url_fixture  # noqa: F401 - fixtures
from tests.integration.test_session_call import (  # noqa: F401 - fixtures
    next_response_done,
    say,
    standard_tools,
    toolbox,
)

pytestmark = pytest.mark.timeout(240)

SECRETS = ("+14155552671", "jane.doe@example.com", "4111 1111 1111 1111", "4111111111111111")


async def booked_with_contact_details(request: dict[str, Any]) -> dict[str, Any]:
    args = request["arguments"]
    return {"output": {"status": "booked", "appointment_id": 7, "name": args.get("name"), "time": args.get("time"),
                       "contact": {"phone": SECRETS[0], "email": SECRETS[1]},
                       "note": f"deposit paid with {SECRETS[2]}"}}


@pytest.fixture
async def service(buses: tuple[Bus, Bus, Bus], model_url: str, nats_url: str,
                  tmp_path: Path) -> AsyncIterator[SessionService]:
    receptionist = yaml.safe_load((ROOT / "agents" / "receptionist.yaml").read_text())
    receptionist["redaction"] = {"enabled": True, "patterns": ["(?i)\\bjohn(\\s+[a-z]+)?"]}  # the name as heard
    (tmp_path / "receptionist.yaml").write_text(yaml.safe_dump(receptionist))
    settings = load_settings(nats_url=nats_url, agent=tmp_path / "receptionist.yaml", js_max_age=600)
    svc = SessionService(buses[0], settings, endpoint=ModelEndpoint(model_url, None, "gpt-realtime"),
                         options=CallOptions(disclosure_chunk_ms=200))
    await svc.start()
    yield svc
    await svc.stop()


async def test_nothing_personal_reaches_the_log_and_the_call_still_works(
        buses: tuple[Bus, Bus, Bus], service: SessionService, toolbox: ToolBox) -> None:  # noqa: F811
    await toolbox.serve(standard_tools(book=booked_with_contact_details))
    gw = SimGateway(buses[1])
    await gw.start(agent="receptionist")
    await next_response_done(gw, 0, "greeting")
    done = gw.count("server.response.done")
    await say(gw, "Hi, I would like to book an appointment for tomorrow at ten")
    await next_response_done(gw, done, "reply asking for the name")
    done = gw.count("server.response.done")
    await say(gw, "My name is John Smith")
    await next_response_done(gw, done, "read-back")
    await say(gw, "Yes please")
    await gw.wait_for(lambda: bool(toolbox.requests.get("book_appointment")), 60, "the booking")
    await gw.wait_for(lambda: any(i["type"] == "function_call_output"
                                  for i in (e["item"] for e in gw.of("client.conversation.item.create"))),
                      60, "function_call_output")
    await gw.end()
    await gw.wait_for(lambda: any(n == "summary" for n, _ in gw.session_events), 30, "summary")

    # the tool saw the raw arguments (redaction is about what is stored, not what the call needs)
    assert "john" in json.dumps(toolbox.requests["book_appointment"][0]["arguments"]).lower()
    rt = [e for e in await read_log(buses[0], gw.call_id) if e.stream == "RT"]
    text = b"\n".join(e.data for e in rt)
    for secret in SECRETS:
        assert secret.encode() not in text, f"{secret} in the log"
    assert b"john" not in text.lower()
    # ... and the redacted forms are there, in well-formed events
    output = next(e.json()["item"]["output"] for e in rt if e.kind == "client.conversation.item.create"
                  and e.json()["item"]["type"] == "function_call_output")
    parsed = json.loads(output)
    assert parsed["contact"] == {"phone": "[PHONE]", "email": "[EMAIL]"} and parsed["status"] == "booked"
    assert parsed["note"] == "deposit paid with [CARD]"
    args = next(e.json()["arguments"] for e in rt if e.kind == "server.response.function_call_arguments.done")
    assert json.loads(args)["name"] == "[REDACTED]" and json.loads(args)["time"] == "10:00"
    heard = [e.json()["transcript"] for e in rt
             if e.kind == "server.conversation.item.input_audio_transcription.completed"]
    assert any("[REDACTED]" in t for t in heard), heard
    assert all(e.json()["delta"] == "" for e in rt if e.kind == "server.response.output_audio_transcript.delta")
    assert any(e.kind == "server.response.output_audio.delta" and e.json()["delta"] for e in rt)  # audio kept
    await gw.close()
