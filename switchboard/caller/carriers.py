"""The phone side of every carrier for the caller simulator: answer the gateway's signed webhook as the
carrier would, open the media WebSocket and speak the carrier's frames (protocols.md §3–§4).

:func:`dial` returns a :class:`CallerLine`; whatever the carrier, the simulator sends 20 ms μ-law 8 kHz frames
and receives :data:`~shared.carriers.frames.OutboundEvent` with μ-law audio: the line converts (Vonage speaks
L16 16 kHz in exact 640-byte frames). ``echoes_marks_on_clear`` says how the carrier reports a clear: Twilio and
Telnyx echo the pending marks, Vonage and Plivo send one confirmation (:meth:`CallerLine.cleared`).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlencode

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from shared.audio import PCMU, Converter
from shared.carriers import plivo, telnyx, vonage
from shared.carriers import twilio as tw
from shared.carriers.frames import OutboundEvent, PlayAudio, PlayClear, PlayMark
from switchboard.caller.client import TwilioCallerSocket
from switchboard.caller.signing import (
    CarrierKeys,
    plivo_headers,
    telnyx_headers,
    twilio_signature,
    vonage_authorization,
)

__all__ = ["CARRIERS", "CallerLine", "TwilioLine", "dial"]

CARRIERS = ("twilio", "telnyx", "vonage", "plivo")
"""Carriers the simulator speaks."""


class CallerLine(Protocol):
    """One call's media socket, as the carrier drives it."""

    carrier: str
    echoes_marks_on_clear: bool
    ws: ClientConnection

    async def media(self, frame: bytes) -> None:
        """Send 20 ms of caller audio (160 bytes of μ-law 8 kHz)."""

    async def mark(self, name: str) -> None:
        """Report that playback reached mark ``name``."""

    async def cleared(self) -> None:
        """Confirm a clear (carriers whose ``echoes_marks_on_clear`` is False)."""

    async def dtmf(self, digit: str) -> None:
        """Send one keypad digit."""

    async def stop(self) -> None:
        """The caller hangs up."""

    async def receive(self) -> OutboundEvent:
        """The next gateway message (audio converted to μ-law 8 kHz)."""


async def _connect(url: str, headers: Mapping[str, str] | None = None) -> ClientConnection:
    return await websockets.connect(url, additional_headers=dict(headers or {}), max_size=1 << 20,
                                    compression=None)


class TwilioLine:
    """Twilio Media Streams (:class:`~switchboard.caller.client.TwilioCallerSocket`) as a :class:`CallerLine`."""

    carrier = "twilio"
    echoes_marks_on_clear = True

    def __init__(self, sock: TwilioCallerSocket) -> None:
        self.sock = sock
        self.ws = sock.ws

    async def media(self, frame: bytes) -> None:
        await self.sock.media(frame)

    async def mark(self, name: str) -> None:
        await self.sock.mark(name)

    async def cleared(self) -> None:
        return None

    async def dtmf(self, digit: str) -> None:
        await self.sock.dtmf(digit)

    async def stop(self) -> None:
        await self.sock.stop()

    async def receive(self) -> OutboundEvent:
        message = await self.sock.receive()
        if isinstance(message, tw.OutboundMedia):
            return PlayAudio(tw.decode_payload(message.media.payload))
        if isinstance(message, tw.Mark):
            return PlayMark(message.mark.name)
        return PlayClear()


