"""Plivo Audio Streams (XML ``<Stream bidirectional="true" keepCallAlive="true">``).

Sources: https://www.plivo.com/docs/voice/xml/the-stream-element and
https://www.plivo.com/docs/voice/concepts/audio-streaming.

Plivo → server (JSON text, camelCase): ``start`` (``start.callId``, ``start.streamId``,
``start.mediaFormat{encoding,sampleRate}``; ``extra_headers`` carries the XML's ``extraHeaders``), ``media``
(base64), ``dtmf`` (``dtmf.digit``), ``playedStream`` (a ``checkpoint`` reached playback), ``clearedAudio``
(a ``clearAudio`` took effect) and sometimes ``stop`` (the socket closing is authoritative). Server → Plivo:
``playAudio`` (``media{contentType,sampleRate,payload}``), ``checkpoint`` (≈ Twilio ``mark``) and
``clearAudio`` (≈ ``clear``). Formats: ``audio/x-mulaw`` 8 kHz, ``audio/x-l16`` 8 or 16 kHz (PCM16 LE).
Plivo confirms a clear with ``clearedAudio`` without reporting the dropped checkpoints; the gateway echoes
them then.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

import orjson
from plivo import plivoxml

from shared.audio import PCMU
from shared.carriers import frames
from shared.carriers.frames import CarrierProtocolError, InboundEvent, OutboundEvent

__all__ = ["PlivoCodec", "build_stream_xml", "caller_frame", "content_type", "parse_extra_headers",
           "parse_outbound", "parse_stream_xml"]


def content_type(wire: str) -> tuple[str, int]:
    """Plivo's ``(contentType, sampleRate)`` for our wire format name (``audio/pcmu`` → ``audio/x-mulaw``)."""
    if wire == PCMU:
        return "audio/x-mulaw", 8000
    return "audio/x-l16", int(wire.rsplit("=", 1)[1])


def _wire_format(encoding: str, rate: object) -> str:
    if encoding == "audio/x-mulaw" and rate == 8000:
        return PCMU
    if encoding == "audio/x-l16" and rate in (8000, 16000):
        return f"audio/pcm;rate={rate}"
    raise CarrierProtocolError(f"unsupported media format {encoding[:20]}/{rate}")


