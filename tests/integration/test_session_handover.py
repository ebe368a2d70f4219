"""A live call survives its session instance (issue 22 items 1–3): two session instances on a real nats-server,
the real local model, real test tools on nats.micro and a simulated gateway on the bus.

- ownership: each call is claimed once in the call-owners KV bucket; everything the owner publishes for the call
  carries its epoch (``Switchboard-Epoch``);
- handover: the owner stops (SIGTERM path, :meth:`SessionService.stop`); the peer takes the call over at
  epoch 2, rebuilds the conversation from the log, and the booking completes with its tool call; the old owner
  publishes no summary;
- takeover: the owner's NATS connection dies under it (as in ``kill -9``); after its ownership lapses the peer
  takes the call over, rebuilds it and the booking completes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.session.call import REPEAT_LINE, CallOptions, ModelEndpoint
from services.session.ownership import Owner, Ownership
from services.session.rebuild import REBUILD_PREFIX
from services.session.service import SessionService
from shared import subjects
from shared.bus import Bus, Headers
from shared.config import load_settings
from tests.integration.session_support import ROOT, SimGateway, ToolBox, speech, start_localmodel
from tests.integration.test_session_call import standard_tools

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
async def model_url() -> AsyncIterator[str]:
    async with start_localmodel(pacing="fast") as url:
        yield url


async def new_instance(nats_url: str, model_url: str, name: str) -> tuple[Bus, SessionService]:
    bus = await Bus.connect(nats_url, name=name, source="session")
    settings = load_settings(nats_url=nats_url, agent=ROOT / "agents" / "receptionist.yaml", js_max_age=600)
    service = SessionService(bus, settings, endpoint=ModelEndpoint(model_url, None, "gpt-realtime"),
                             options=CallOptions(barge_in_settle_s=2.0))
    await service.start()
    return bus, service


@pytest.fixture
async def pair(nats_url: str, model_url: str) -> AsyncIterator[list[tuple[Bus, SessionService]]]:
    instances = [await new_instance(nats_url, model_url, f"session-{n}") for n in range(2)]
    yield instances
    for bus, service in instances:
        if not bus.nc.is_closed:
            await service.stop()
            await bus.close()
        else:
            await service.ownership.stop()


@pytest.fixture
async def gateway_bus(nats_url: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_url, name="test-gateway", source="gateway")
    await bus.ensure_streams(load_settings(js_max_age=600))
    yield bus
    await bus.close()


@pytest.fixture
async def toolbox(nats_url: str) -> AsyncIterator[ToolBox]:
    bus = await Bus.connect(nats_url, name="test-tools", source="tools")
    box = ToolBox(bus)
    await box.serve(standard_tools())
    yield box
    await box.stop()
    await bus.close()


async def say(gw: SimGateway, text: str) -> None:
    await gw.send_audio(await speech(text))


async def turn(gw: SimGateway, text: str, what: str) -> None:
    done = gw.count("server.response.done")
    await say(gw, text)
    await gw.wait_for(lambda: gw.count("server.response.done") > done, 90, what)


def owner_of(pair: list[tuple[Bus, SessionService]], call_id: str) -> int:
    return next(n for n, (_, s) in enumerate(pair) if call_id in s.calls)


async def finish_booking(gw: SimGateway, toolbox: ToolBox) -> None:
    """From the read-back on: confirm, wait for the booking, say goodbye, end the call."""
    await say(gw, "Yes please")
    await gw.wait_for(lambda: bool(toolbox.requests.get("book_appointment")), 90, "book_appointment")
    await gw.wait_for(lambda: "booked" in json.dumps(gw.of("server.response.output_audio_transcript.done")),
                      90, "booking confirmation")
    await gw.end()
    await gw.wait_for(lambda: any(n == "summary" for n, _ in gw.session_events), 30, "summary")


async def test_sigterm_hands_the_call_over_and_the_booking_completes(
        pair: list[tuple[Bus, SessionService]], gateway_bus: Bus, toolbox: ToolBox) -> None:
    gw = SimGateway(gateway_bus)
    await gw.start()
    await gw.wait_for(lambda: gw.count("server.response.done") > 0, 60, "greeting")
    first = owner_of(pair, gw.call_id)
    old_bus, old = pair[first]
    new_bus, new = pair[1 - first]
    assert old.ownership.held[gw.call_id][0].epoch == 1
    await turn(gw, "Hi, I would like to book an appointment for tomorrow at ten", "reply asking for the name")

    stopping = asyncio.create_task(old.stop())
    await gw.wait_for(lambda: any(n == "model_connected" and e.get("takeover") == "handover"
                                  for n, e in gw.session_events), 60, "the peer's model session")
    await asyncio.wait_for(stopping, 60)
    assert gw.call_id in new.calls and gw.call_id not in old.calls
    assert new.ownership.held[gw.call_id][0].epoch == 2
    rebuilt = [e for e in gw.of("client.conversation.item.create") if str(e.get("event_id", "")).startswith(
        REBUILD_PREFIX)]
    assert any(e["item"].get("role") == "user" for e in rebuilt), "the caller's turn was not rebuilt"

    await turn(gw, "My name is John Smith", "read-back from the new owner")
    await finish_booking(gw, toolbox)
    assert toolbox.requests["book_appointment"][0]["arguments"]["time"] == "10:00"
    assert sum(1 for n, _ in gw.session_events if n == "summary") == 1  # only the new owner's
    calls = [env async for env in new_bus.replay(subjects.call_all(gw.call_id), subjects.CALLS_STREAM)]
    assert {e.headers.get(Headers.EPOCH) for e in calls if e.source == "session"} == {"1", "2"}
    summary = next(e for e in calls if e.subject.endswith(".session.summary"))
    assert summary.headers.get(Headers.EPOCH) == "2"
    assert any(e.subject.endswith(".session.handover") and e.headers.get(Headers.EPOCH) == "1" for e in calls)
    await gw.close()
    await old_bus.close()


async def test_a_crashed_owner_is_taken_over_and_the_booking_completes(
        pair: list[tuple[Bus, SessionService]], gateway_bus: Bus, toolbox: ToolBox) -> None:
    gw = SimGateway(gateway_bus)
    await gw.start()
    await gw.wait_for(lambda: gw.count("server.response.done") > 0, 60, "greeting")
    first = owner_of(pair, gw.call_id)
    crashed_bus, _ = pair[first]
    _, survivor = pair[1 - first]
    await turn(gw, "Hi, I would like to book an appointment for tomorrow at ten", "reply asking for the name")

    await crashed_bus.nc.close()  # the owner's connection dies: no heartbeat, nothing published any more
    await gw.wait_for(lambda: any(n == "model_connected" and e.get("takeover") == "lapse"
                                  for n, e in gw.session_events), 60, "the takeover's model session")
    assert gw.call_id in survivor.calls
    assert survivor.ownership.held[gw.call_id][0].epoch == 2

    await turn(gw, "My name is John Smith", "read-back after the takeover")
    await finish_booking(gw, toolbox)
    assert toolbox.requests["book_appointment"][0]["arguments"]["time"] == "10:00"
    assert not asked_again(gw)  # the replay lost nothing
    await gw.close()


def asked_again(gw: SimGateway) -> bool:
    return any(REPEAT_LINE in json.dumps(event) for name, event in gw.events if name == "client.response.create")


async def test_caller_audio_lost_before_a_takeover_makes_the_agent_ask_again(
        pair: list[tuple[Bus, SessionService]], gateway_bus: Bus, toolbox: ToolBox) -> None:
    gw = SimGateway(gateway_bus)
    gw.replay_gap_bytes = 8000  # the gateway no longer kept the last second (μ-law) before the replay's offset
    await gw.start()
    await gw.wait_for(lambda: gw.count("server.response.done") > 0, 60, "greeting")
    crashed_bus, _ = pair[owner_of(pair, gw.call_id)]
    await turn(gw, "Hi, I would like to book an appointment for tomorrow at ten", "reply asking for the name")
    await crashed_bus.nc.close()
    await gw.wait_for(lambda: asked_again(gw), 60, "the new owner asks the caller to say it again")
    await gw.close()


async def test_ownership_entries_are_claimed_once_and_released(nats_url: str, model_url: str,
                                                               gateway_bus: Bus, tmp_path: Path) -> None:
    bus, service = await new_instance(nats_url, model_url, "session-solo")
    try:
        gw = SimGateway(gateway_bus)
        await gw.start()
        await gw.wait_for(lambda: gw.call_id in service.calls, 30, "taken")
        owner, _ = await service.ownership.current(gw.call_id)
        assert owner is not None and owner.owner == service.ownership.instance and owner.epoch == 1
        assert await service.ownership.claim(gw.call_id) is None  # a second claim never succeeds
        await gw.end()
        await gw.wait_for(lambda: any(n == "summary" for n, _ in gw.session_events), 30, "summary")
        for _ in range(100):
            if (await service.ownership.current(gw.call_id))[0] is None:
                break
            await asyncio.sleep(0.05)
        assert (await service.ownership.current(gw.call_id))[0] is None
        await gw.close()
    finally:
        await service.stop()
        await bus.close()


async def test_a_lone_instance_stopped_leaves_the_call_to_its_restart(nats_url: str, model_url: str,
                                                                      gateway_bus: Bus, toolbox: ToolBox) -> None:
    """SIGTERM with no peer (one replica, restarted by its supervisor): the call is served through the drain, then
    released — without a summary — and the restarted instance takes it over."""
    bus, lone = await new_instance(nats_url, model_url, "session-lone")
    gw = SimGateway(gateway_bus)
    await gw.start()
    await gw.wait_for(lambda: gw.count("server.response.done") > 0, 60, "greeting")
    await turn(gw, "Hi, I would like to book an appointment for tomorrow at ten", "reply asking for the name")
    await lone.stop(drain_s=0)
    owner, _ = await lone.ownership.current(gw.call_id)
    assert owner is not None and owner.released and owner.epoch == 1  # marked released, not left to lapse
    await bus.close()
    assert not any(n == "summary" for n, _ in gw.session_events)
    bus2, restarted = await new_instance(nats_url, model_url, "session-restarted")
    try:
        await gw.wait_for(lambda: any(n == "model_connected" and e.get("takeover") == "lapse"
                                      for n, e in gw.session_events), 60, "the restarted instance's takeover")
        await turn(gw, "My name is John Smith", "read-back after the restart")
        await finish_booking(gw, toolbox)
        assert toolbox.requests["book_appointment"][0]["arguments"]["time"] == "10:00"
    finally:
        await restarted.stop()
        await bus2.close()
        await gw.close()


async def test_a_released_entry_is_taken_over_without_waiting_for_the_ttl(bus: Bus, unique: str) -> None:
    """An instance that stops with a call live marks its entry released; a watcher reports it at once (its TTL
    here is an hour, so only the release can make it report)."""
    leaving, watching = Ownership(bus.js), Ownership(bus.js, ttl_s=3600)
    lapsed: asyncio.Queue[tuple[str, Owner]] = asyncio.Queue()
    call_id = f"call_rel{unique}"

    async def on_lapsed(lapsed_id: str, owner: Owner, revision: int) -> None:
        if lapsed_id == call_id:  # other tests' released entries are in the bucket too
            await lapsed.put((lapsed_id, owner))

    watching.on_lapsed(on_lapsed)
    await leaving.start(watch=False)
    await watching.start()
    try:
        assert await leaving.claim(call_id) == 1
        await leaving.leave(call_id)
        got_id, owner = await asyncio.wait_for(lapsed.get(), 30)
        assert (got_id, owner.owner, owner.epoch, owner.released) == (call_id, leaving.instance, 1, True)
        assert await watching.take_over(call_id) == 2
    finally:
        await leaving.stop()
        await watching.stop()
