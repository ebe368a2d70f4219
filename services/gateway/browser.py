"""``WS /browser``: try an agent from a browser (the ``/phone`` page).

Connection: ``/browser?token=<token from POST /browser/token>`` (single use, short-lived; see
:mod:`.security`). Messages (JSON text unless noted):

- browser → gateway: ``{"event":"start","sample_rate":N,"agent"?:str}`` first, N the microphone's real rate
  in Hz (8000 ≤ N ≤ 48000, e.g. 44100: the page declares its AudioContext's ``sampleRate``); then binary frames
  of PCM16 little-endian mono at that rate (any size ≤ 64 KiB); ``{"event":"mark","name":…}`` when playback
  reaches a mark; ``{"event":"stop"}`` to hang up.
- gateway → browser: ``{"event":"started","call_id":…,"call_page":<console URL or null>}``; binary PCM16 LE
  mono 24 kHz agent audio; ``{"event":"mark","name":…}`` after each chunk; ``{"event":"clear"}`` (drop
  unplayed audio and echo every pending mark); the live transcript: ``{"event":"transcript","role":"user"|
  "assistant","text":…,"item_id":…}`` (final text of a turn), ``{"event":"transcript_delta","item_id":…,
  "delta":…}`` (agent speech as it is generated) and ``{"event":"tool","name":…,"arguments":…}``.

Browser audio is converted to ``audio/pcm;rate=24000`` by the gateway before it enters the bus
(docs/gateway.md); the call's ``audio_format`` is ``audio/pcm;rate=24000``. Bad input closes with 1008
and ends the call with ``protocol_error``, as does a frame the WebSocket layer rejects (over the WebSocket max
size: 1009; see :data:`~services.gateway.twilio.PROTOCOL_CLOSE_CODES`). No ``start`` within ``start_timeout_s``
closes with 1008; no audio for ``idle_s`` (``SWITCHBOARD_CARRIER_IDLE_S``) ends the call with ``carrier_silent``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from nats.aio.subscription import Subscription
from starlette.websockets import WebSocket

from services.gateway.call import CallBridge, CallStart
from services.gateway.call_control import CallControl
from services.gateway.stream import START_TIMEOUT_S, CarrierStream, close_socket
from shared import subjects
from shared.audio import PCM24K, Converter
from shared.bus import Bus, Envelope
from shared.carriers.frames import MAX_MESSAGE_BYTES, CarrierProtocolError

__all__ = ["BrowserProtocolError", "BrowserSink", "BrowserStream"]

log = logging.getLogger("services.gateway.browser")

_MIN_RATE, _MAX_RATE = 8000, 48000
_TRANSCRIPT_EVENTS = ("conversation.item.input_audio_transcription.completed",
                      "response.output_audio_transcript.delta", "response.output_audio_transcript.done",
                      "response.function_call_arguments.done")


class BrowserProtocolError(CarrierProtocolError):
    """Bad input on the browser socket; ``str(exc)`` is the close reason."""


class BrowserSink:
    """Writes agent audio (binary PCM16 24 kHz), marks and clears to the browser socket."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.lock = asyncio.Lock()
        """Serialises every send: the bridge's writer and the transcript forwarder share the socket."""

    async def send_audio(self, audio: bytes) -> None:
        """One binary frame of PCM16 LE mono 24 kHz."""
        async with self.lock:
            await self.ws.send_bytes(audio)

    async def send_mark(self, name: str) -> None:
        """``{"event":"mark","name":…}``."""
        await self.send_json({"event": "mark", "name": name})

    async def send_clear(self) -> None:
        """``{"event":"clear"}``."""
        await self.send_json({"event": "clear"})

    async def send_json(self, message: dict[str, Any]) -> None:
        """One JSON text frame."""
        async with self.lock:
            await self.ws.send_text(json.dumps(message))

    async def close(self, code: int, reason: str) -> None:
        """Close the socket."""
        await close_socket(self.ws, code, reason)


