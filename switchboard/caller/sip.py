"""The caller simulator's SIP leg: a phone call to OpenAI over SIP, as the local model simulates it.

A SIP call never reaches the gateway's media routes: the trunk sends the call to OpenAI, which POSTs the gateway's
``/openai/webhook`` and exchanges the audio with the trunk itself. Offline the local model plays OpenAI, and its
``WS /sip/leg`` plays the trunk's leg (:mod:`services.localmodel.sip`): :class:`SipLine` sends the INVITE
(``From``/``To``/``Call-ID`` and an ``X-Switchboard-<Name>`` header per simulator parameter, e.g. ``run_id``,
which the gateway copies into ``call.<id>.started``.custom_parameters), then 20 ms μ-law frames, and reads the
agent's μ-law audio, ``clear`` and marks, echoing each mark once the audio before it played (OpenAI paces the
RTP stream, so it knows what played; the simulated leg buffers, so it reports it).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from shared.carriers.frames import OutboundEvent, PlayAudio, PlayClear, PlayMark

__all__ = ["CARRIER", "SipLine", "sip_leg_url"]

CARRIER = "openai-sip"
"""The simulator's name for this carrier (``switchboard call --carrier openai-sip``)."""


def sip_leg_url(localmodel_sip_port: int, host: str = "127.0.0.1") -> str:
    """The local model's SIP leg URL on ``host:localmodel_sip_port`` (``SWITCHBOARD_LOCALMODEL_SIP_PORT``)."""
    return f"ws://{host}:{localmodel_sip_port}/sip/leg"


class SipLine:
    """One simulated SIP leg as a :class:`~switchboard.caller.carriers.CallerLine`."""

    carrier = CARRIER
    echoes_marks_on_clear = False

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.rejected: int | None = None
        """The SIP status of a rejected call (480 when no session took it)."""

    @classmethod
    async def dial(cls, url: str, *, from_: str, to: str, params: Mapping[str, str]) -> SipLine:
        """Open the leg at ``url``, send the INVITE and wait until the call is accepted.

        Raises:
            ValueError: the call was rejected, or the leg closed before an answer (the message says why).
            OSError / websockets.exceptions.WebSocketException: the leg cannot be opened.
        """
        ws = await websockets.connect(url, max_size=1 << 20, compression=None)
        headers = [{"name": "From", "value": f"<sip:{from_}@sim.switchboard.invalid>;tag={secrets.token_hex(4)}"},
                   {"name": "To", "value": f"<sip:{to}@sip.api.openai.com>"},
                   {"name": "Call-ID", "value": secrets.token_hex(16)}]
        headers += [{"name": f"X-Switchboard-{name.replace('_', '-')}", "value": value}
                    for name, value in params.items()]
        await ws.send(json.dumps({"event": "invite", "headers": headers}))
        try:
            async for message in ws:
                event = json.loads(message) if isinstance(message, str) else {}
                if event.get("event") == "accepted":
                    return cls(ws)
                if event.get("event") == "rejected":
                    await ws.close()
                    raise ValueError(f"the call was rejected with SIP {event.get('status_code')}")
        except ConnectionClosed:
            pass  # closed with an error code: the reason says why
        raise ValueError(f"the SIP leg closed before an answer: {ws.close_code} {ws.close_reason}")

    async def media(self, frame: bytes) -> None:
        """Send 20 ms of caller audio (μ-law 8 kHz)."""
        await self.ws.send(frame)

    async def mark(self, name: str) -> None:
        """Report that the audio before mark ``name`` played (the simulated leg's stand-in for RTP pacing)."""
        await self.ws.send(json.dumps({"event": "mark", "name": name}))

    async def cleared(self) -> None:
        """SIP has no clear confirmation: nothing to send."""

    async def dtmf(self, digit: str) -> None:
        """Send one keypad digit (RFC 4733 on a real trunk; the local model ignores it)."""
        await self.ws.send(json.dumps({"event": "dtmf", "digit": digit}))

    async def stop(self) -> None:
        """The caller hangs up (BYE): close the leg."""
        await self.ws.close(1000, "bye")

    async def receive(self) -> OutboundEvent:
        """The next agent audio (μ-law), mark or ``clear``; other leg messages are skipped.

        Raises:
            websockets.exceptions.ConnectionClosed: the call ended.
        """
        while True:
            message = await self.ws.recv()
            if isinstance(message, bytes):
                return PlayAudio(message)
            event = json.loads(message)
            if event.get("event") == "clear":
                return PlayClear()
            if event.get("event") == "mark":
                return PlayMark(str(event.get("name")))
