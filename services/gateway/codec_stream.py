"""A carrier that is only a frame codec: :class:`CodecStream` drives any
:class:`~shared.carriers.frames.Codec` (Telnyx, Vonage, Plivo) through the one read loop.

Formats: μ-law/A-law 8 kHz go onto the bus as they arrive (the call's ``audio_format`` is ``audio/pcmu`` /
``audio/pcma``, what the model speaks too); linear PCM at 8 or 16 kHz is converted to ``audio/pcm;rate=24000``
(the model's PCM rate) on the way in and back to the wire rate on the way out, like the browser's audio.

Marks: each chunk of agent audio is followed by the carrier's playback marker (Telnyx ``mark``, Vonage
``notify``, Plivo ``checkpoint``); its echo becomes ``call.<id>.carrier.mark``. A ``command.clear`` sends the
carrier's clear; carriers that echo pending marks themselves (Telnyx) do so, for the others (Vonage, Plivo) the
marks pending at the clear are echoed when the carrier confirms it (``websocket:cleared`` / ``clearedAudio``).

A ``call_id`` stream parameter (our answer markup carries it for an outbound call, :mod:`.dialer`) opens the call
under that id; an invalid one closes the stream with 1008.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.websockets import WebSocket

from services.gateway.call import CallStart
from services.gateway.stream import CarrierStream, close_socket
from shared import subjects
from shared.audio import PCM24K, PCMA, PCMU, Converter
from shared.bus import Bus
from shared.carriers.frames import (
    AudioIn,
    CarrierProtocolError,
    Cleared,
    Codec,
    DtmfIn,
    MarkEcho,
    StreamStart,
    StreamStop,
)

__all__ = ["CodecSink", "CodecStream", "bus_format"]

log = logging.getLogger("services.gateway.codec_stream")


def bus_format(wire: str) -> str:
    """The call's ``audio_format`` for a wire format: G.711 as is, linear PCM as 24 kHz PCM16."""
    return wire if wire in (PCMU, PCMA) else PCM24K


class CodecSink:
    """Writes the bridge's audio, marks and clears through a codec (the bridge's one writer task calls it).

    ``converter`` turns the call's format into the wire format (None: the same). ``pending`` lists the marks
    sent and not yet echoed; :meth:`send_clear` moves them to ``cleared`` for codecs whose carrier does not
    echo them after a clear.
    """

    def __init__(self, ws: WebSocket, codec: Codec, converter: Converter | None) -> None:
        self.ws = ws
        self.codec = codec
        self.converter = converter
        self.pending: list[str] = []
        self.cleared: list[str] = []

    async def _send(self, frames: list[str | bytes]) -> None:
        for frame in frames:
            if isinstance(frame, bytes):
                await self.ws.send_bytes(frame)
            else:
                await self.ws.send_text(frame)

    async def send_audio(self, audio: bytes) -> None:
        """Agent audio in the call's format."""
        wire = self.converter.convert(audio) if self.converter is not None else audio
        if wire:
            await self._send(self.codec.encode_audio(wire))

    async def send_mark(self, name: str) -> None:
        """The carrier's playback marker after the audio sent so far."""
        self.pending.append(name)
        await self._send(self.codec.encode_mark(name))

    async def send_clear(self) -> None:
        """The carrier's clear; pending marks wait for the carrier's confirmation (or its own echoes)."""
        if not self.codec.marks_echo_on_clear:
            self.cleared.extend(self.pending)
            self.pending.clear()
        await self._send(self.codec.encode_clear())

    async def close(self, code: int, reason: str) -> None:
        """Close the socket."""
        await close_socket(self.ws, code, reason)


class CodecStream(CarrierStream):
    """One accepted carrier WebSocket whose frames ``codec`` decodes (see the module docstring)."""

    def __init__(self, ws: WebSocket, bus: Bus, codec: Codec, **options: Any) -> None:
        super().__init__(ws, bus, **options)
        self.codec = codec
        self.carrier = codec.carrier
        self.sink: CodecSink | None = None
        self._inbound: Converter | None = None

    async def on_message(self, message: Mapping[str, Any]) -> bool:
        """Decode one frame and act on it; False when the carrier stopped the stream.

        Raises:
            CarrierProtocolError: bad input, or anything but the start before the start.
        """
        event = self.codec.decode(message.get("text"), message.get("bytes"))
        if event is None:
            return True
        bridge = self.bridge
        if isinstance(event, AudioIn):
            if bridge is None:
                raise CarrierProtocolError("media before start")
            audio = self._inbound.convert(event.audio) if self._inbound is not None else event.audio
            if audio:
                await bridge.audio_in(audio)
            return True
        if isinstance(event, StreamStart):
            await self._start(event)
            return True
        if isinstance(event, StreamStop):
            return await self.hang_up()
        if bridge is None or self.sink is None:
            raise CarrierProtocolError(f"{type(event).__name__.lower()} before start")
        if isinstance(event, DtmfIn):
            await bridge.dtmf(event.digit)
        elif isinstance(event, MarkEcho):
            if event.name in self.sink.pending:
                self.sink.pending.remove(event.name)
            elif event.name in self.sink.cleared:
                self.sink.cleared.remove(event.name)
            await bridge.mark_echo(event.name)
        elif isinstance(event, Cleared):
            names, self.sink.cleared = self.sink.cleared, []
            for name in names:
                await bridge.mark_echo(name)
        return True

    async def _start(self, event: StreamStart) -> None:
        if self.bridge is not None:
            raise CarrierProtocolError("second start")
        call_format = bus_format(event.wire_format)
        converter = None
        if call_format != event.wire_format:
            self._inbound = Converter(event.wire_format, call_format)
            converter = Converter(call_format, event.wire_format)
        self.sink = CodecSink(self.ws, self.codec, converter)
        params = dict(event.parameters)
        start = CallStart(
            carrier=self.codec.carrier, audio_format=call_format,
            agent=str(params.get("agent") or self.default_agent),
            from_=event.from_ or params.get("caller"), to=event.to or params.get("called"),
            carrier_call_id=event.carrier_call_id, stream_id=event.stream_id,
            custom_parameters={**params, "wire_format": event.wire_format},
        )
        await self.open_call(self.sink, start, call_id=_call_id(params.get("call_id")))


def _call_id(value: str | None) -> str | None:
    """The call id our answer markup chose (an outbound call, ``?call_id=`` on the voice webhook), or None.

    Raises:
        CarrierProtocolError: not a valid call id.
    """
    if value is None:
        return None
    try:
        return subjects.validate_call_id(value)
    except subjects.InvalidSubjectTokenError:
        raise CarrierProtocolError("invalid call_id parameter") from None