class _JsonLine:
    """Telnyx and Plivo: JSON frames with base64 μ-law, a sequence number and the stream id."""

    def __init__(self, carrier: str, ws: ClientConnection, *, call_id: str | None = None) -> None:
        self.carrier = carrier
        self.echoes_marks_on_clear = carrier == "telnyx"
        self.ws = ws
        self.stream_id = secrets.token_hex(16)
        self.call_id = call_id or "v3:" + secrets.token_urlsafe(16)
        self._seq = 0
        self._chunk = 0
        self._lock = asyncio.Lock()

    async def _send(self, event: str, **body: Any) -> None:
        async with self._lock:
            self._seq += 1
            maker = telnyx.caller_frame if self.carrier == "telnyx" else plivo.caller_frame
            await self.ws.send(maker(event, self.stream_id, self._seq, **body))

    async def start(self, params: Mapping[str, str], from_: str, to: str) -> None:
        if self.carrier == "telnyx":
            await self.ws.send(telnyx.caller_frame("connected", self.stream_id, 0))
            await self._send("start", start={
                "user_id": secrets.token_hex(8), "call_control_id": self.call_id,
                "call_session_id": secrets.token_hex(8), "from": from_, "to": to,
                "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
                "custom_parameters": dict(params)})
        else:
            await self._send("start", start={
                "callId": self.call_id, "streamId": self.stream_id, "accountId": "MA" + secrets.token_hex(9),
                "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}},
                extra_headers=orjson.dumps(dict(params)).decode())

    async def media(self, frame: bytes) -> None:
        self._chunk += 1
        await self._send("media", media={"track": "inbound", "chunk": str(self._chunk),
                                         "timestamp": str(20 * (self._chunk - 1)),
                                         "payload": tw.encode_payload(frame)})

    async def mark(self, name: str) -> None:
        if self.carrier == "telnyx":
            await self._send("mark", mark={"name": name})
        else:
            await self._send("playedStream", name=name)

    async def cleared(self) -> None:
        if self.carrier == "plivo":
            await self._send("clearedAudio")

    async def dtmf(self, digit: str) -> None:
        await self._send("dtmf", dtmf={"digit": digit})

    async def stop(self) -> None:
        await self._send("stop", stop={"call_control_id": self.call_id})
        await self.ws.close()

    async def receive(self) -> OutboundEvent:
        frame = await self.ws.recv()
        return (telnyx.parse_outbound if self.carrier == "telnyx" else plivo.parse_outbound)(frame)


class _VonageLine:
    """Vonage: ``websocket:connected``, then binary L16 frames of exactly 20 ms at ``rate``."""

    carrier = "vonage"
    echoes_marks_on_clear = False

    def __init__(self, ws: ClientConnection, rate: int) -> None:
        self.ws = ws
        self.rate = rate
        self._up = Converter(PCMU, f"audio/pcm;rate={rate}")
        self._down = Converter(f"audio/pcm;rate={rate}", PCMU)
        self._pending = b""
        self._lock = asyncio.Lock()

    async def _send(self, frame: str | bytes) -> None:
        async with self._lock:
            await self.ws.send(frame)

    async def media(self, frame: bytes) -> None:
        size = vonage.frame_bytes(self.rate)
        self._pending += self._up.convert(frame)
        while len(self._pending) >= size:
            chunk, self._pending = self._pending[:size], self._pending[size:]
            await self._send(chunk)

    async def mark(self, name: str) -> None:
        await self._send(orjson.dumps({"event": "websocket:notify", "payload": {"name": name}}).decode())

    async def cleared(self) -> None:
        await self._send('{"event":"websocket:cleared"}')

    async def dtmf(self, digit: str) -> None:
        await self._send(orjson.dumps({"event": "websocket:dtmf", "digit": digit, "duration": 260}).decode())

    async def stop(self) -> None:
        await self.ws.close()

    async def receive(self) -> OutboundEvent:
        event = vonage.parse_outbound(await self.ws.recv())
        if isinstance(event, PlayAudio):
            return PlayAudio(self._down.convert(event.audio))
        return event


async def dial(carrier: str, gateway_url: str, *, from_: str, to: str, params: Mapping[str, str],
               keys: CarrierKeys, timeout: float = 10.0, ws_headers: Mapping[str, str] | None = None,
               answer_url: str | None = None, twiml: str | None = None,
               carrier_call_id: str | None = None) -> CallerLine:
    """Place a call: the carrier's signed webhook, its answer, the media socket and the start message.

    ``params`` (e.g. ``run_id``) are added to what the answer asks the carrier to pass back; ``ws_headers``
    replace the Twilio upgrade's own signature header (tests of the gateway's checks). An outbound call the
    gateway created is answered the same way: ``answer_url`` is the webhook the create request named (default
    ``<gateway>/<carrier>/voice``), ``twiml`` the document a Twilio create request carried inline (no webhook
    then), ``carrier_call_id`` the carrier's id for the call (default: a random one).

    Raises:
        ValueError: an unknown carrier or an unusable answer; httpx.HTTPError: the webhook was refused;
        OSError / websockets.exceptions.InvalidHandshake: the upgrade was refused.
    """
    base = gateway_url.rstrip("/")
    webhook = answer_url or f"{base}/{carrier}/voice"
    call_id = secrets.token_hex(16)
    sid = carrier_call_id or ("CA" + call_id if carrier == "twilio" else call_id)
    async with httpx.AsyncClient(timeout=timeout) as client:
        if carrier == "twilio":
            form = {"CallSid": sid, "AccountSid": "AC" + "0" * 32, "From": from_, "To": to,
                    "Direction": "inbound", "CallStatus": "ringing", "ApiVersion": "2010-04-01"}
            if twiml is None:
                headers = ({"X-Twilio-Signature": twilio_signature(keys.twilio_auth_token, webhook, form)}
                           if keys.twilio_auth_token else {})
                response = await client.post(webhook, data=form, headers=headers)
                response.raise_for_status()
                twiml = response.text
            url, answer = tw.parse_twiml(twiml)
            if ws_headers is None and keys.twilio_auth_token:
                ws_headers = {"X-Twilio-Signature": twilio_signature(keys.twilio_auth_token, url, {})}
            sock = await TwilioCallerSocket.connect(url, headers=ws_headers)
            sock.call_sid = sid
            await sock.start({**answer, **params})
            return TwilioLine(sock)
        if carrier == "telnyx":
            body = urlencode({"CallSid": sid, "From": from_, "To": to, "Direction": "inbound"}).encode()
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            if keys.telnyx_private_key:
                headers.update(telnyx_headers(keys.telnyx_private_key, body))
            response = await client.post(webhook, content=body, headers=headers)
            response.raise_for_status()
            url, answer = telnyx.parse_texml(response.text)
            line = _JsonLine("telnyx", await _connect(url), call_id=carrier_call_id)
            await line.start({**answer, **params}, from_, to)
            return line
        if carrier == "vonage":
            query = {"from": from_.lstrip("+"), "to": to.lstrip("+"), "uuid": sid,
                     "conversation_uuid": "CON-" + call_id}
            headers = ({"Authorization": vonage_authorization(keys.vonage_signature_secret)}
                       if keys.vonage_signature_secret else {})
            response = await client.get(httpx.URL(webhook).copy_merge_params(query), headers=headers)
            response.raise_for_status()
            url, rate, answer, auth = vonage.parse_ncco(response.json())
            ws = await _connect(url, {"Authorization": auth} if auth else None)
            await ws.send(vonage.connected_frame(rate, {**answer, **params}))
            return _VonageLine(ws, rate)
        if carrier == "plivo":
            form = {"CallUUID": sid, "From": from_, "To": to, "Direction": "inbound", "CallStatus": "ringing"}
            headers = (plivo_headers(keys.plivo_auth_token, webhook, form)
                       if keys.plivo_auth_token else {})
            response = await client.post(webhook, data=form, headers=headers)
            response.raise_for_status()
            url, wire, answer = plivo.parse_stream_xml(response.text)
            if wire != PCMU:
                raise ValueError(f"the simulator speaks μ-law to Plivo, the answer asks for {wire}")
            line = _JsonLine("plivo", await _connect(url), call_id=carrier_call_id)
            await line.start({**answer, **params}, from_, to)
            return line
    raise ValueError(f"unknown carrier {carrier!r}; one of {', '.join(CARRIERS)}")
