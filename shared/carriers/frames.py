"""What every carrier codec decodes to and encodes from: carrier-neutral stream events.

A carrier is a codec (this module's :class:`Codec`: wire frames ↔ :data:`InboundEvent`) plus routes; the
gateway's one read loop (``services.gateway.stream``) drives any codec. Inbound events: :class:`StreamStart`
(opens the call), :class:`AudioIn` (caller audio in the codec's ``bus_format``), :class:`DtmfIn`,
:class:`MarkEcho` (playback reached a mark), :class:`Cleared` (the carrier dropped its unplayed audio),
:class:`StreamStop` (the caller hung up) and None (a message with nothing to do, e.g. ``connected``).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

__all__ = [
    "MAX_MESSAGE_BYTES",
    "AudioIn",
    "CarrierProtocolError",
    "Cleared",
    "Codec",
    "DtmfIn",
    "InboundEvent",
    "MarkEcho",
    "OutboundEvent",
    "PlayAudio",
    "PlayClear",
    "PlayMark",
    "StreamStart",
    "StreamStop",
    "b64decode",
    "check_digit",
    "field_of",
    "inbound_audio",
    "load_object",
    "string_at",
    "text_frame",
    "text_of",
    "unknown",
]

MAX_MESSAGE_BYTES = 64 * 1024
"""Largest frame accepted from a carrier (64 KiB); a 20 ms media frame is a few hundred bytes."""

_DTMF_DIGITS = re.compile(r"[0-9*#A-Da-d]")


class CarrierProtocolError(ValueError):
    """A frame that breaks the carrier's protocol (bad JSON, unknown event, bad base64, wrong frame size, …).

    ``reason`` is short and safe to put in a WebSocket close frame (at most 120 characters; RFC 6455 allows
    123 bytes).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason[:120]


@dataclass(frozen=True, slots=True)
class StreamStart:
    """The carrier's stream began: ids, numbers, and the wire audio format (``audio/pcmu`` …)."""

    carrier_call_id: str | None
    stream_id: str | None
    wire_format: str
    """The audio format on the wire, as :func:`shared.audio.parse_format` names it."""
    from_: str | None = None
    to: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    """Custom parameters the webhook answer attached (``agent``, ``caller``, ``called``, …)."""


@dataclass(frozen=True, slots=True)
class _Audio:
    audio: bytes
    """In the wire format (decoded from base64 where the carrier sends it so)."""


@dataclass(frozen=True, slots=True)
class _Named:
    name: str


