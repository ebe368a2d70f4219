"""An OpenAI SIP call survives its session instance: the real local model (agent mode, SIP side on), the gateway's
webhook, two session instances, test tools on nats.micro and a SIP leg driven by the test.

The owner accepts the call and serves it over the sideband; its NATS connection then dies and it stops serving
(as a killed process would: no renewals, its sideband gone). The peer takes the call over when the ownership
lapses and re-attaches to the same conversation at the model — nothing rebuilt from the log, no second greeting
— and the booking completes; the caller's hangup ends the call with ``caller_hangup``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable

import pytest

from services.gateway.server import running_gateway
from services.session.call import CallOptions, ModelEndpoint
from services.session.rebuild import REBUILD_PREFIX
from services.session.service import SessionService
from shared import subjects
from shared.bus import Bus, Envelope
from shared.carriers.frames import PlayMark
from shared.config import Settings, load_settings
from shared.contracts import CallEnded, CallStarted, SessionModelConnected
from switchboard.caller.sip import SipLine, sip_leg_url
from tests.integration.localmodel_support import running_server
from tests.integration.session_support import ROOT, ToolBox, speech
from tests.integration.test_session_call import standard_tools

pytestmark = pytest.mark.timeout(300)

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
FRAME = 160


class Watch:
    """What the test follows on the bus for the one call: started, response.done count, model_connected."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.call_id: str | None = None
        self.responses = 0
        self.connected: list[SessionModelConnected] = []
        self.changed = asyncio.Event()

    async def start(self) -> None:
        await self.bus.subscribe(subjects.all_calls_started(), self._started)
        await self.bus.subscribe("rt.*.server.response.done", self._done)
        await self.bus.subscribe("call.*.session.model_connected", self._connected)

    async def _started(self, env: Envelope) -> None:
        self.call_id = CallStarted.parse(env.data).call_id
        self.changed.set()

    async def _done(self, env: Envelope) -> None:
        self.responses += 1
        self.changed.set()

    async def _connected(self, env: Envelope) -> None:
        self.connected.append(SessionModelConnected.parse(env.data))
        self.changed.set()

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 1.0)
        assert predicate(), what


async def instance(nats_url: str, settings: Settings, name: str) -> tuple[Bus, SessionService]:
    bus = await Bus.connect(nats_url, name=name, source="session")
    service = SessionService(bus, settings, endpoint=ModelEndpoint("ws://unused", None, "gpt-realtime"),
                             options=CallOptions())
    await service.start()
    return bus, service


async def caller_plays(line: SipLine) -> None:
    """Read the leg: agent audio "plays" at once, and every mark is echoed (so the goodbye counts as heard)."""
    with contextlib.suppress(Exception):
        while True:
            event = await line.receive()
            if isinstance(event, PlayMark):
                await line.mark(event.name)


async def say(line: SipLine, watch: Watch, text: str, what: str) -> None:
    done = watch.responses
    audio = await speech(text)
    for i in range(0, len(audio), FRAME):
        await line.media(audio[i:i + FRAME])
        await asyncio.sleep(0.005)
    await watch.until(lambda: watch.responses > done, what)


@pytest.fixture
async def gateway_bus(nats_url: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_url, name="sip-gateway", source="gateway")
    await bus.ensure_streams(load_settings(js_max_age=600))
    yield bus
    await bus.close()


async def test_a_sip_call_survives_its_session_instance(nats_url: str, gateway_bus: Bus) -> None:
    async with running_server(mode="agent", sip_port=0, webhook_secret=SECRET) as model:
        assert model.sip is not None and model.sip_port is not None
        api = f"http://127.0.0.1:{model.sip_port}/v1"
        settings = load_settings(nats_url=nats_url, agent=ROOT / "agents" / "receptionist.yaml", js_max_age=600,
                                 openai_webhook_secret=SECRET, openai_api_url=api, session_lost_s=30)
        tools_bus = await Bus.connect(nats_url, name="sip-tools", source="tools")
        toolbox = ToolBox(tools_bus)
        await toolbox.serve(standard_tools())
        pair = [await instance(nats_url, settings, f"sip-session-{n}") for n in range(2)]
        watch = Watch(gateway_bus)
        await watch.start()
        try:
            async with running_gateway(gateway_bus, settings) as gw:
                model.sip.webhook_url = f"{gw.http_url}/openai/webhook"
                line = await SipLine.dial(sip_leg_url(model.sip_port), from_="+15551230007", to="+15559870000",
                                          params={})
                reader = asyncio.create_task(caller_plays(line))
                await watch.until(lambda: watch.responses > 0, "greeting")
                call_id = watch.call_id
                assert call_id is not None
                await say(line, watch, "Hi, I would like to book an appointment for tomorrow at ten", "name asked")

                first = next(n for n, (_, s) in enumerate(pair) if call_id in s.calls)
                crashed_bus, crashed = pair[first]
                await crashed_bus.nc.close()  # no renewals, nothing published any more
                await crashed.calls[call_id].hand_off()  # and its sideband is gone with the process
                await watch.until(lambda: any(c.takeover == "lapse" for c in watch.connected), "the takeover")
                survivor_bus, survivor = pair[1 - first]
                assert call_id in survivor.calls

                await say(line, watch, "My name is John Smith", "read-back after the takeover")
                await say(line, watch, "Yes please", "booking confirmation")
                await watch.until(lambda: bool(toolbox.requests.get("book_appointment")), "book_appointment")
                await line.stop()  # the caller hangs up
                ended = None
                async with asyncio.timeout(30):
                    while ended is None:
                        ended = await survivor_bus.last_message(subjects.CALLS_STREAM, subjects.call_ended(call_id))
                        await asyncio.sleep(0.1)
                reader.cancel()
        finally:
            for bus, service in pair:
                if bus.nc.is_closed:
                    await service.ownership.stop()
                else:
                    await service.stop()
                    await bus.close()
            await toolbox.stop()
            await tools_bus.close()

    assert toolbox.requests["book_appointment"][0]["arguments"]["time"] == "10:00"
    assert CallEnded.parse(ended.data).reason == "caller_hangup"
    rebuilt = [env async for env in gateway_bus.replay(subjects.rt_client(call_id, "conversation.item.create"),
                                                       subjects.RT_STREAM)
               if str(env.json().get("event_id", "")).startswith(REBUILD_PREFIX)]
    assert rebuilt == []  # the conversation lives on at the model: re-attached, not rebuilt
    greetings = [env async for env in gateway_bus.replay(subjects.rt_client(call_id, "response.create"),
                                                         subjects.RT_STREAM)
                 if "Greet the caller" in str(env.json().get("response", {}).get("instructions", ""))]
    assert len(greetings) == 1
