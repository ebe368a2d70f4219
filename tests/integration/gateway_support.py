"""Fixtures and helpers for the gateway integration tests.

``tests/integration/conftest.py`` registers the fixtures (``gw``, ``peer_bus``, ``peer``, ``recorder``,
``audio_tap``); a gateway test module imports :func:`bus_fixture` to have the gateway's bus as ``bus`` (the
conftest's ``bus`` is a session-side one).

A real nats-server (``nats_url``), the gateway app on a free port (uvicorn), an
:class:`~switchboard.testing.echo_peer.EchoPeer` on its own bus connection standing in for the session, and a
:class:`Recorder` of every call-level event.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from services.gateway.server import RunningGateway, running_gateway
from shared import subjects
from shared.bus import Bus, Envelope
from shared.config import load_settings
from shared.contracts import (
    CallEnded,
    CallStarted,
    CarrierDtmf,
    CarrierError,
    CarrierMark,
    ContractError,
    parse_command,
    parse_session_event,
)
from switchboard.testing.echo_peer import EchoPeer

TIMEOUT = 10.0  # generous: a busy 2-core machine


@pytest.fixture(name="bus")
def bus_fixture(gateway_bus: Bus) -> Bus:
    """The gateway's bus (conftest's ``gateway_bus``, the one :func:`gw_fixture` serves on) as ``bus``."""
    return gateway_bus


@pytest.fixture(name="peer_bus")
async def peer_bus_fixture(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_url, name="echo-peer", source="session")
    yield b
    await b.close()


@pytest.fixture(name="gw")
async def gw_fixture(gateway_bus: Bus, nats_url: str) -> AsyncIterator[RunningGateway]:
    async with running_gateway(gateway_bus, load_settings(nats_url=nats_url, insecure_dev=True)) as running:
        yield running


@pytest.fixture(name="peer")
async def peer_fixture(peer_bus: Bus) -> AsyncIterator[EchoPeer]:
    p = EchoPeer(peer_bus)
    await p.start()
    yield p
    await p.stop()


_CALL_CONTRACTS: dict[str, Any] = {"started": CallStarted, "ended": CallEnded, "carrier.mark": CarrierMark,
                                    "carrier.dtmf": CarrierDtmf, "carrier.error": CarrierError}


def contract_problem(env: Envelope) -> str | None:
    """Why a call-level message does not match its contract (``shared.contracts``), None when it does."""
    rest = subjects.parse(env.subject).rest
    try:
        if rest.startswith("command."):
            parse_command(rest.removeprefix("command."), env.data)
        elif rest.startswith("session."):
            parse_session_event(rest.removeprefix("session."), env.data)
        elif rest in _CALL_CONTRACTS:
            _CALL_CONTRACTS[rest].parse(env.data)
    except ContractError as exc:
        return f"{env.subject}: {exc}"
    return None


class Recorder:
    """Collects every call-level event of every call (a core subscription on ``call.>``) and checks each JSON
    one against its contract (:attr:`invalid`; the fixture fails the test when any does not match)."""

    def __init__(self) -> None:
        self.events: list[Envelope] = []
        self.invalid: list[str] = []
        self.changed = asyncio.Event()

    async def handler(self, env: Envelope) -> None:
        if not env.subject.endswith(".audio.in"):
            problem = contract_problem(env)
            if problem is not None:
                self.invalid.append(problem)
        self.events.append(env)
        self.changed.set()

    def of(self, call_id: str, rest: str) -> list[Envelope]:
        return [e for e in self.events if e.subject == f"call.{call_id}.{rest}"]

    def started_with(self, run_id: str) -> dict[str, Any] | None:
        for env in self.events:
            if env.subject.endswith(".started") and CallStarted.parse(env.data).custom_parameters.get(
                    "run_id") == run_id:
                payload: dict[str, Any] = env.json()
                return payload
        return None

    async def wait_for(self, predicate: Any, timeout: float = TIMEOUT) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                value = predicate()
                if value:
                    return value
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture(name="recorder")
async def recorder_fixture(peer_bus: Bus) -> AsyncIterator[Recorder]:
    rec = Recorder()
    sub = await peer_bus.subscribe(subjects.all_call_events(), rec.handler, dedupe=False)
    yield rec
    await sub.unsubscribe()
    assert rec.invalid == [], "the gateway published messages that do not match their contracts"


class AudioTap:
    """Every ``call.<id>.audio.in`` frame, by call id, from one wildcard subscription opened BEFORE the call.

    A subscription made after the call started, right before the frames are sent, could miss them: nats-py's
    flush could return before the server had the SUB (seen in ~9 % of trials; fixed in
    :class:`shared.bus.wire.SwitchboardClient`, see ``test_flush_after_subscribe_means_the_server_has_the_
    subscription``). Interest registered before the call exists is in place by the first frame either way.
    """

    def __init__(self) -> None:
        self.frames: dict[str, list[Envelope]] = {}
        self._sub: Any = None

    async def start(self, bus: Bus) -> AudioTap:
        async def on_audio(env: Envelope) -> None:
            if env.call_id:
                self.frames.setdefault(env.call_id, []).append(env)

        self._sub = await bus.subscribe(subjects.call_audio_in_all(), on_audio)
        return self

    def of(self, call_id: str) -> list[Envelope]:
        """The frames of ``call_id`` heard so far (a live list)."""
        return self.frames.setdefault(call_id, [])

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()


@pytest.fixture(name="audio_tap")
async def audio_tap_fixture(peer_bus: Bus) -> AsyncIterator[AudioTap]:
    tap = await AudioTap().start(peer_bus)
    yield tap
    await tap.stop()


async def wait_until(predicate: Any, timeout: float = TIMEOUT) -> None:
    """Poll ``predicate()`` every 20 ms until it is true (TimeoutError after ``timeout`` s)."""
    async with asyncio.timeout(timeout):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)


def start_frame(run_id: str, *, stream_sid: str = "MZ00000000000000000000000000000001",
                seq: int = 1) -> str:
    return json.dumps({
        "event": "start", "sequenceNumber": str(seq), "streamSid": stream_sid,
        "start": {"accountSid": "AC" + "0" * 32, "streamSid": stream_sid, "callSid": "CA" + "1" * 32,
                  "tracks": ["inbound"],
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                  "customParameters": {"run_id": run_id, "caller": "+15551230001", "called": "+15559870000",
                                       "agent": "receptionist"}},
    })


def media_frame(audio: bytes, chunk: int, *, stream_sid: str = "MZ00000000000000000000000000000001") -> str:
    return json.dumps({"event": "media", "sequenceNumber": str(chunk + 1), "streamSid": stream_sid,
                       "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(20 * (chunk - 1)),
                                 "payload": base64.b64encode(audio).decode()}})


async def open_call(gw: RunningGateway, recorder: Recorder, peer: EchoPeer | None = None,
                    **connect: Any) -> tuple[ClientConnection, str, dict[str, Any]]:
    """Connect, send connected + start, wait for ``call.<id>.started`` (and for ``peer`` to follow the call:
    audio published before a subscriber exists is lost on core NATS)."""
    ws = await websockets.connect(gw.ws_url + "/twilio/media", **connect)
    run_id = secrets.token_hex(6)
    await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    await ws.send(start_frame(run_id))
    started = await recorder.wait_for(lambda: recorder.started_with(run_id))
    if peer is not None:
        await wait_until(lambda: started["call_id"] in peer.started)
    return ws, started["call_id"], started


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), TIMEOUT)
    value: dict[str, Any] = json.loads(raw)
    return value
