"""The disclosure (docs/compliance.md, "Disclosure"): real nats-server, the real local model, the session service
and a simulated gateway whose carrier marks the test releases by hand.

Order is checked with ``Switchboard-Seq``: the session numbers everything it publishes for a call (RT and CALLS
alike) in one sequence, so "before" in the log is "before" in that sequence.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.session.call import CallOptions, ModelEndpoint
from services.session.service import SessionService
from shared.bus import Bus
from shared.config import load_settings
from tests.integration.session_support import ROOT, LogEntry, SimGateway, read_log, speech
from tests.integration.sessionbus_support import model_url_fixture  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def buses(nats_url: str) -> AsyncIterator[tuple[Bus, Bus]]:
    session_bus = await Bus.connect(nats_url, name="test-session", source="session")
    gateway_bus = await Bus.connect(nats_url, name="test-gateway", source="gateway")
    await session_bus.ensure_streams(load_settings(js_max_age=600))
    yield session_bus, gateway_bus
    for bus in (gateway_bus, session_bus):
        await bus.close()


@pytest.fixture
async def service(buses: tuple[Bus, Bus], model_url: str, nats_url: str,
                  tmp_path: Path) -> AsyncIterator[SessionService]:
    receptionist = yaml.safe_load((ROOT / "agents" / "receptionist.yaml").read_text())
    assert receptionist["disclosure"]["gate_recording"] is True  # the demo agent declares one
    (tmp_path / "receptionist.yaml").write_text(yaml.safe_dump(receptionist))
    ungated = {**receptionist, "name": "ungated",
               "disclosure": {"text": "This call is recorded.", "gate_recording": False}}
    (tmp_path / "ungated.yaml").write_text(yaml.safe_dump(ungated))
    settings = load_settings(nats_url=nats_url, agent=tmp_path / "receptionist.yaml", js_max_age=600)
    svc = SessionService(buses[0], settings, endpoint=ModelEndpoint(model_url, None, "gpt-realtime"),
                         options=CallOptions(disclosure_chunk_ms=200))
    await svc.start()
    yield svc
    await svc.stop()


def disclosure_item(gw: SimGateway) -> str:
    return next(i for i in gw.play_order if i.startswith("disclosure_"))


def disclosures(gw: SimGateway) -> list[dict[str, Any]]:
    return [body for name, body in gw.session_events if name == "disclosure"]


def session_seq(entries: list[LogEntry], kind: str) -> list[int]:
    return [e.seq for e in entries if e.kind == kind and e.source == "session" and e.seq is not None]


async def test_disclosure_plays_first_and_caller_audio_is_stored_only_after_it(
        buses: tuple[Bus, Bus], service: SessionService) -> None:
    gw = SimGateway(buses[1], auto_play_marks=False)
    await gw.start()
    await gw.wait_for(lambda: any(v == "play" for v, _ in gw.commands), 30, "the disclosure's play commands")
    item = disclosure_item(gw)
    # the caller talks over the disclosure: not heard, not logged
    await gw.send_audio(await speech("my card number is four one one one"), pace=0.1)
    await gw.wait_for(lambda: gw.count("server.session.updated") > 0, 30, "the model session")
    assert gw.count("client.response.create") == 0, "nothing may be said before the disclosure"
    assert gw.count("client.input_audio_buffer.append") == 0
    played = await gw.play(item)
    await gw.wait_for(lambda: bool(disclosures(gw)), 30, "session.disclosure")
    record = disclosures(gw)[0]
    assert record["status"] == "completed"
    assert record["played_bytes"] == record["audio_bytes"] == played > 0
    assert record["played_ms"] == record["audio_ms"] == played // 8
    assert record["text"] == "You are speaking with an AI assistant, and this call is recorded."
    await gw.wait_for(lambda: gw.count("server.response.done") > 0, 60, "the greeting after the disclosure")
    await gw.send_audio(await speech("hello"), pace=0.1)
    await gw.wait_for(lambda: gw.count("client.input_audio_buffer.append") > 0, 30, "caller audio after it")
    await gw.end()
    await gw.wait_for(lambda: any(n == "summary" for n, _ in gw.session_events), 30, "summary")
    entries = await read_log(buses[0], gw.call_id)
    [disclosed] = session_seq(entries, "session.disclosure")
    plays = session_seq(entries, "command.play")
    creates = session_seq(entries, "client.response.create")
    appends = session_seq(entries, "client.input_audio_buffer.append")
    assert plays and max(plays) < disclosed
    assert creates and min(creates) > disclosed
    assert appends and min(appends) > disclosed
    await gw.close()


async def test_hangup_during_the_disclosure_is_marked_interrupted_with_the_span_heard(
        buses: tuple[Bus, Bus], service: SessionService) -> None:
    gw = SimGateway(buses[1], auto_play_marks=False)
    await gw.start()
    await gw.wait_for(lambda: sum(v == "play" for v, _ in gw.commands) >= 2, 30, "the disclosure's play commands")
    item = disclosure_item(gw)
    first_chunk = gw.items[item].pending[0]
    assert await gw.play(item, up_to=first_chunk) == first_chunk  # the caller heard the first 200 ms only
    await gw.send_audio(await speech("goodbye"), pace=0.1)
    await gw.end()
    await gw.wait_for(lambda: bool(disclosures(gw)), 30, "session.disclosure")
    record = disclosures(gw)[0]
    assert record["status"] == "interrupted"
    assert record["played_bytes"] == first_chunk == 200 * 8
    assert record["played_ms"] == 200 < record["audio_ms"]
    await gw.wait_for(lambda: any(n == "summary" for n, _ in gw.session_events), 30, "summary")
    entries = await read_log(buses[0], gw.call_id)
    assert not session_seq(entries, "client.response.create")
    assert not session_seq(entries, "client.input_audio_buffer.append")
    assert len(session_seq(entries, "session.disclosure")) == 1
    await gw.close()


async def test_without_gating_audio_heard_during_the_disclosure_is_forwarded_after_it(
        buses: tuple[Bus, Bus], service: SessionService) -> None:
    gw = SimGateway(buses[1], auto_play_marks=False)
    await gw.start(agent="ungated")
    await gw.wait_for(lambda: any(v == "play" for v, _ in gw.commands), 30, "the disclosure's play commands")
    await gw.send_audio(await speech("hello there"), pace=0.1)
    await gw.wait_for(lambda: gw.count("server.session.updated") > 0, 30, "the model session")
    assert gw.count("client.input_audio_buffer.append") == 0
    await gw.play(disclosure_item(gw))
    await gw.wait_for(lambda: gw.count("client.input_audio_buffer.append") > 0, 30, "the held audio")
    assert disclosures(gw)[0]["status"] == "completed"
    assert disclosures(gw)[0]["gate_recording"] is False
    await gw.end()
    await gw.wait_for(lambda: any(n == "summary" for n, _ in gw.session_events), 30, "summary")
    entries = await read_log(buses[0], gw.call_id)
    [disclosed] = session_seq(entries, "session.disclosure")
    assert min(session_seq(entries, "client.input_audio_buffer.append")) > disclosed
    await gw.close()
