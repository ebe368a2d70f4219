"""Telnyx Media Streaming over WebSockets (TeXML ``<Connect><Stream bidirectionalMode="rtp">``).

Sources: https://developers.telnyx.com/docs/voice/programmable-voice/media-streaming and
https://developers.telnyx.com/docs/voice/programmable-voice/texml-verbs/stream.

Telnyx → server (JSON text, snake_case): ``connected``; ``start`` (``stream_id`` at the top level,
``start.call_control_id``, ``from``, ``to``, ``media_format{encoding,sample_rate,channels}``,
``custom_parameters``); ``media`` (base64 RTP payload, no RTP header); ``dtmf`` (``dtmf.digit``); ``mark``
(echo); ``stop``; ``error`` (Telnyx rejected something we sent: logged). Server → Telnyx: ``media``
(``media.payload``), ``mark`` and ``clear``; pending marks echo after a clear, as with Twilio.

Encodings: ``PCMU``/``audio/x-mulaw`` (8 kHz, the default), ``PCMA``/``audio/x-alaw``, and ``L16`` (PCM16
**big-endian**, swapped to the bus's little-endian here). Frame order is taken as it arrives.
"""

from __future__ import annotations

import base64
import logging
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

import orjson

from shared.audio import PCMA, PCMU
from shared.carriers import frames
from shared.carriers.frames import CarrierProtocolError, InboundEvent, OutboundEvent
from shared.carriers.twilio import parse_twiml

__all__ = ["TelnyxCodec", "build_texml", "caller_frame", "parse_outbound", "parse_texml", "wire_format"]

log = logging.getLogger("shared.carriers.telnyx")

_ENCODINGS = {"PCMU": PCMU, "audio/x-mulaw": PCMU, "PCMA": PCMA, "audio/x-alaw": PCMA}


def _swap16(data: bytes) -> bytes:
    """PCM16 big-endian ↔ little-endian."""
    if len(data) % 2:
        raise CarrierProtocolError("L16 payload must be whole 16-bit samples")
    swapped = bytearray(data)
    swapped[0::2], swapped[1::2] = data[1::2], data[0::2]
    return bytes(swapped)


def wire_format(encoding: str, sample_rate: int) -> str:
    """Our format name for a Telnyx ``media_format`` (L16 becomes ``audio/pcm;rate=N`` after the byte swap).

    Raises:
        CarrierProtocolError: an encoding the gateway does not handle (G722, OPUS, AMR-WB).
    """
    if encoding in _ENCODINGS and sample_rate == 8000:
        return _ENCODINGS[encoding]
    if encoding in ("L16", "audio/l16") and sample_rate in (8000, 16000, 24000):
        return f"audio/pcm;rate={sample_rate}"
    raise CarrierProtocolError(f"unsupported media format {encoding[:20]}/{sample_rate}")