class AudioIn(_Audio):
    """Caller audio, decoded from the wire (base64 or binary) but still in the wire format."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class DtmfIn:
    """One keypad digit (``0``–``9``, ``*``, ``#``, ``A``–``D``)."""

    digit: str


class MarkEcho(_Named):
    """Playback reached the mark (Twilio/Telnyx ``mark``, Vonage ``websocket:notify``, Plivo ``playedStream``)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Cleared:
    """The carrier confirmed a clear (Vonage ``websocket:cleared``, Plivo ``clearedAudio``)."""


@dataclass(frozen=True, slots=True)
class StreamStop:
    """The carrier ended the stream (the caller hung up)."""


class PlayAudio(_Audio):
    """Gateway → carrier: audio to play (wire format), as the caller simulator decodes it."""

    __slots__ = ()


class PlayMark(_Named):
    """Gateway → carrier: report ``name`` once the audio before it has played."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class PlayClear:
    """Gateway → carrier: drop the audio not yet played."""


OutboundEvent = PlayAudio | PlayMark | PlayClear
"""What a carrier (the caller simulator) decodes from one gateway frame."""

InboundEvent = StreamStart | AudioIn | DtmfIn | MarkEcho | Cleared | StreamStop | None
"""What :meth:`Codec.decode` returns for one frame."""


def check_digit(digit: object) -> str:
    """``digit`` when it is one DTMF digit.

    Raises:
        CarrierProtocolError: anything else.
    """
    if not isinstance(digit, str) or _DTMF_DIGITS.fullmatch(digit) is None:
        raise CarrierProtocolError(f"invalid dtmf digit {str(digit)[:8]!r}")
    return digit


def load_object(frame: str | bytes) -> dict[str, Any]:
    """Decode one JSON text frame that must be an object with a string ``event`` (orjson: strict RFC 8259).

    Raises:
        CarrierProtocolError: over 64 KiB, not JSON, not an object.
    """
    if len(frame) > MAX_MESSAGE_BYTES:
        raise CarrierProtocolError(f"message over {MAX_MESSAGE_BYTES // 1024} KiB")
    try:
        raw = orjson.loads(frame)
    except (ValueError, UnicodeDecodeError):
        raise CarrierProtocolError("malformed JSON") from None
    if not isinstance(raw, dict):
        raise CarrierProtocolError("message is not a JSON object")
    return raw


def text_frame(frame: str | bytes | None, carrier: str) -> dict[str, Any]:
    """:func:`load_object` of a text frame, for carriers whose protocol has no binary frames (Telnyx, Plivo).

    Raises:
        CarrierProtocolError: a binary frame (``bytes`` or no text), or what :func:`load_object` raises.
    """
    if not isinstance(frame, str):
        raise CarrierProtocolError(f"binary frames are not part of the {carrier} protocol")
    return load_object(frame)


def unknown(kind: str, value: object) -> CarrierProtocolError:
    """The error for a message whose ``kind`` (``event``, ``action``) is not one the carrier sends."""
    return CarrierProtocolError(f"unknown {kind} {str(value)[:40]!r}")


def inbound_audio(raw: dict[str, Any]) -> bytes | None:
    """The decoded ``media.payload`` of a JSON ``media`` message (Telnyx, Plivo) on the caller's track
    (``track`` ``inbound``, ``inbound_track`` or absent); None for another track.

    Raises:
        CarrierProtocolError: ``media`` not an object, or its payload not base64.
    """
    media = field_of(raw, "media")
    if text_of(media, "track", "inbound") not in ("inbound", "inbound_track"):
        return None
    return b64decode(media.get("payload"))


def b64decode(payload: object, where: str = "media.payload") -> bytes:
    """Decode a base64 field (standard alphabet, padding required).

    Raises:
        CarrierProtocolError: not a string or not valid base64.
    """
    if not isinstance(payload, str):
        raise CarrierProtocolError(f"{where} must be a base64 string")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise CarrierProtocolError(f"invalid base64 in {where}") from None


def field_of(raw: dict[str, Any], name: str) -> dict[str, Any]:
    """``raw[name]`` when it is an object.

    Raises:
        CarrierProtocolError: missing or not an object.
    """
    value = raw.get(name)
    if not isinstance(value, dict):
        raise CarrierProtocolError(f"invalid {raw.get('event')}: {name} must be an object")
    return value


def text_of(raw: dict[str, Any], name: str, default: str | None = None) -> str | None:
    """``raw[name]`` as a string (numbers are accepted and converted); ``default`` when absent.

    Raises:
        CarrierProtocolError: present but neither a string nor a number.
    """
    value = raw.get(name, default)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise CarrierProtocolError(f"invalid {raw.get('event')}: {name} must be a string")


def string_at(raw: dict[str, Any], path: str) -> str:
    """The string at the dotted ``path`` of ``raw`` (``"mark.name"`` is ``raw["mark"]["name"]``).

    Raises:
        CarrierProtocolError: missing or not a string (named with the message's ``event`` or ``action``).
    """
    value: object = raw
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    if not isinstance(value, str):
        raise CarrierProtocolError(f"invalid {raw.get('event', raw.get('action'))}: {path} must be a string")
    return value


class Codec(Protocol):
    """One carrier's frame codec on the gateway side (carrier → gateway decode, gateway → carrier encode).

    A codec instance belongs to one socket: it may keep state (the stream id learnt at start, the wire
    format, a partial outbound frame).
    """

    carrier: str
    """The ``carrier`` of ``call.<id>.started`` (``telnyx``, ``vonage``, ``plivo``)."""
    marks_echo_on_clear: bool
    """True when the carrier echoes pending marks itself after a clear (Twilio, Telnyx); False when only a
    :class:`Cleared` confirmation comes back and the gateway echoes the pending marks (Vonage, Plivo)."""

    def decode(self, text: str | None, data: bytes | None) -> InboundEvent:
        """Decode one WebSocket message (``text`` for a text frame, ``data`` for a binary one).

        Raises:
            CarrierProtocolError: the frame is not valid for this carrier in the stream's current state.
        """

    def encode_audio(self, audio: bytes) -> list[str | bytes]:
        """Frames that play ``audio`` (wire format) on the carrier; may hold back a partial frame."""

    def encode_mark(self, name: str) -> list[str | bytes]:
        """Frames that ask for a :class:`MarkEcho` ``name`` once the audio sent so far has played."""

    def encode_clear(self) -> list[str | bytes]:
        """Frames that drop the carrier's unplayed audio (and any held partial frame)."""
