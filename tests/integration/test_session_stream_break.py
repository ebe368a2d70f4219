"""A carrier stream that breaks mid-utterance (its gateway died; Twilio reconnects through ``<Redirect>``): the
session drops the truncated utterance from the model's buffer and asks the caller to say it again, instead of
acting on half a sentence; after a clean detach (a draining gateway) nothing is dropped.

A real session service, the real local model, real test tools on nats.micro and a simulated gateway on the bus
(:class:`~tests.integration.session_support.SimGateway`) that publishes ``carrier.detached``/``carrier.resumed``
as the gateways do.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from services.session.call import REPEAT_LINE, CallOptions, ModelEndpoint
from services.session.service import SessionService
from shared import subjects
from shared.bus import Bus
from shared.config import load_settings
from shared.contracts import CarrierDetached, CarrierResumed
from tests.integration.session_support import ROOT, SimGateway, ToolBox, speech, start_localmodel
from tests.integration.test_session_handover import toolbox  # noqa: F401 - the same tools fixture

pytestmark = pytest.mark.timeout(300)

NAME_LINE = "My name is John Smith"


@pytest.fixture(scope="module")
async def model_url() -> AsyncIterator[str]:
    async with start_localmodel(pacing="fast") as url:
        yield url


@pytest.fixture
async def session(nats_url: str, model_url: str) -> AsyncIterator[SessionService]:
    bus = await Bus.connect(nats_url, name="session-stream-break", source="session")
    settings = load_settings(nats_url=nats_url, agent=ROOT / "agents" / "receptionist.yaml", js_max_age=600)
    service = SessionService(bus, settings, endpoint=ModelEndpoint(model_url, None, "gpt-realtime"),
                             options=CallOptions(barge_in_settle_s=2.0))
    await service.start()
    yield service
    await service.stop()
    await bus.close()


@pytest.fixture
async def gw(nats_url: str) -> AsyncIterator[SimGateway]:
    bus = await Bus.connect(nats_url, name="test-gateway", source="gateway")
    await bus.ensure_streams(load_settings(js_max_age=600))
    gateway = SimGateway(bus)
    yield gateway
    if gateway.call_id:
        await gateway.end()  # a call left live would be taken over by a later test's session
    await gateway.close()
    await bus.close()


async def turn(gw: SimGateway, text: str, what: str) -> None:
    done = gw.count("server.response.done")
    await gw.send_audio(await speech(text))
    await gw.wait_for(lambda: gw.count("server.response.done") > done, 90, what)


async def half_a_name(gw: SimGateway) -> bytes:
    """Greeting, the booking request, then the first half of the name line (speech started, not stopped)."""
    await gw.start()
    await gw.wait_for(lambda: gw.count("server.response.done") > 0, 60, "greeting")
    await turn(gw, "Hi, I would like to book an appointment for tomorrow at ten", "reply asking for the name")
    audio = await speech(NAME_LINE)
    started = gw.count("server.input_audio_buffer.speech_started")
    await gw.send_audio(audio[:len(audio) // 2])
    await gw.wait_for(lambda: gw.count("server.input_audio_buffer.speech_started") > started, 30, "speech started")
    return audio


async def resumed(gw: SimGateway) -> None:
    body = CarrierResumed(carrier="twilio", carrier_call_id="CA1", stream_id="MZ2", gap_ms=1500)
    await gw.bus.publish_event(subjects.carrier_resumed(gw.call_id), body.encode(), call_id=gw.call_id)


async def finish_booking(gw: SimGateway, box: ToolBox) -> None:
    await gw.send_audio(await speech("Yes please"))
    await gw.wait_for(lambda: bool(box.requests.get("book_appointment")), 90, "book_appointment")


def asked_again(gw: SimGateway) -> bool:
    return any(REPEAT_LINE in json.dumps(event) for event in gw.of("client.response.create"))


async def test_a_stream_broken_mid_utterance_drops_it_and_the_caller_is_asked_again(
        session: SessionService, gw: SimGateway, toolbox: ToolBox) -> None:  # noqa: F811 - the imported fixture
    await half_a_name(gw)
    await resumed(gw)  # no carrier.detached before it: the old gateway died with the stream open
    await gw.wait_for(lambda: gw.count("client.input_audio_buffer.clear") == 1, 30, "the truncated utterance dropped")
    await gw.wait_for(lambda: asked_again(gw), 30, "the agent asking the caller to say it again")
    await gw.wait_for(lambda: REPEAT_LINE in json.dumps(gw.of("server.response.output_audio_transcript.done")),
                      60, "the repeat request spoken")
    await turn(gw, NAME_LINE, "the read-back of the name said again")
    await finish_booking(gw, toolbox)
    assert toolbox.requests["book_appointment"][0]["arguments"]["name"] == "John Smith"


@pytest.mark.usefixtures("toolbox")
async def test_a_clean_detach_drops_nothing(session: SessionService, gw: SimGateway) -> None:
    audio = await half_a_name(gw)
    detached = CarrierDetached(reason="gateway_drain", stream_id="MZ1")
    await gw.bus.publish_event(subjects.carrier_detached(gw.call_id), detached.encode(), call_id=gw.call_id)
    await resumed(gw)
    done = gw.count("server.response.done")
    await gw.send_audio(audio[len(audio) // 2:])  # the rest of the line, through the new gateway
    await gw.wait_for(lambda: gw.count("server.response.done") > done, 90, "the read-back")
    assert gw.count("client.input_audio_buffer.clear") == 0
    assert not asked_again(gw)