class TelnyxCodec:
    """Gateway-side Telnyx frame codec (see :class:`shared.carriers.frames.Codec`)."""

    carrier = "telnyx"
    marks_echo_on_clear = True

    def __init__(self) -> None:
        self.big_endian = False
        self.started = False

    def decode(self, text: str | None, data: bytes | None) -> InboundEvent:
        """Decode one Telnyx frame (text only).

        Raises:
            CarrierProtocolError: binary frame, bad JSON, unknown event, missing fields, bad base64/digit.
        """
        raw = frames.text_frame(text, "Telnyx")
        event = raw.get("event")
        if event == "media":
            audio = frames.inbound_audio(raw)
            if audio is None:
                return None
            return frames.AudioIn(_swap16(audio) if self.big_endian else audio)
        if event == "start":
            start = frames.field_of(raw, "start")
            fmt = start.get("media_format") or {}
            if not isinstance(fmt, dict):
                raise CarrierProtocolError("invalid start: media_format must be an object")
            encoding = frames.text_of(fmt, "encoding", "PCMU") or "PCMU"
            rate = fmt.get("sample_rate", 8000)
            if not isinstance(rate, int) or fmt.get("channels", 1) != 1:
                raise CarrierProtocolError("invalid start: media_format sample_rate/channels")
            wire = wire_format(encoding, rate)
            self.big_endian = wire.startswith("audio/pcm;")
            params = start.get("custom_parameters") or {}
            if not isinstance(params, dict):
                raise CarrierProtocolError("invalid start: custom_parameters must be an object")
            self.started = True
            return frames.StreamStart(carrier_call_id=frames.text_of(start, "call_control_id"),
                                      stream_id=frames.text_of(raw, "stream_id"), wire_format=wire,
                                      from_=frames.text_of(start, "from"), to=frames.text_of(start, "to"),
                                      parameters={str(k): str(v) for k, v in params.items()})
        if event == "dtmf":
            return frames.DtmfIn(frames.check_digit(frames.field_of(raw, "dtmf").get("digit")))
        if event == "mark":
            return frames.MarkEcho(frames.string_at(raw, "mark.name"))
        if event == "stop":
            return frames.StreamStop()
        if event == "connected":
            return None
        if event == "error":
            log.warning("telnyx reported an error on the stream: %s", str(raw.get("payload"))[:200])
            return None
        raise frames.unknown("event", event)

    def encode_audio(self, audio: bytes) -> list[str | bytes]:
        """``{"event":"media","media":{"payload":<base64>}}``."""
        payload = base64.b64encode(_swap16(audio) if self.big_endian else audio).decode("ascii")
        return ['{"event":"media","media":{"payload":"' + payload + '"}}']

    def encode_mark(self, name: str) -> list[str | bytes]:
        """``{"event":"mark","mark":{"name":…}}``."""
        return [orjson.dumps({"event": "mark", "mark": {"name": name}}).decode()]

    def encode_clear(self) -> list[str | bytes]:
        """``{"event":"clear"}``."""
        return ['{"event":"clear"}']


# --- webhook answer (TeXML) ---------------------------------------------------------------------------


def build_texml(stream_url: str, parameters: Mapping[str, str], *, codec: str = "PCMU") -> str:
    """TeXML ``<Response><Connect><Stream url bidirectionalMode="rtp" bidirectionalCodec>`` with one
    ``<Parameter>`` per item (they arrive as ``start.custom_parameters``).

    Raises:
        ValueError: the URL is not ws(s)://.
    """
    if not stream_url.startswith(("wss://", "ws://")):
        raise ValueError(f"stream url must be ws(s)://, got {stream_url!r}")
    response = ET.Element("Response")
    stream = ET.SubElement(ET.SubElement(response, "Connect"), "Stream", {
        "url": stream_url, "track": "inbound_track", "bidirectionalMode": "rtp", "bidirectionalCodec": codec})
    for key, value in parameters.items():
        ET.SubElement(stream, "Parameter", {"name": key, "value": value})
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(response, encoding="unicode")


def parse_texml(document: str) -> tuple[str, dict[str, str]]:
    """The ``<Connect><Stream url>`` and its ``<Parameter>`` pairs from TeXML (the caller simulator's side);
    TeXML's ``<Connect><Stream>`` has TwiML's shape, so :func:`shared.carriers.twilio.parse_twiml` reads it.

    Raises:
        ValueError: not XML, or no ``Response/Connect/Stream`` with a ``url``.
    """
    return parse_twiml(document)


# --- the carrier's side (caller simulator) ------------------------------------------------------------


def caller_frame(event: str, stream_id: str, seq: int, **body: Any) -> str:
    """One Telnyx → server frame as Telnyx sends it: ``event``, ``sequence_number`` (string), ``stream_id``
    and the event's body (``start``/``media``/``dtmf``/``mark``/``stop`` object in ``body``)."""
    frame: dict[str, Any] = {"event": event, "sequence_number": str(seq), "stream_id": stream_id, **body}
    if event == "connected":
        frame = {"event": "connected", "version": "1.0.0"}
    return orjson.dumps(frame).decode()


def parse_outbound(frame: str | bytes) -> OutboundEvent:
    """Decode one server → Telnyx frame (what the caller simulator receives).

    Raises:
        CarrierProtocolError: not a Telnyx ``media``/``mark``/``clear`` message.
    """
    raw = frames.text_frame(frame, "Telnyx")
    event = raw.get("event")
    if event == "media":
        return frames.PlayAudio(frames.b64decode(frames.field_of(raw, "media").get("payload")))
    if event == "mark":
        return frames.PlayMark(frames.string_at(raw, "mark.name"))
    if event == "clear":
        return frames.PlayClear()
    raise frames.unknown("event", event)

