"""Twilio Media Streams on the gateway: TwiML for ``POST /twilio/voice`` and the ``WS /twilio/media`` handler.

Protocol: protocols.md §3 (https://www.twilio.com/docs/voice/media-streams/websocket-messages). Inbound
``connected`` → ignored; ``start`` → a new call (:class:`~services.gateway.call.CallBridge`); ``media`` →
``call.<id>.audio.in``; ``dtmf`` → ``call.<id>.carrier.dtmf``; ``mark`` → ``call.<id>.carrier.mark``;
``stop`` → ``call.<id>.ended(reason="caller_hangup")``; the carrier closing the socket without ``stop`` ends
the call by its close code (:func:`disconnect_reason`: 1000/1001/1005 the same way, 1006 and server-side codes
``lost``; ``close_code`` in the payload); the gateway failing under the call (the bus) ends it ``lost``.
Outbound ``media`` + ``mark`` per chunk, ``clear``.

Bad input (malformed JSON, unknown event, invalid base64, media before start, a frame over 64 KiB, a second
start, a binary frame) closes the socket with code 1008 and a reason, and ends the call (if one started)
with ``reason="protocol_error"``. A frame the WebSocket layer itself rejects — over the server's WebSocket max
size (uvicorn ``ws_max_size``, 1 MiB; closed 1009), invalid UTF-8 (1007) or a framing error (1002) — also ends
the call with ``protocol_error`` (:data:`PROTOCOL_CLOSE_CODES`), never ``caller_hangup``.

Timeouts: no ``start`` within ``start_timeout_s`` (10 s) of the upgrade closes the socket with 1008; after
``start``, no media for ``idle_s`` (``SWITCHBOARD_CARRIER_IDLE_S``) ends the call with ``carrier_silent``
(:class:`~services.gateway.call.CallBridge`). Nothing else is affected: each socket has its own handler task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from starlette.websockets import WebSocket, WebSocketState

from services.gateway.call import CallBridge, CallStart
from shared import subjects
from shared.audio import PCMU
from shared.bus import Bus
from shared.carriers import twilio as tw
from shared.endreasons import EndReason

__all__ = ["HANGUP_CLOSE_CODES", "INTERNAL_ERROR", "POLICY_VIOLATION", "PROTOCOL_CLOSE_CODES", "START_TIMEOUT_S",
           "TwilioSink", "TwilioStream", "close_socket", "disconnect_reason", "receive_before", "twiml_response"]

log = logging.getLogger("services.gateway.twilio")

POLICY_VIOLATION = 1008
"""RFC 6455 §7.4.1 close code for a message that violates the protocol."""
INTERNAL_ERROR = 1011
"""RFC 6455 §7.4.1 close code for an unexpected condition on the server (e.g. the bus failed)."""
PROTOCOL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1009})
"""RFC 6455 §7.4.1 close codes that mean the peer broke the protocol (framing error, unacceptable data type,
invalid payload data, message too big); a disconnect with one of them ends the call with ``protocol_error``."""
START_TIMEOUT_S = 10.0
"""Seconds a carrier socket may stay open without ``start`` before it is closed with 1008."""


HANGUP_CLOSE_CODES = frozenset({1000, 1001, 1005})
"""RFC 6455 §7.4.1 close codes of a peer that ended the connection on purpose (normal closure, going away, no
status given): the caller hung up."""


def disconnect_reason(message: Mapping[str, Any]) -> tuple[EndReason, dict[str, Any]]:
    """End reason and ``ended`` detail for an ASGI ``websocket.disconnect`` ``message`` (its ``code``):
    ``protocol_error`` for :data:`PROTOCOL_CLOSE_CODES`, ``caller_hangup`` for :data:`HANGUP_CLOSE_CODES`,
    else ``lost`` (1006: the connection broke without a close handshake; 1011/1012: a server went away); the
    detail carries ``close_code`` (and ``error`` unless the caller hung up)."""
    code = message.get("code")
    if code in PROTOCOL_CLOSE_CODES:
        return EndReason.PROTOCOL_ERROR, {"close_code": code, "error": f"websocket closed with {code}"}
    if code in HANGUP_CLOSE_CODES:
        return EndReason.CALLER_HANGUP, {"close_code": code}
    return EndReason.LOST, {"close_code": code, "error": f"websocket closed with {code}"}


async def receive_before(ws: WebSocket, deadline: float | None) -> Mapping[str, Any]:
    """The next ASGI message of ``ws``; with ``deadline`` (event-loop time) set, at most until then.

    Raises:
        TimeoutError: the deadline passed first.
    """
    if deadline is None:
        return await ws.receive()
    async with asyncio.timeout_at(deadline):
        return await ws.receive()


async def close_socket(ws: WebSocket, code: int, reason: str) -> None:
    """Close a carrier socket with ``code`` and ``reason`` unless it is already disconnected."""
    if ws.application_state != WebSocketState.DISCONNECTED:
        await ws.close(code, reason)


def twiml_response(stream_url: str, form: Mapping[str, str], agent: str, *, call_id: str | None = None,
                   redirect: str | None = None, resume: bool = False) -> str:
    """TwiML connecting the call to ``stream_url`` with ``agent`` and the caller's numbers as parameters.

    ``form`` is Twilio's voice webhook form (``From``, ``To``, ``CallSid``, …); ``From``/``To`` travel as
    ``<Parameter name="caller">`` / ``"called"`` (the start message has no numbers of its own). ``call_id`` (our
    call id, chosen here so the redirect can name it) travels as ``<Parameter name="call_id">``, ``resume`` as
    ``"resume"="1"`` (reconnect that call instead of starting one); ``redirect`` is the ``<Redirect>`` URL Twilio
    requests when the stream ends (:func:`shared.carriers.twilio.build_twiml`).
    """
    params = {"agent": agent}
    if form.get("From"):
        params["caller"] = form["From"]
    if form.get("To"):
        params["called"] = form["To"]
    if call_id:
        params["call_id"] = call_id
    if resume:
        params["resume"] = "1"
    return tw.build_twiml(stream_url, params, name="switchboard", redirect=redirect)


class TwilioSink:
    """Writes Twilio server → carrier messages (``media``, ``mark``, ``clear``) on a Starlette WebSocket."""

    def __init__(self, ws: WebSocket, stream_sid: str) -> None:
        self.ws = ws
        self.stream_sid = stream_sid
        sid = json.dumps(stream_sid)
        self._media_prefix = '{"event":"media","streamSid":' + sid + ',"media":{"payload":"'
        self._mark_prefix = '{"event":"mark","streamSid":' + sid + ',"mark":{"name":'

    async def send_audio(self, audio: bytes) -> None:
        """``{"event":"media","streamSid":…,"media":{"payload":<base64 μ-law>}}``."""
        await self.ws.send_text(self._media_prefix + tw.encode_payload(audio) + '"}}')

    async def send_mark(self, name: str) -> None:
        """``{"event":"mark","streamSid":…,"mark":{"name":…}}``."""
        await self.ws.send_text(self._mark_prefix + json.dumps(name) + "}}")

    async def send_clear(self) -> None:
        """``{"event":"clear","streamSid":…}``."""
        await self.ws.send_text(tw.dump(tw.Clear(stream_sid=self.stream_sid)))

    async def close(self, code: int, reason: str) -> None:
        """Close the socket (Twilio then continues with the TwiML after ``<Connect>``)."""
        await close_socket(self.ws, code, reason)


class TwilioStream:
    """The state machine of one ``WS /twilio/media`` connection (already accepted)."""

    def __init__(self, ws: WebSocket, bus: Bus, *, default_agent: str, max_outbound_chunks: int = 1000,
                 calls: dict[str, CallBridge] | None = None, audio_in_ms: int = 40,
                 start_timeout_s: float = START_TIMEOUT_S, idle_s: float | None = None,
                 session_lost_s: float | None = None) -> None:
        self.ws = ws
        self.session_lost_s = session_lost_s
        self.start_timeout_s = start_timeout_s
        self.idle_s = idle_s
        self.bus = bus
        self.default_agent = default_agent
        self.max_outbound_chunks = max_outbound_chunks
        self.audio_in_ms = audio_in_ms
        self.calls = calls if calls is not None else {}
        self.bridge: CallBridge | None = None

    async def run(self) -> None:
        """Read frames until ``stop``, a disconnect, a protocol error, the start timeout or the bridge closing
        the socket."""
        start_by = asyncio.get_running_loop().time() + self.start_timeout_s
        try:
            while True:
                try:
                    message = await receive_before(self.ws, start_by if self.bridge is None else None)
                except TimeoutError:
                    raise tw.TwilioProtocolError(f"no start within {self.start_timeout_s:g} s") from None
                if message["type"] == "websocket.disconnect":
                    if self.bridge is not None:
                        reason, detail = disconnect_reason(message)
                        await self.bridge.end(reason, **detail)
                    break
                text = message.get("text")
                if text is None:
                    raise tw.TwilioProtocolError("binary frames are not part of the Twilio protocol")
                if not await self.on_frame(text):
                    break
        except tw.TwilioProtocolError as exc:
            await self._protocol_error(exc.reason)
        except RuntimeError as exc:  # starlette: receive after the bridge closed the socket (and ended the call)
            log.debug("twilio socket closed: %s", exc)
            if self.bridge is not None:
                await self.bridge.end(EndReason.LOST, error="socket closed under the reader")
        except Exception as exc:  # the bus failed under us (e.g. NATS unreachable): end this call only
            log.exception("twilio stream failed")
            if self.bridge is not None:
                await self.bridge.end(EndReason.LOST, error=type(exc).__name__)
            with contextlib.suppress(Exception):
                await close_socket(self.ws, INTERNAL_ERROR, "gateway error")
        finally:
            if self.bridge is not None:
                self.calls.pop(self.bridge.call_id, None)
                self.bridge.detach_context()

    async def on_frame(self, text: str) -> bool:
        """Handle one text frame; False when the stream is over (``stop``).

        Raises:
            TwilioProtocolError: bad input (the caller closes with 1008).
        """
        bridge = self.bridge
        raw = tw.load_frame(text)  # decoded once for the media fast path and full validation
        fast = tw.media_fields(raw)
        if fast is not None and bridge is not None:
            track, payload = fast
            if track in ("inbound", "inbound_track"):
                await bridge.audio_in(tw.decode_payload(payload))
            return True
        msg = tw.validate_inbound(raw)
        if isinstance(msg, tw.Media):
            if bridge is None:
                raise tw.TwilioProtocolError("media before start")
            audio = tw.decode_payload(msg.media.payload)
            if msg.media.track in ("inbound", "inbound_track"):
                await bridge.audio_in(audio)
            return True
        if isinstance(msg, tw.Mark):
            if bridge is None:
                raise tw.TwilioProtocolError("mark before start")
            await bridge.mark_echo(msg.mark.name)
            return True
        if isinstance(msg, tw.Start):
            if bridge is not None:
                raise tw.TwilioProtocolError("second start")
            await self._start(msg)
            return True
        if isinstance(msg, tw.Dtmf):
            if bridge is None:
                raise tw.TwilioProtocolError("dtmf before start")
            await bridge.dtmf(msg.dtmf.digit)
            return True
        if isinstance(msg, tw.Stop):
            if bridge is not None:
                await bridge.end("caller_hangup")
            with contextlib.suppress(Exception):  # Twilio may already have closed its side
                await close_socket(self.ws, 1000, "stop")
            return False
        return True  # connected

    async def _start(self, msg: tw.Start) -> None:
        fmt = msg.start.media_format
        if fmt.encoding != "audio/x-mulaw" or fmt.sample_rate != 8000 or fmt.channels != 1:
            raise tw.TwilioProtocolError(f"unsupported media format {fmt.encoding}/{fmt.sample_rate}")
        params = dict(msg.start.custom_parameters)
        call_id = params.get("call_id") or None
        resumed = params.get("resume") == "1"
        if call_id is not None:
            try:
                subjects.validate_call_id(call_id)
            except subjects.InvalidSubjectTokenError:
                raise tw.TwilioProtocolError("invalid call_id parameter") from None
            if call_id in self.calls:
                raise tw.TwilioProtocolError("call_id is already live on this gateway")
        elif resumed:
            raise tw.TwilioProtocolError("resume without call_id")
        start = CallStart(
            carrier="twilio", audio_format=PCMU, agent=str(params.get("agent") or self.default_agent),
            from_=params.get("caller") or params.get("from"), to=params.get("called") or params.get("to"),
            carrier_call_id=msg.start.call_sid, stream_id=msg.start.stream_sid or msg.stream_sid,
            custom_parameters=params,
        )
        bridge = CallBridge(self.bus, TwilioSink(self.ws, start.stream_id or ""), start,
                            max_outbound_chunks=self.max_outbound_chunks, audio_in_ms=self.audio_in_ms,
                            idle_s=self.idle_s, call_id=call_id, resumed=resumed,
                            session_lost_s=self.session_lost_s)
        self.bridge = bridge
        self.calls[bridge.call_id] = bridge
        await bridge.open()

    async def _protocol_error(self, reason: str) -> None:
        log.warning("twilio protocol error: %s", reason)
        if self.bridge is not None:
            await self.bridge.end("protocol_error", error=reason)
        try:
            await close_socket(self.ws, POLICY_VIOLATION, reason)
        except Exception as exc:  # already gone
            log.debug("close after protocol error failed: %s", exc)
