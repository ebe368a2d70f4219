"""A call's model session ends with the call, also when ``call.<id>.ended`` was published before the session
subscribed to it (issue 20 item 6, session part).

Real nats-server, the real gateway on real Twilio WebSockets, the session service and an in-process local
model (greeting spoken at real-time pace, so a model session left open keeps logging ``output_audio.delta``).
Checks are causal, not timed: every call gets a summary naming the gateway's end reason (the session learned
of ``ended``), the model has no open session left, and nothing from the model is logged after the summary.
The time from ``ended`` to the summary (model socket closed) is printed, not asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
from collections.abc import AsyncIterator, Callable

import pytest
import websockets

from services.gateway.server import running_gateway
from services.localmodel.server import LocalModelServer
from services.session.agent import load_agent
from services.session.call import Call, CallOptions, ModelEndpoint
from services.session.service import SessionService
from shared import subjects
from shared.bus import Bus, Envelope
from shared.config import load_settings
from shared.contracts import CallEnded, CallStarted
from tests.integration.gateway_support import start_frame
from tests.integration.localmodel_support import running_server
from tests.integration.session_support import ROOT

pytestmark = pytest.mark.timeout(600)

CALLS = int(os.environ.get("SWITCHBOARD_TEST_START_STOP_CALLS", "200"))
"""Start-then-stop calls placed by the load test (issue 20 measured 200)."""
WAVE = 20
"""Calls placed at once."""
AGENT = ROOT / "agents" / "receptionist.yaml"  # has a greeting: the model starts talking at once


@pytest.fixture
async def model() -> AsyncIterator[LocalModelServer]:
    async with running_server(mode="echo", pacing="realtime") as server:
        yield server


def endpoint(server: LocalModelServer) -> ModelEndpoint:
    return ModelEndpoint(f"ws://127.0.0.1:{server.port}/v1/realtime?model=gpt-realtime", None, "gpt-realtime")


async def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate()`` every 50 ms; AssertionError naming ``what`` after ``timeout`` s."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                if predicate():
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{what} not within {timeout} s") from None


async def rt_after(bus: Bus, call_id: str, ts_ns: int) -> list[Envelope]:
    """The RT stream's messages of ``call_id`` published after ``ts_ns`` (``Switchboard-Ts``)."""
    return [env async for env in bus.replay(subjects.rt_all(call_id), subjects.RT_STREAM)
            if env.ts_ns is not None and env.ts_ns > ts_ns]


async def test_ended_published_before_pickup_ends_the_session(gateway_bus: Bus, bus: Bus,
                                                              model: LocalModelServer) -> None:
    """``ended`` is in the CALLS stream before the session subscribes: the session ends at once, closes its
    model socket and names the gateway's reason (before the fix it ran until the 120 s carrier watchdog)."""
    cid = subjects.new_call_id()
    await gateway_bus.publish_event(subjects.call_ended(cid), CallEnded(reason="caller_hangup", duration_ms=3).encode(),
                                    call_id=cid)
    await gateway_bus.flush_acks(10)
    summaries: list[Envelope] = []

    async def on_summary(env: Envelope) -> None:
        summaries.append(env)

    await gateway_bus.subscribe(subjects.session_event(cid, "summary"), on_summary)
    info = CallStarted(call_id=cid, carrier="twilio", agent="receptionist", audio_format="audio/pcmu",
                       from_="+15551230001", to="+15559870000", started_at="2026-12-07T05:30:00+00:00")
    call = Call(bus, load_agent(AGENT), info, endpoint(model), CallOptions())
    await asyncio.wait_for(call.run(), 60)
    await wait_until(lambda: summaries, 10, "summary")
    assert summaries[0].json()["ended_reason"] == "caller_hangup"
    assert call.model is None
    await wait_until(lambda: not model.sessions, 10, "model session closed")
    assert summaries[0].ts_ns is not None
    assert await rt_after(bus, cid, summaries[0].ts_ns) == []


async def test_start_then_stop_calls_close_every_model_session(gateway_bus: Bus, bus: Bus, nats_url: str,
                                                               model: LocalModelServer) -> None:
    settings = load_settings(nats_url=nats_url, agent=AGENT, js_max_age=600, insecure_dev=True)
    service = SessionService(bus, settings, endpoint=endpoint(model), options=CallOptions())
    await service.start()
    ended: dict[str, Envelope] = {}
    summaries: dict[str, Envelope] = {}

    async def on_event(env: Envelope) -> None:
        parsed = subjects.parse(env.subject)
        if parsed.rest == "ended":
            ended[str(parsed.call_id)] = env
        elif parsed.rest == "session.summary":
            summaries[str(parsed.call_id)] = env

    sub = await gateway_bus.subscribe(subjects.all_call_events(), on_event, dedupe=False)

    async def start_then_stop(gw_url: str, n: int) -> None:
        async with websockets.connect(gw_url + "/twilio/media") as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(start_frame(f"startstop-{n}"))
            await ws.send(json.dumps({"event": "stop", "sequenceNumber": "2",
                                      "streamSid": "MZ00000000000000000000000000000001"}))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 30)

    try:
        async with running_gateway(gateway_bus, settings) as gw:
            for first in range(0, CALLS, WAVE):
                await asyncio.gather(*(start_then_stop(gw.ws_url, n) for n in range(first, min(CALLS, first + WAVE))))
            await wait_until(lambda: len(ended) >= CALLS, 60, f"{CALLS} ended (have {len(ended)})")
            # the session learned of every ended (without the CALLS check most would wait for the 120 s watchdog)
            await wait_until(lambda: set(ended) <= set(summaries), 120,
                             f"a summary for every call (have {len(set(ended) & set(summaries))} of {len(ended)})")
            await wait_until(lambda: not model.sessions, 30, f"every model session closed ({len(model.sessions)} open)")
        reasons = {summaries[cid].json()["ended_reason"] for cid in ended}
        assert reasons == {"caller_hangup"}
        assert {e.json()["reason"] for e in ended.values()} == {"caller_hangup"}
        late: dict[str, int] = {}
        after_ended: list[int] = []
        closed_ms: list[float] = []
        for cid, env in ended.items():
            summary = summaries[cid]
            assert env.ts_ns is not None and summary.ts_ns is not None
            late[cid] = len(await rt_after(bus, cid, summary.ts_ns))
            after_ended.append(sum(1 for e in await rt_after(bus, cid, env.ts_ns)
                                   if e.subject.endswith("response.output_audio.delta")))
            closed_ms.append((summary.ts_ns - env.ts_ns) / 1e6)
        assert sum(late.values()) == 0, {cid: n for cid, n in late.items() if n}
        closed_ms.sort()
        print(f"\n{len(ended)} start-then-stop calls: ended → summary (model closed) ms p50 "
              f"{statistics.median(closed_ms):.0f} max {closed_ms[-1]:.0f}; deltas logged after ended: "
              f"{sum(after_ended)} in {sum(1 for n in after_ended if n)} calls")
        assert service.failed_calls == []
    finally:
        await sub.unsubscribe()
        await service.stop()
