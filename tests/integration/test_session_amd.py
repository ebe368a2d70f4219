"""The carrier's answering-machine verdict reaches the agent: ``call.<id>.carrier.amd`` saying "machine" becomes a
system item for the model (with a response), through a real nats-server, the session service and the local model;
a "human" verdict changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.session.call import CallOptions, ModelEndpoint
from services.session.callerin import MACHINE_NOTE
from services.session.service import SessionService
from shared import subjects
from shared.bus import Bus
from shared.config import load_settings
from shared.contracts import CarrierAmd
from tests.integration.session_support import ROOT, SimGateway
from tests.integration.sessionbus_support import buses_fixture, model_url_fixture  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def service(buses: tuple[Bus, Bus, Bus], model_url: str, nats_url: str,
                  tmp_path: Path) -> AsyncIterator[SessionService]:
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "receptionist.yaml").write_text((ROOT / "agents" / "receptionist.yaml").read_text())
    settings = load_settings(nats_url=nats_url, agent=agents / "receptionist.yaml", js_max_age=600)
    svc = SessionService(buses[0], settings, endpoint=ModelEndpoint(model_url, None, "gpt-realtime"),
                         options=CallOptions(disclosure_chunk_ms=200))
    await svc.start()
    yield svc
    await svc.stop()


def notes(gw: SimGateway) -> list[str]:
    return [part.get("text", "") for event in gw.of("client.conversation.item.create")
            if event["item"].get("role") == "system" for part in event["item"].get("content", [])]


async def test_machine_verdict_is_told_to_the_model(buses: tuple[Bus, Bus, Bus], service: SessionService) -> None:
    gw = SimGateway(buses[1])
    await gw.start()
    await gw.wait_for(lambda: gw.count("server.response.done") > 0, 60, "the greeting")
    human = CarrierAmd(carrier="twilio", answered_by="human", human=True, carrier_call_id="CAtest")
    await buses[1].publish_event(subjects.carrier_amd(gw.call_id), human.encode(), call_id=gw.call_id)
    responses = gw.count("server.response.done")
    machine = CarrierAmd(carrier="twilio", answered_by="machine_end_beep", human=False, carrier_call_id="CAtest")
    await buses[1].publish_event(subjects.carrier_amd(gw.call_id), machine.encode(), call_id=gw.call_id)
    await gw.wait_for(lambda: bool(notes(gw)), 30, "the machine note")
    assert notes(gw) == [MACHINE_NOTE.format(answered_by="machine_end_beep")]  # the human verdict added nothing
    await gw.wait_for(lambda: gw.count("server.response.done") > responses, 30, "a response to the note")
    await gw.end()
    await gw.close()