def parse_extra_headers(value: object) -> dict[str, str]:
    """``extra_headers`` of a start message: a JSON object (or its string), or ``k=v;k=v`` as in the XML.

    Raises:
        CarrierProtocolError: anything else.
    """
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except ValueError:
            text = str(value)
            pairs = [item.split("=", 1) for item in text.split(";") if item]
            if any(len(pair) != 2 for pair in pairs):
                raise CarrierProtocolError("invalid start: extra_headers") from None
            return {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(value, dict):
        raise CarrierProtocolError("invalid start: extra_headers must be an object")
    return {str(k): str(v) for k, v in value.items()}


class PlivoCodec:
    """Gateway-side Plivo frame codec (see :class:`shared.carriers.frames.Codec`)."""

    carrier = "plivo"
    marks_echo_on_clear = False

    def __init__(self) -> None:
        self.stream_id = ""
        self.content_type = ("audio/x-mulaw", 8000)

    def decode(self, text: str | None, data: bytes | None) -> InboundEvent:
        """Decode one Plivo frame (text only).

        Raises:
            CarrierProtocolError: binary frame, bad JSON, unknown event, missing fields, bad base64/digit.
        """
        raw = frames.text_frame(text, "Plivo")
        event = raw.get("event")
        if event == "media":
            audio = frames.inbound_audio(raw)
            return None if audio is None else frames.AudioIn(audio)
        if event == "start":
            start = frames.field_of(raw, "start")
            fmt = start.get("mediaFormat") or {}
            if not isinstance(fmt, dict):
                raise CarrierProtocolError("invalid start: mediaFormat must be an object")
            wire = _wire_format(frames.text_of(fmt, "encoding", "audio/x-mulaw") or "", fmt.get("sampleRate", 8000))
            self.stream_id = frames.text_of(start, "streamId") or frames.text_of(raw, "streamId") or ""
            self.content_type = content_type(wire)
            params = parse_extra_headers(raw.get("extra_headers", raw.get("extraHeaders")))
            return frames.StreamStart(carrier_call_id=frames.text_of(start, "callId"),
                                      stream_id=self.stream_id or None, wire_format=wire,
                                      from_=params.get("caller"), to=params.get("called"), parameters=params)
        if event == "dtmf":
            return frames.DtmfIn(frames.check_digit(frames.field_of(raw, "dtmf").get("digit")))
        if event == "playedStream":
            return frames.MarkEcho(frames.string_at(raw, "name"))
        if event == "clearedAudio":
            return frames.Cleared()
        if event == "stop":
            return frames.StreamStop()
        raise frames.unknown("event", event)

    def encode_audio(self, audio: bytes) -> list[str | bytes]:
        """``{"event":"playAudio","media":{"contentType":…,"sampleRate":…,"payload":<base64>}}``."""
        kind, rate = self.content_type
        payload = base64.b64encode(audio).decode("ascii")
        return ['{"event":"playAudio","media":{"contentType":"' + kind + '","sampleRate":' + str(rate)
                + ',"payload":"' + payload + '"}}']

    def encode_mark(self, name: str) -> list[str | bytes]:
        """``{"event":"checkpoint","streamId":…,"name":…}``."""
        return [orjson.dumps({"event": "checkpoint", "streamId": self.stream_id, "name": name}).decode()]

    def encode_clear(self) -> list[str | bytes]:
        """``{"event":"clearAudio","streamId":…}``."""
        return [orjson.dumps({"event": "clearAudio", "streamId": self.stream_id}).decode()]


# --- webhook answer (Plivo XML) -----------------------------------------------------------------------


def build_stream_xml(stream_url: str, extra_headers: Mapping[str, str], *,
                     wire: str = PCMU) -> str:
    """``<Response><Stream bidirectional="true" keepCallAlive="true" contentType=…>url</Stream></Response>``
    built with the plivo SDK's ``plivoxml``; ``extra_headers`` travel as ``extraHeaders="k=v;…"``.

    Raises:
        ValueError: the URL is not ws(s):// or a header key/value holds ``;`` or ``=``.
    """
    if not stream_url.startswith(("wss://", "ws://")):
        raise ValueError(f"stream url must be ws(s)://, got {stream_url!r}")
    if any(c in k + v for k, v in extra_headers.items() for c in ";="):
        raise ValueError("extraHeaders keys and values may not contain ';' or '='")
    kind, rate = content_type(wire)
    response = plivoxml.ResponseElement()
    response.add(plivoxml.StreamElement(
        stream_url, bidirectional=True, keepCallAlive=True, contentType=f"{kind};rate={rate}",
        extraHeaders=";".join(f"{k}={v}" for k, v in extra_headers.items())))
    return str(response.to_string(False))


def parse_stream_xml(document: str) -> tuple[str, str, dict[str, str]]:
    """``(stream url, wire format, extra headers)`` from a Plivo ``<Stream>`` answer (caller simulator).

    Raises:
        ValueError: not XML or no ``<Response><Stream>`` with a URL.
    """
    try:
        root = ET.fromstring(document)
    except ET.ParseError as exc:
        raise ValueError(f"invalid Plivo XML: {exc}") from None
    stream = root.find("./Stream")
    if root.tag != "Response" or stream is None or not (stream.text or "").strip():
        raise ValueError("Plivo XML has no <Response><Stream>url</Stream>")
    kind, _, rate = (stream.get("contentType") or "audio/x-mulaw;rate=8000").partition(";rate=")
    try:
        wire = _wire_format(kind, int(rate or 8000))
    except (CarrierProtocolError, ValueError) as exc:
        raise ValueError(f"unsupported contentType {stream.get('contentType')!r}") from exc
    return (stream.text or "").strip(), wire, parse_extra_headers(stream.get("extraHeaders") or "")


# --- the carrier's side (caller simulator) ------------------------------------------------------------


def caller_frame(event: str, stream_id: str, seq: int, **body: Any) -> str:
    """One Plivo → server frame: ``event``, ``sequenceNumber`` (integer), ``streamId`` and the body."""
    return orjson.dumps({"event": event, "sequenceNumber": seq, "streamId": stream_id, **body}).decode()


def parse_outbound(frame: str | bytes) -> OutboundEvent:
    """Decode one server → Plivo frame (``playAudio``, ``checkpoint``, ``clearAudio``).

    Raises:
        CarrierProtocolError: anything else.
    """
    raw = frames.text_frame(frame, "Plivo")
    event = raw.get("event")
    if event == "playAudio":
        return frames.PlayAudio(frames.b64decode(frames.field_of(raw, "media").get("payload")))
    if event == "checkpoint":
        return frames.PlayMark(frames.string_at(raw, "name"))
    if event == "clearAudio":
        return frames.PlayClear()
    raise frames.unknown("event", event)
