"""Twilio Media Streams on the gateway: TwiML for ``POST /twilio/voice`` and the ``WS /twilio/media`` handler.

Protocol: https://www.twilio.com/docs/voice/media-streams/websocket-messages. Inbound
``connected`` → ignored; ``start`` → a new call (:class:`~services.gateway.call.CallBridge`); ``media`` →
``call.<id>.audio.in``; ``dtmf`` → ``call.<id>.carrier.dtmf``; ``mark`` → ``call.<id>.carrier.mark``;
``stop`` → ``call.<id>.ended(reason="caller_hangup")``; the carrier closing the socket without ``stop`` ends
the call by its close code (:func:`~services.gateway.stream.disconnect_reason`: 1000/1001/1005 the same way,
1006 and server-side codes ``lost``; ``close_code`` in the payload); the gateway failing under the call (the bus)
ends it ``lost``. A ``start`` whose custom parameters carry ``call_id`` (our TwiML chose it) opens that call id;
with ``resume=1`` too it reconnects a call already running (``call.<id>.carrier.resumed``, not ``started``).
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

import json
from collections.abc import Mapping
from typing import Any

from starlette.websockets import WebSocket

from services.gateway.call import CallStart
from services.gateway.stream import (
    HANGUP_CLOSE_CODES,
    INTERNAL_ERROR,
    POLICY_VIOLATION,
    PROTOCOL_CLOSE_CODES,
    START_TIMEOUT_S,
    CarrierStream,
    close_socket,
    disconnect_reason,
    receive_before,
)
from shared import subjects
from shared.audio import PCMU
from shared.carriers import twilio as tw

__all__ = ["HANGUP_CLOSE_CODES", "INTERNAL_ERROR", "POLICY_VIOLATION", "PROTOCOL_CLOSE_CODES", "START_TIMEOUT_S",
           "TwilioSink", "TwilioStream", "close_socket", "disconnect_reason", "mark_echo_name", "receive_before",
           "twiml_response"]


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


class TwilioStream(CarrierStream):
    """The state machine of one ``WS /twilio/media`` connection (already accepted); the read loop is
    :class:`~services.gateway.stream.CarrierStream`'s."""

    carrier = "twilio"

    async def on_message(self, message: Mapping[str, Any]) -> bool:
        """One ASGI message: a text frame for :meth:`on_frame`; binary frames are a protocol error.

        Raises:
            TwilioProtocolError: bad input.
        """
        text = message.get("text")
        if text is None:
            raise tw.TwilioProtocolError("binary frames are not part of the Twilio protocol")
        return await self.on_frame(text)

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
        name = mark_echo_name(raw)
        if name is not None and bridge is not None:
            await bridge.mark_echo(name)
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
            return await self.hang_up()
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
        elif resumed:
            raise tw.TwilioProtocolError("resume without call_id")
        start = CallStart(
            carrier="twilio", audio_format=PCMU, agent=str(params.get("agent") or self.default_agent),
            from_=params.get("caller") or params.get("from"), to=params.get("called") or params.get("to"),
            carrier_call_id=msg.start.call_sid, stream_id=msg.start.stream_sid or msg.stream_sid,
            custom_parameters=params,
        )
        await self.open_call(TwilioSink(self.ws, start.stream_id or ""), start, call_id=call_id, resumed=resumed)


def mark_echo_name(raw: Any) -> str | None:
    """Fast path for a well-formed ``mark`` echo (one per chunk of agent audio): its ``mark.name``, or None for
    anything else, which then goes through :func:`shared.carriers.twilio.validate_inbound` for full validation and
    a precise error. Accepts exactly what :class:`shared.carriers.twilio.Mark` accepts (extra keys ignored)."""
    if type(raw) is not dict or raw.get("event") != "mark":
        return None
    mark = raw.get("mark")
    if type(mark) is not dict:
        return None
    name = mark.get("name")
    if type(name) is not str or type(raw.get("sequenceNumber", "")) is not str:
        return None
    return name if type(raw.get("streamSid", "")) is str else None
