"""A Twilio-faithful Media Streams client (the phone side of ``<Connect><Stream>``), https://www.twilio.com/docs/voice/media-streams/websocket-messages.

Sends what Twilio sends — ``connected``, ``start`` (ids, ``mediaFormat`` μ-law 8 kHz, ``customParameters``),
``media`` (``chunk`` from 1, ``timestamp`` in ms since the stream started, base64 160-byte frames),
``dtmf``, ``mark`` echoes and ``stop`` — with ``sequenceNumber`` counting every message from 1 after
``connected``. Receives ``media``, ``mark`` and ``clear`` (:func:`shared.carriers.twilio.parse_outbound`).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from shared.carriers import twilio as tw

__all__ = ["TwilioCallerSocket", "fetch_twiml", "post_twiml", "voice_form"]


def voice_form(*, from_: str, to: str, call_sid: str) -> dict[str, str]:
    """The voice webhook's form as Twilio posts it (``CallSid``, ``From``, ``To``, …)."""
    return {"CallSid": call_sid, "AccountSid": "AC" + "0" * 32, "From": from_, "To": to, "Direction": "inbound",
            "CallStatus": "in-progress", "ApiVersion": "2010-04-01"}


async def post_twiml(url: str, form: dict[str, str], *, timeout: float = 10.0,
                     headers: dict[str, str] | None = None) -> str:
    """POST ``form`` to a TwiML URL (the voice webhook or a ``<Redirect>``) as Twilio does, with ``headers``
    (``X-Twilio-Signature``); the document.

    Raises:
        httpx.HTTPError: the gateway did not answer 2xx.
    """
    async with httpx.AsyncClient(timeout=timeout) as client:
        response = await client.post(url, data=form, headers=headers or {})
        response.raise_for_status()
    return response.text


async def fetch_twiml(gateway_url: str, *, from_: str, to: str, call_sid: str,
                      timeout: float = 10.0) -> tuple[str, dict[str, str]]:
    """POST the voice webhook as Twilio does (form ``CallSid``, ``From``, ``To``, …) and read the TwiML.

    Returns:
        ``(stream url, <Parameter> pairs)``.

    Raises:
        httpx.HTTPError: the gateway did not answer 2xx; ValueError: the answer is not usable TwiML.
    """
    form = {**voice_form(from_=from_, to=to, call_sid=call_sid), "CallStatus": "ringing"}
    return tw.parse_twiml(await post_twiml(gateway_url.rstrip("/") + "/twilio/voice", form, timeout=timeout))


class TwilioCallerSocket:
    """One Media Streams WebSocket, speaking as Twilio. Sends are serialised (one frame at a time)."""

    def __init__(self, ws: ClientConnection, *, call_sid: str, stream_sid: str) -> None:
        self.ws = ws
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self.account_sid = "AC" + "0" * 32
        self._seq = 0
        self._chunk = 0
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, url: str, *, headers: Mapping[str, str] | None = None) -> TwilioCallerSocket:
        """Open the stream URL; sends ``connected``.

        Raises:
            OSError / websockets.exceptions.InvalidHandshake: the gateway refused or is unreachable.
        """
        # Twilio does not negotiate permessage-deflate; neither do we
        ws = await websockets.connect(url, additional_headers=dict(headers or {}), max_size=1 << 20,
                                      compression=None)
        sock = cls(ws, call_sid="CA" + secrets.token_hex(16), stream_sid="MZ" + secrets.token_hex(16))
        await sock._send(tw.dump(tw.Connected()))
        return sock

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    async def _send(self, text: str) -> None:
        async with self._lock:
            await self.ws.send(text)

    async def start(self, custom_parameters: Mapping[str, str]) -> None:
        """``start`` with the stream/call ids, μ-law 8 kHz mono and ``customParameters``."""
        payload = tw.StartPayload(account_sid=self.account_sid, stream_sid=self.stream_sid, call_sid=self.call_sid,
                                  tracks=["inbound"], media_format=tw.MediaFormat(),
                                  custom_parameters=dict(custom_parameters))
        await self._send(tw.dump(tw.Start(sequence_number=self._next_seq(), start=payload,
                                          stream_sid=self.stream_sid)))

    async def media(self, frame: bytes) -> None:
        """One inbound ``media`` message (``chunk`` from 1, ``timestamp`` = 20 ms × (chunk − 1))."""
        self._chunk += 1
        body = tw.MediaPayload(track="inbound", chunk=str(self._chunk), timestamp=str(20 * (self._chunk - 1)),
                               payload=tw.encode_payload(frame))
        await self._send(tw.dump(tw.Media(sequence_number=self._next_seq(), media=body, stream_sid=self.stream_sid)))

    async def mark(self, name: str) -> None:
        """Echo a mark (its audio played, or a clear flushed it)."""
        await self._send(tw.dump(tw.Mark(sequence_number=self._next_seq(), stream_sid=self.stream_sid,
                                         mark=tw.MarkPayload(name=name))))

    async def dtmf(self, digit: str) -> None:
        """A keypad digit (``track`` ``inbound_track``)."""
        await self._send(tw.dump(tw.Dtmf(sequence_number=self._next_seq(), stream_sid=self.stream_sid,
                                         dtmf=tw.DtmfPayload(track="inbound_track", digit=digit))))

    async def stop(self) -> None:
        """``stop`` (the caller hung up), then close the socket."""
        await self._send(tw.dump(tw.Stop(sequence_number=self._next_seq(), stream_sid=self.stream_sid,
                                         stop=tw.StopPayload(account_sid=self.account_sid, call_sid=self.call_sid))))
        await self.ws.close()

    async def receive(self) -> tw.OutboundMedia | tw.Mark | tw.Clear:
        """The next server → Twilio message.

        Raises:
            websockets.exceptions.ConnectionClosed: the gateway closed the stream.
            TwilioProtocolError: the gateway sent something Twilio would reject.
        """
        return tw.parse_outbound(await self.ws.recv())