class BrowserStream(CarrierStream):
    """The state machine of one accepted ``WS /browser`` connection (the read loop is
    :class:`~services.gateway.stream.CarrierStream`'s)."""

    carrier = "browser"

    def __init__(self, ws: WebSocket, bus: Bus, *, default_agent: str, max_outbound_chunks: int = 1000,
                 calls: dict[str, CallBridge] | None = None, audio_in_ms: int = 40,
                 start_timeout_s: float = START_TIMEOUT_S, idle_s: float | None = None,
                 call_page_base: str | None = None, controls: Mapping[str, CallControl] | None = None,
                 session_lost_s: float | None = None) -> None:
        super().__init__(ws, bus, default_agent=default_agent, max_outbound_chunks=max_outbound_chunks,
                         calls=calls, audio_in_ms=audio_in_ms, start_timeout_s=start_timeout_s, idle_s=idle_s,
                         controls=controls, session_lost_s=session_lost_s)
        self.call_page_base = call_page_base
        """Base URL of the recorder's console (``<base>/ui/calls/<id>`` is sent in ``started``); None: none."""
        self.sink = BrowserSink(ws)
        self._subs: list[Subscription] = []
        self._converter: Converter | None = None

    async def on_close(self) -> None:
        """Stop forwarding the transcript."""
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def on_message(self, message: Mapping[str, Any]) -> bool:
        """Handle one ASGI message; False when the browser said ``stop``.

        Raises:
            BrowserProtocolError: bad input.
        """
        data: bytes | None = message.get("bytes")
        if data is not None:
            if self.bridge is None or self._converter is None:
                raise BrowserProtocolError("audio before start")
            if len(data) > MAX_MESSAGE_BYTES or len(data) % 2:
                raise BrowserProtocolError("audio frame must be whole PCM16 samples, at most 64 KiB")
            converted = self._converter.convert(data)
            if converted:
                await self.bridge.audio_in(converted)
            return True
        text = message.get("text") or ""
        if len(text) > MAX_MESSAGE_BYTES:
            raise BrowserProtocolError("message over 64 KiB")
        try:
            event = json.loads(text)
        except ValueError:
            raise BrowserProtocolError("malformed JSON") from None
        kind = event.get("event") if isinstance(event, dict) else None
        if kind == "start":
            await self._start(event)
        elif kind == "mark":
            if self.bridge is None or not isinstance(event.get("name"), str):
                raise BrowserProtocolError("mark before start or without a name")
            await self.bridge.mark_echo(event["name"])
        elif kind == "stop":
            return await self.hang_up()
        else:
            raise BrowserProtocolError(f"unknown event {str(kind)[:40]!r}")
        return True

    async def _start(self, event: dict[str, Any]) -> None:
        if self.bridge is not None:
            raise BrowserProtocolError("second start")
        rate = event.get("sample_rate")
        if not isinstance(rate, int) or isinstance(rate, bool) or not _MIN_RATE <= rate <= _MAX_RATE:
            raise BrowserProtocolError(f"sample_rate must be an integer from {_MIN_RATE} to {_MAX_RATE} Hz")
        source = f"audio/pcm;rate={rate}"
        self._converter = Converter(source, PCM24K)
        agent = event.get("agent")
        start = CallStart(carrier="browser", audio_format=PCM24K,
                          agent=agent if isinstance(agent, str) and agent else self.default_agent,
                          custom_parameters={"input_format": source})
        bridge = await self.open_call(self.sink, start)
        page = f"{self.call_page_base}/ui/calls/{bridge.call_id}" if self.call_page_base else None
        await self.sink.send_json({"event": "started", "call_id": bridge.call_id, "call_page": page})
        for kind in _TRANSCRIPT_EVENTS:
            self._subs.append(await self.bus.subscribe(subjects.rt_server(bridge.call_id, kind),
                                                       self._on_transcript, traced=False))

    async def _on_transcript(self, env: Envelope) -> None:
        """Forward the call's transcript events to the page (see the module docstring)."""
        try:
            body = env.json()
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        kind = subjects.parse(env.subject).rest
        if kind == "conversation.item.input_audio_transcription.completed":
            message = {"event": "transcript", "role": "user", "text": body.get("transcript", ""),
                       "item_id": body.get("item_id")}
        elif kind == "response.output_audio_transcript.delta":
            message = {"event": "transcript_delta", "item_id": body.get("item_id"), "delta": body.get("delta", "")}
        elif kind == "response.output_audio_transcript.done":
            message = {"event": "transcript", "role": "assistant", "text": body.get("transcript", ""),
                       "item_id": body.get("item_id")}
        else:
            message = {"event": "tool", "name": body.get("name"), "arguments": body.get("arguments")}
        with contextlib.suppress(Exception):  # the page went away: the call ends through run()
            await self.sink.send_json(message)
