"""Helpers for the session integration tests: the local model process, test tools and a simulated gateway.

Not a test module. :class:`SimGateway` talks to the session over the bus exactly as docs/gateway.md says the gateway
does: ``call.<id>.started`` (JetStream), raw μ-law on ``call.<id>.audio.in``, mark echoes on
``call.<id>.carrier.mark`` (``name, item_id, played_bytes`` cumulative per item, ``cleared``), ``call.<id>.ended``;
it "plays" ``rt.<id>.server.response.output_audio.delta`` and obeys ``call.<id>.command.*``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from shared import subjects, tool_registry
from shared.audio import PCMU, silence
from shared.bus import Bus, Envelope, Headers
from shared.contracts import (
    CallEnded,
    CallStarted,
    CarrierDtmf,
    CarrierMark,
    KeypadDigit,
    parse_command,
    parse_session_event,
)
from switchboard import natsserver
from tests.integration.localmodel_support import fresh_speech

__all__ = ["LogEntry", "SimGateway", "ToolBox", "read_log", "speech", "start_localmodel"]

ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def start_localmodel(*, pacing: str = "fast", mode: str = "agent") -> AsyncIterator[str]:
    """Run ``python -m services.localmodel`` on a free port; yields its Realtime WebSocket URL."""
    port = natsserver.free_port()
    env = {**os.environ, "SWITCHBOARD_LOCALMODEL_PACING": pacing, "SWITCHBOARD_LOCALMODEL_MODE": mode}
    env.pop("SWITCHBOARD_LOCALMODEL_TOKEN", None)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.localmodel", "--host",
                                                "127.0.0.1", "--port", str(port), cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 90
        async with httpx.AsyncClient() as client:
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"local model exited with {proc.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{port}/readyz", timeout=1)).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("local model not ready within 90 s")
                await asyncio.sleep(0.2)
        yield f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def speech(text: str, *, trailing_ms: int = 1200) -> bytes:
    """``text`` spoken by espeak-ng (en-us+klatt) as μ-law 8 kHz, followed by ``trailing_ms`` of silence.

    Rendered by a fresh process (:func:`.localmodel_support.fresh_speech`): in this process the rendering of one
    sentence would change with everything synthesised before it, so what the model heard — "My name is John
    Smith" after a handover — depended on which tests ran first."""
    return await asyncio.to_thread(fresh_speech, text, "audio/pcmu") + silence(PCMU, trailing_ms)


ToolHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ToolBox:
    """Test tools served as a real nats.micro service and published to the tool registry."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.requests: dict[str, list[dict[str, Any]]] = {}
        self._service: Any = None

    async def serve(self, tools: dict[str, tuple[tool_registry.ToolSpec, ToolHandler]]) -> None:
        """Serve ``tools`` (spec + handler by name) and publish their specs to the registry."""
        self._service = await self.bus.add_service("switchboard-test-tools")
        for name, (_spec, handler) in tools.items():
            await self.bus.add_endpoint(self._service, name=name, subject=subjects.tool(name),
                                        handler=self._wrap(name, handler))
        await tool_registry.publish(self.bus.js, [spec for spec, _ in tools.values()])
        # the registry is the test NATS server's, shared by every test: what other tests registered goes
        registered = await tool_registry.load(self.bus.js)
        kv = await self.bus.js.key_value(tool_registry.BUCKET)
        for name in set(registered) - set(tools):
            await kv.delete(name)

    def _wrap(self, name: str, handler: ToolHandler) -> Callable[[Envelope], Awaitable[dict[str, Any]]]:
        async def run(env: Envelope) -> dict[str, Any]:
            request = env.json()
            self.requests.setdefault(name, []).append(request)
            return await handler(request)
        return run

    async def stop(self) -> None:
        """Stop serving."""
        if self._service is not None:
            await self._service.stop()


@dataclass
class _Item:
    received: int = 0
    marked: int = 0
    pending: list[int] = field(default_factory=list)  # cumulative byte counts of marks not yet echoed


class SimGateway:
    """A gateway on the bus for one call (see the module docstring).

    ``auto_marks``: echo each audio chunk's mark as played right away (an instantly playing carrier);
    otherwise the test echoes marks with :meth:`play`. ``auto_play_marks``: the same for the audio of
    ``command.play`` (the disclosure), tracked per ``item_id`` like model audio.
    """

    def __init__(self, bus: Bus, call_id: str | None = None, *, auto_marks: bool = True,
                 auto_play_marks: bool = True) -> None:
        self.bus = bus
        self.call_id = call_id or subjects.new_call_id()
        self.auto_marks = auto_marks
        self.auto_play_marks = auto_play_marks
        self.items: dict[str, _Item] = {}
        self.item_order: list[str] = []
        """Model audio items (``response.output_audio.delta``), in order."""
        self.play_order: list[str] = []
        self.keypad_capture = False
        """``command.capture`` in force: digits go to ``call.<id>.keypad`` (core NATS), as the gateway does."""
        """Items of ``command.play`` audio (the disclosure), in order."""
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.session_events: list[tuple[str, dict[str, Any]]] = []
        self.replay_gap_bytes = 0
        """Caller audio this gateway lost before a ``command.replay``'s offset (its replay starts that much later)."""
        self._changed = asyncio.Condition()
        self._subs: list[Any] = []

    async def start(self, *, audio_format: str = "audio/pcmu", agent: str = "receptionist") -> None:
        """Subscribe to what the session sends, then publish ``call.<id>.started``."""
        cid = self.call_id
        self._subs = [
            await self.bus.subscribe(subjects.rt_all(cid), self._on_rt),
            await self.bus.subscribe(subjects.command(cid, "*"), self._on_command),
            await self.bus.subscribe(subjects.session_events(cid), self._on_session),
        ]
        started = CallStarted(call_id=cid, carrier="twilio", agent=agent, audio_format=audio_format,
                              from_="+15551230001", to="+15559870000", carrier_call_id="CAtest", stream_id="MZtest",
                              started_at=datetime.now(UTC).isoformat())
        await self.bus.publish_event(subjects.call_started(cid), started.encode(), call_id=cid)

    async def _on_rt(self, env: Envelope) -> None:
        parsed = subjects.parse(env.subject)
        event = env.json()
        self.events.append((f"{parsed.direction}.{parsed.rest}", event))
        if parsed.rest == "response.output_audio.delta" and parsed.direction == "server":
            item = self.items.setdefault(event["item_id"], _Item())
            if event["item_id"] not in self.item_order:
                self.item_order.append(event["item_id"])
            item.received += len(base64.b64decode(event["delta"]))
            item.pending.append(item.received)
            if self.auto_marks:
                await self.play(event["item_id"])
        async with self._changed:
            self._changed.notify_all()

    async def _on_command(self, env: Envelope) -> None:
        verb = subjects.parse(env.subject).rest.split(".", 1)[1]
        body = parse_command(verb, env.data).encode()  # what the session sends must match its contract
        self.commands.append((verb, body))
        if verb == "replay":  # this simulated gateway keeps no audio: the empty replay marker, as the gateway sends
            await self.bus.publish(subjects.call_audio_in(self.call_id), b"", call_id=self.call_id,
                                   headers={"Switchboard-Audio-Format": "audio/pcmu",
                                            Headers.REPLAY: str(body.get("from_bytes", 0) + self.replay_gap_bytes)})
        elif verb == "capture":
            self.keypad_capture = body.get("active") is True
        elif verb == "play":
            item_id = str(body.get("item_id") or "play")
            item = self.items.setdefault(item_id, _Item())
            if item_id not in self.play_order:
                self.play_order.append(item_id)
            item.received += len(base64.b64decode(body["audio"]))
            item.pending.append(item.received)
            if self.auto_play_marks:
                await self.play(item_id)
        elif verb == "clear":
            for item_id, item in self.items.items():  # a clear echoes every pending mark as cleared
                for cumulative in item.pending:
                    await self._mark(item_id, cumulative, cleared=True)
                item.pending.clear()
        async with self._changed:
            self._changed.notify_all()

    async def _on_session(self, env: Envelope) -> None:
        event = env.subject.rsplit(".", 1)[1]
        parse_session_event(event, env.data)  # what the session sends must match its contract
        self.session_events.append((event, env.json()))
        async with self._changed:
            self._changed.notify_all()

    async def _mark(self, item_id: str, played: int, *, cleared: bool) -> None:
        mark = CarrierMark(name=f"{item_id}:{played}", item_id=item_id, played_bytes=played, cleared=cleared)
        await self.bus.publish_event(subjects.carrier_mark(self.call_id), mark.encode(), call_id=self.call_id)

    async def play(self, item_id: str, up_to: int | None = None) -> int:
        """Echo the pending marks of ``item_id`` up to ``up_to`` cumulative bytes (all when None) as played;
        returns the bytes now confirmed played."""
        item = self.items[item_id]
        while item.pending and (up_to is None or item.pending[0] <= up_to):
            item.marked = item.pending.pop(0)
            await self._mark(item_id, item.marked, cleared=False)
        return item.marked

    async def send_audio(self, audio: bytes, *, frame_ms: int = 20, pace: float = 0.25) -> None:
        """Stream ``audio`` in 20 ms frames; ``pace`` = fraction of real time per frame (0.25 = 4× speed)."""
        frame = 8 * frame_ms
        for i in range(0, len(audio), frame):
            await self.bus.publish(subjects.call_audio_in(self.call_id), audio[i:i + frame], call_id=self.call_id,
                                   headers={"Switchboard-Audio-Format": "audio/pcmu"})
            await asyncio.sleep(frame_ms / 1000 * pace)

    async def send_dtmf(self, digit: str) -> None:
        """Publish a keypad digit (on ``call.<id>.keypad`` while a keypad capture is in force)."""
        if self.keypad_capture:
            await self.bus.publish(subjects.call_keypad(self.call_id), KeypadDigit(digit=digit).encode(),
                                   call_id=self.call_id)
            return
        await self.bus.publish_event(subjects.carrier_dtmf(self.call_id), CarrierDtmf(digit=digit).encode(),
                                     call_id=self.call_id)

    async def end(self, reason: str = "caller_hangup") -> None:
        """Publish ``call.<id>.ended``."""
        await self.bus.publish_event(subjects.call_ended(self.call_id),
                                     CallEnded(reason=reason, duration_ms=1).encode(), call_id=self.call_id)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
        """Wait until ``predicate()`` holds (re-checked on every message)."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError:
            types = [t for t, _ in self.events if "delta" not in t and "append" not in t]
            heard = [e.get("transcript") for e in self.of("server.conversation.item.input_audio_transcription"
                                                          ".completed")]
            said = [e.get("transcript") for e in self.of("server.response.output_audio_transcript.done")]
            turns = [(t.rsplit(".", 1)[-1], e.get("audio_start_ms", e.get("audio_end_ms"))) for t, e in self.events
                     if t in ("server.input_audio_buffer.speech_started", "server.input_audio_buffer.speech_stopped")]
            raise AssertionError(f"timed out waiting for {what}; events seen: {types[-30:]}; "
                                 f"commands: {self.commands}; heard: {heard}; said: {said}; "
                                 f"turns (audio ms): {turns}") from None

    def count(self, etype: str) -> int:
        """How many events of ``direction.type`` were seen."""
        return sum(1 for t, _ in self.events if t == etype)

    def of(self, etype: str) -> list[dict[str, Any]]:
        """The events of ``direction.type`` seen, in order."""
        return [e for t, e in self.events if t == etype]

    async def close(self) -> None:
        """Unsubscribe."""
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


@dataclass(frozen=True)
class LogEntry:
    """One stored message of a call: stream, subject, ``direction.type`` (rt) or rest (call), source, seq."""

    stream: str
    subject: str
    kind: str
    source: str | None
    seq: int | None
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.data)


async def read_log(bus: Bus, call_id: str) -> list[LogEntry]:
    """Every stored message of ``call_id`` from the RT and CALLS streams, each stream in stream order."""
    await bus.flush_acks(10)
    entries: list[LogEntry] = []
    for stream, filt in ((subjects.RT_STREAM, subjects.rt_all(call_id)),
                         (subjects.CALLS_STREAM, subjects.call_all(call_id))):
        async for env in bus.replay(filt, stream):
            parsed = subjects.parse(env.subject)
            kind = f"{parsed.direction}.{parsed.rest}" if parsed.direction else parsed.rest
            entries.append(LogEntry(stream.name, env.subject, kind, env.source, env.seq, env.data, dict(env.headers)))
    return entries
