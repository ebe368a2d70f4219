"""The caller simulator end to end through the real gateway and NATS, against a scripted agent on the bus.

The scripted agent stands in for the session service: it publishes Realtime server events on
``rt.<id>.server.*`` through JetStream (so they are logged and replayable), detects the caller's speech with
an energy VAD on ``call.<id>.audio.in``, clears on barge-in, calls tools (function_call items), and hangs up
after its goodbye has played (judged from ``call.<id>.carrier.mark`` echoes).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.gateway.server import RunningGateway
from shared import subjects
from shared.audio import ulaw_decode
from shared.bus import Bus, Envelope
from shared.contracts import CallStarted, CarrierDtmf, CarrierMark, CommandClear, CommandHangup, SessionSummary
from switchboard.caller import run_scenario
from switchboard.scenario import Scenario, load_scenario
from tests.integration.gateway_support import bus_fixture, wait_until  # noqa: F401

SPEED = 6.0
TONE = bytes([0x9E, 0x8F, 0x89, 0x86, 0x86, 0x89, 0x8E, 0x9C, 0x1E, 0x0F, 0x09, 0x06, 0x06, 0x09, 0x0E, 0x1C] * 10)


@dataclass
class Reply:
    """One agent reply: spoken text (with audio ms), optional tool call before it, hang up after it."""

    text: str
    audio_ms: int = 400
    tool: tuple[str, dict[str, Any]] | None = None
    then_hangup: bool = False


@dataclass
class AgentCall:
    call_id: str
    replies: list[Reply]
    voiced: int = 0
    silent: int = 0
    speaking: bool = False
    sent: dict[str, int] = field(default_factory=dict)
    played: dict[str, int] = field(default_factory=dict)
    cleared: list[str] = field(default_factory=list)
    dtmf: list[str] = field(default_factory=list)
    counter: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class ScriptedAgent:
    """Answers each caller utterance (or DTMF digit) with the next scripted :class:`Reply`."""

    def __init__(self, bus: Bus, replies: list[Reply], greeting: str | None = "Hello, how can I help?") -> None:
        self.bus = bus
        self.replies = replies
        self.greeting = greeting
        self.greeting_ms = 400
        self.calls: dict[str, AgentCall] = {}

    async def start(self) -> None:
        await self.bus.subscribe(subjects.all_calls_started(), self._on_started)

    async def _on_started(self, env: Envelope) -> None:
        call_id = CallStarted.parse(env.data).call_id
        call = AgentCall(call_id, list(self.replies))
        self.calls[call_id] = call
        await self.bus.subscribe(subjects.call_audio_in(call_id), lambda e: self._on_audio(call, e))
        await self.bus.subscribe(subjects.carrier_mark(call_id), lambda e: self._on_mark(call, e))
        await self.bus.subscribe(subjects.carrier_dtmf(call_id), lambda e: self._on_dtmf(call, e))
        await self.bus.subscribe(subjects.call_ended(call_id), lambda e: self._on_ended(call))
        # as the session does once it listens: the gateway stops holding the caller's audio
        await self._server(call, "session.updated", {"session": {"audio": {"output": {
            "format": {"type": "audio/pcmu"}}}}})
        if self.greeting:
            await self._client(call, "response.create", {"response": {}})
            await self._respond(call, Reply(self.greeting, audio_ms=self.greeting_ms))

    async def _server(self, call: AgentCall, etype: str, body: dict[str, Any]) -> None:
        call.counter += 1
        await self.bus.publish_event(subjects.rt_server(call.call_id, etype),
                                     {"type": etype, "event_id": f"evt_{call.counter}", **body}, call_id=call.call_id)

    async def _client(self, call: AgentCall, etype: str, body: dict[str, Any]) -> None:
        await self.bus.publish_event(subjects.rt_client(call.call_id, etype), {"type": etype, **body},
                                     call_id=call.call_id)

    async def _respond(self, call: AgentCall, reply: Reply) -> None:
        n = call.counter
        if reply.tool is not None:
            name, args = reply.tool
            rid = f"resp_{n}_tool"
            await self._server(call, "response.created", {"response": {"id": rid, "status": "in_progress"}})
            await self._server(call, "response.output_item.done", {"response_id": rid, "item": {
                "type": "function_call", "status": "completed", "name": name, "call_id": f"fc_{n}",
                "arguments": json.dumps(args)}})
            await self._server(call, "response.done", {"response": {"id": rid, "status": "completed"}})
            await asyncio.sleep(0.05)  # the tool runs
            await self._client(call, "conversation.item.create", {"item": {
                "type": "function_call_output", "call_id": f"fc_{n}", "output": "{}"}})
            await self._client(call, "response.create", {})
        rid, item = f"resp_{n}", f"item_{n}"
        await self._server(call, "response.created", {"response": {"id": rid, "status": "in_progress"}})
        frames = reply.audio_ms // 20
        for i in range(0, frames, 5):
            audio = TONE[: 160 * min(5, frames - i)]
            call.sent[item] = call.sent.get(item, 0) + len(audio)
            await self._server(call, "response.output_audio.delta", {
                "response_id": rid, "item_id": item, "delta": base64.b64encode(audio).decode()})
        await self._server(call, "response.output_audio_transcript.done", {"item_id": item, "transcript": reply.text})
        await self._server(call, "response.done", {"response": {"id": rid, "status": "completed"}})
        if reply.then_hangup:
            task = asyncio.create_task(self._hangup_when_played(call, item))
            call.tasks.add(task)

    async def _hangup_when_played(self, call: AgentCall, item: str) -> None:
        await wait_until(lambda: call.played.get(item, 0) >= call.sent[item] or item in call.cleared, 30)
        await self.bus.publish_event(subjects.command(call.call_id, "hangup"),
                                     CommandHangup(reason="end_call").encode(), call_id=call.call_id)

    async def _next(self, call: AgentCall) -> None:
        if call.replies:
            await self._respond(call, call.replies.pop(0))

    async def _on_audio(self, call: AgentCall, env: Envelope) -> None:
        rms = float(np.sqrt(np.mean(ulaw_decode(env.data).astype(np.float64) ** 2)))
        if rms > 300:
            call.voiced += 1
            call.silent = 0
            if call.voiced == 3 and not call.speaking:
                call.speaking = True
                await self._server(call, "input_audio_buffer.speech_started", {})
                unplayed = [i for i, n in call.sent.items() if call.played.get(i, 0) < n and i not in call.cleared]
                if unplayed:  # barge-in
                    call.cleared.extend(unplayed)
                    await self.bus.publish_event(subjects.command(call.call_id, "clear"),
                                                 CommandClear(reason="barge_in").encode(), call_id=call.call_id)
        else:
            call.silent += 1
            if call.speaking and call.silent >= 15:  # 300 ms of silence ends the utterance
                call.speaking, call.voiced = False, 0
                await self._server(call, "input_audio_buffer.speech_stopped", {})
                await self._client(call, "response.create", {})
                await self._next(call)
            elif not call.speaking:
                call.voiced = 0

    async def _on_mark(self, call: AgentCall, env: Envelope) -> None:
        mark = CarrierMark.parse(env.data)
        if not mark.cleared and mark.item_id is not None:
            call.played[mark.item_id] = mark.played_bytes

    async def _on_ended(self, call: AgentCall) -> None:
        """Like the session: a summary once the carrier leg is over."""
        summary = SessionSummary(call_id=call.call_id, turns={"assistant": call.counter})
        await self.bus.publish_event(subjects.session_event(call.call_id, "summary"), summary.encode(),
                                     call_id=call.call_id)

    async def _on_dtmf(self, call: AgentCall, env: Envelope) -> None:
        call.dtmf.append(CarrierDtmf.parse(env.data).digit)
        await self._next(call)


@pytest.fixture
async def agent_bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_url, name="scripted-agent", source="session")
    yield b
    await b.close()


BOOKING = Scenario.model_validate({
    "name": "book",
    "caller": {"from": "+15551230001", "to": "+15559870000"},
    "turns": [{"say": "I would like to book an appointment"}, {"say": "Yes please"}, {"say": "No thank you"}],
    "expect": {"tool_calls": [{"name": "book_appointment", "args": {"time": "10:00"}}, {"name": "end_call"}],
               "transcript_contains": ["booked", "goodbye"], "ended_by": "agent"},
})
BOOKING_REPLIES = [
    Reply("Shall I book you for ten o'clock tomorrow?"),
    Reply("You are booked for ten. Anything else?", tool=("book_appointment", {"date": "2026-11-23", "time": "10:00"})),
    Reply("Thank you for calling, goodbye.", audio_ms=600, tool=("end_call", {}), then_hangup=True),
]


async def test_booking_scenario_agent_hangs_up(gw: RunningGateway, nats_url: str, agent_bus: Bus,
                                               tmp_path: Path) -> None:
    agent = ScriptedAgent(agent_bus, BOOKING_REPLIES)
    await agent.start()
    lines: list[str] = []
    result = await run_scenario(BOOKING, gateway_url=gw.http_url, nats_url=nats_url, speed=SPEED,
                                wav=tmp_path / "call.wav", out=lines.append, turn_timeout=30)
    assert result.failures == [] and result.ok
    assert result.ended_by == "agent"
    assert [c["name"] for c in result.tool_calls] == ["book_appointment", "end_call"]
    assert [t for s, t in result.transcript if s == "agent"] == ["Hello, how can I help?"] + [r.text for r in
                                                                                             BOOKING_REPLIES]
    assert result.said == [t.say for t in BOOKING.turns]
    # what both sides said was printed, in causal order: each caller line before the agent's answer to it
    printed = "\n".join(lines)
    assert printed.index("caller: I would like") < printed.index("agent: Shall I book")
    assert printed.index("caller: Yes please") < printed.index("agent: You are booked")
    assert printed.index("caller: No thank you") < printed.index("agent: Thank you for calling")
    # the recording: stereo 8 kHz PCM16, caller speech on the left, the agent's tone on the right
    with wave.open(str(result.wav), "rb") as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (2, 8000, 2)
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    assert np.abs(samples[:, 0]).max() > 2000 and np.abs(samples[:, 1]).max() > 2000
    left_active = np.flatnonzero(np.abs(samples[:, 0]) > 1000)
    right_active = np.flatnonzero(np.abs(samples[:, 1]) > 1000)
    assert right_active[0] < left_active[0]  # the greeting plays before the caller speaks


async def test_barge_in_dtmf_and_caller_hangup(gw: RunningGateway, nats_url: str, agent_bus: Bus,
                                               peer_bus: Bus) -> None:
    replies = [Reply("Let me tell you a very long story about our opening hours", audio_ms=3000),
               Reply("Sorry, go ahead."), Reply("You pressed five."), Reply("Our address is one main street",
                                                                             audio_ms=2000)]
    agent = ScriptedAgent(agent_bus, replies)
    await agent.start()
    scenario = Scenario.model_validate({
        "name": "interrupt", "turns": [
            {"say": "Tell me about the hours"}, {"say": "Stop please", "barge_in_ms": 300}, {"dtmf": "5"},
            {"say": "Where are you", "hangup_after_ms": 400}],
        "expect": {"transcript_contains": ["pressed five"], "ended_by": "caller"}})
    result = await run_scenario(scenario, gateway_url=gw.http_url, nats_url=nats_url, speed=SPEED, turn_timeout=30)
    assert result.failures == [] and result.ended_by == "caller"
    assert result.call_id is not None
    call = agent.calls[result.call_id]
    assert call.dtmf == ["5"]
    assert call.cleared == ["item_5"] or len(call.cleared) == 1  # the long story was interrupted
    marks = [e.json() async for e in peer_bus.replay(subjects.carrier_mark(result.call_id), subjects.CALLS_STREAM)]
    story = [m for m in marks if m["item_id"] == call.cleared[0]]
    assert any(m["cleared"] for m in story)  # pending marks echoed as cleared after the clear
    played = max((m["played_bytes"] for m in story if not m["cleared"]), default=0)
    assert 0 < played < call.sent[call.cleared[0]]  # it was cut short


async def test_failed_expectation_is_reported(gw: RunningGateway, nats_url: str, agent_bus: Bus) -> None:
    agent = ScriptedAgent(agent_bus, [Reply("Fine.", then_hangup=True)])
    await agent.start()
    scenario = Scenario.model_validate({"name": "wrong", "turns": [{"say": "Hello"}], "expect": {
        "tool_calls": [{"name": "book_appointment"}], "transcript_contains": ["booked"], "ended_by": "caller"}})
    result = await run_scenario(scenario, gateway_url=gw.http_url, nats_url=nats_url, speed=SPEED, twiml=False,
                                turn_timeout=30)
    assert not result.ok
    assert any("book_appointment" in f for f in result.failures)
    assert any("'booked'" in f for f in result.failures)
    assert any("ended by the caller" in f for f in result.failures)


async def test_cli_exit_codes(gw: RunningGateway, nats_url: str, agent_bus: Bus, tmp_path: Path) -> None:
    agent = ScriptedAgent(agent_bus, [Reply("Goodbye then.", tool=("end_call", {}), then_hangup=True)] * 2)
    await agent.start()
    good = tmp_path / "good.yaml"
    good.write_text('name: good\nturns:\n  - say: "Bye"\nexpect:\n  tool_calls: [{name: end_call}]\n'
                    '  ended_by: agent\n')
    bad = tmp_path / "bad.yaml"
    bad.write_text('name: bad\nturns:\n  - say: "Bye"\nexpect:\n  transcript_contains: ["never said"]\n')
    assert load_scenario(good).expect.ended_by == "agent"
    codes = []
    for path in (good, bad):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "switchboard.cli", "call", str(path), "--gateway", gw.http_url, "--nats", nats_url,
            "--speed", str(SPEED), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        codes.append((proc.returncode, out.decode()))
    assert codes[0][0] == 0, codes[0][1]
    assert "agent: Goodbye then." in codes[0][1]
    assert codes[1][0] == 1 and "never said" in codes[1][1]
    unreadable = tmp_path / "broken.yaml"
    unreadable.write_text("name: x\nturns: [{}]\n")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "switchboard.cli", "call", str(unreadable),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2


async def test_barge_in_on_the_greeting(gw: RunningGateway, nats_url: str, agent_bus: Bus) -> None:
    agent = ScriptedAgent(agent_bus, [Reply("Of course.", tool=("end_call", {}), then_hangup=True)],
                          greeting="Welcome to a very long greeting that nobody wants to hear in full")
    agent.greeting_ms = 3000
    await agent.start()
    scenario = Scenario.model_validate({"name": "interrupt-greeting", "turns": [
        {"say": "Operator please", "barge_in_ms": 200}], "expect": {"ended_by": "agent"}})
    result = await run_scenario(scenario, gateway_url=gw.http_url, nats_url=nats_url, speed=SPEED, turn_timeout=30)
    assert result.failures == []
    assert result.call_id is not None
    call = agent.calls[result.call_id]
    assert len(call.cleared) == 1  # the greeting was cut short by the caller's line
    assert [line for speaker, line in result.transcript if speaker == "agent"][-1] == "Of course."


async def test_the_caller_says_a_line_again_when_the_agent_asks_again(gw: RunningGateway, nats_url: str,
                                                                      agent_bus: Bus) -> None:
    """An agent that did not get the answer (audio lost to a reconnect or a crash) asks its question again word for
    word: the simulated caller repeats its line, as a person would, and the scenario goes on."""
    asked = BOOKING_REPLIES[0]
    agent = ScriptedAgent(agent_bus, [asked, asked, *BOOKING_REPLIES[1:]])
    await agent.start()
    lines: list[str] = []
    result = await run_scenario(BOOKING, gateway_url=gw.http_url, nats_url=nats_url, speed=SPEED,
                                out=lines.append, turn_timeout=30)
    assert result.failures == [] and result.ok
    assert result.said == ["I would like to book an appointment", "Yes please", "Yes please", "No thank you"]
    assert sum("(asked again: repeating)" in line for line in lines) == 1
