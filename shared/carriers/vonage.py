"""Vonage Voice API WebSockets (NCCO ``connect`` to a ``websocket`` endpoint).

Sources: https://developer.vonage.com/en/voice/voice-api/concepts/websockets and the NCCO reference
https://developer.vonage.com/en/voice/voice-api/ncco-reference#connect.

Vonage → server: first a text ``{"event":"websocket:connected","content-type":"audio/l16;rate=16000",…}``
with the NCCO endpoint's ``headers`` flattened into it (our ``agent``, ``caller``, ``called``, ``uuid``); then
**binary** frames of 20 ms PCM16 little-endian mono (320 bytes at 8 kHz, 640 at 16 kHz, 960 at 24 kHz), and
text ``websocket:dtmf`` (``digit``, ``duration``), ``websocket:notify`` (a ``notify`` we sent reached
playback; its ``payload`` comes back), ``websocket:cleared`` (a ``clear`` took effect). The call ends with the
socket closing. Server → Vonage: binary frames of exactly 20 ms at the same rate, ``{"action":"notify",
"payload":{"name":…}}`` (our mark) and ``{"action":"clear"}``. Vonage confirms a clear with
``websocket:cleared`` but does not report the notifies it dropped, so the gateway echoes them then.

Outbound audio that does not fill a whole frame is held until more arrives; before a notify the held part is
padded with silence (at most 20 ms) so the notify marks the end of what was sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from shared.carriers import frames
from shared.carriers.frames import CarrierProtocolError, InboundEvent, OutboundEvent

__all__ = ["RATES", "VonageCodec", "build_ncco", "connected_frame", "frame_bytes", "parse_ncco",
           "parse_outbound"]

RATES = (8000, 16000, 24000)
"""``audio/l16;rate=N`` rates Vonage streams."""
_CONTENT_TYPE = re.compile(r"audio/l16;\s*rate=(\d+)")


def frame_bytes(rate: int) -> int:
    """Bytes in one 20 ms frame of PCM16 mono at ``rate`` Hz (320 at 8 kHz, 640 at 16 kHz)."""
    return rate // 50 * 2


def _rate_of(content_type: object) -> int:
    match = _CONTENT_TYPE.fullmatch(str(content_type or ""))
    if match is None or int(match.group(1)) not in RATES:
        raise CarrierProtocolError(f"unsupported content-type {str(content_type)[:40]!r}")
    return int(match.group(1))


class VonageCodec:
    """Gateway-side Vonage frame codec (see :class:`shared.carriers.frames.Codec`)."""

    carrier = "vonage"
    marks_echo_on_clear = False

    def __init__(self) -> None:
        self.rate: int | None = None
        self._held = b""

    def decode(self, text: str | None, data: bytes | None) -> InboundEvent:
        """Decode one Vonage message: a binary audio frame or a text event.

        Raises:
            CarrierProtocolError: audio before ``websocket:connected``, a frame that is not 20 ms, bad JSON,
                a second ``websocket:connected``, an unsupported content type or DTMF digit.
        """
        if data is not None:
            if self.rate is None:
                raise CarrierProtocolError("audio before websocket:connected")
            size = frame_bytes(self.rate)
            if len(data) != size:
                raise CarrierProtocolError(f"audio frame of {min(len(data), frames.MAX_MESSAGE_BYTES + 1)} bytes, "
                                           f"expected {size} (20 ms of L16 at {self.rate} Hz)")
            return frames.AudioIn(data)
        raw = frames.load_object(text or "")
        event = raw.get("event")
        if event == "websocket:connected":
            if self.rate is not None:
                raise CarrierProtocolError("second websocket:connected")
            self.rate = _rate_of(raw.get("content-type"))
            params = {k: str(v) for k, v in raw.items() if k not in ("event", "content-type")
                      and isinstance(v, str | int | float) and not isinstance(v, bool)}
            return frames.StreamStart(carrier_call_id=params.get("uuid"), stream_id=None,
                                      wire_format=f"audio/pcm;rate={self.rate}", from_=params.get("caller"),
                                      to=params.get("called"), parameters=params)
        if self.rate is None:
            raise CarrierProtocolError(f"{str(event)[:40]} before websocket:connected")
        if event == "websocket:dtmf":
            digit = raw.get("digit")
            if digit is None and isinstance(raw.get("dtmf"), dict):  # newer payloads nest it
                digit = raw["dtmf"].get("digit")
            return frames.DtmfIn(frames.check_digit(digit))
        if event == "websocket:notify":
            return frames.MarkEcho(frames.string_at(raw, "payload.name"))
        if event == "websocket:cleared":
            return frames.Cleared()
        raise frames.unknown("event", event)

    def _frames(self, audio: bytes, *, pad: bool) -> list[str | bytes]:
        assert self.rate is not None
        size = frame_bytes(self.rate)
        data = self._held + audio
        whole = len(data) - len(data) % size
        out: list[str | bytes] = [data[i:i + size] for i in range(0, whole, size)]
        rest = data[whole:]
        if pad and rest:
            out.append(rest + bytes(size - len(rest)))
            rest = b""
        self._held = rest
        return out

    def encode_audio(self, audio: bytes) -> list[str | bytes]:
        """Whole 20 ms binary frames; a partial frame is held for the next call."""
        return self._frames(audio, pad=False)

    def encode_mark(self, name: str) -> list[str | bytes]:
        """The held partial frame (padded with silence), then ``{"action":"notify","payload":{"name":…}}``."""
        return [*self._frames(b"", pad=True), orjson.dumps({"action": "notify", "payload": {"name": name}}).decode()]

    def encode_clear(self) -> list[str | bytes]:
        """``{"action":"clear"}`` (and the held partial frame is dropped)."""
        self._held = b""
        return ['{"action":"clear"}']


# --- webhook answer (NCCO) ----------------------------------------------------------------------------


def build_ncco(stream_url: str, headers: Mapping[str, str], *, rate: int = 16000,
               authorization: str | None = None) -> list[dict[str, Any]]:
    """The answer NCCO: ``connect`` to a ``websocket`` endpoint at ``stream_url`` with ``audio/l16;rate=N``.

    ``headers`` come back flattened in ``websocket:connected``; ``authorization`` (e.g. ``Bearer <token>``)
    is sent by Vonage as the upgrade's ``Authorization`` header (endpoint ``authorization`` of type
    ``custom``).

    Raises:
        ValueError: the URL is not ws(s):// or the rate is not one of :data:`RATES`.
    """
    if not stream_url.startswith(("wss://", "ws://")):
        raise ValueError(f"stream url must be ws(s)://, got {stream_url!r}")
    if rate not in RATES:
        raise ValueError(f"rate must be one of {RATES}")
    endpoint: dict[str, Any] = {"type": "websocket", "uri": stream_url, "content-type": f"audio/l16;rate={rate}",
                                "headers": dict(headers)}
    if authorization:
        endpoint["authorization"] = {"type": "custom", "value": authorization}
    return [{"action": "connect", "endpoint": [endpoint]}]


def parse_ncco(ncco: object) -> tuple[str, int, dict[str, str], str | None]:
    """``(uri, rate, headers, authorization value)`` of the first websocket ``connect`` in an NCCO.

    Raises:
        ValueError: no ``connect`` action with a ``websocket`` endpoint.
    """
    for action in ncco if isinstance(ncco, list) else []:
        if isinstance(action, dict) and action.get("action") == "connect":
            for endpoint in action.get("endpoint") or []:
                if isinstance(endpoint, dict) and endpoint.get("type") == "websocket" and endpoint.get("uri"):
                    auth = endpoint.get("authorization")
                    value = auth.get("value") if isinstance(auth, dict) else None
                    return (str(endpoint["uri"]), _rate_of(endpoint.get("content-type")),
                            {str(k): str(v) for k, v in (endpoint.get("headers") or {}).items()},
                            str(value) if value else None)
    raise ValueError("NCCO has no connect action with a websocket endpoint")


# --- the carrier's side (caller simulator) ------------------------------------------------------------


def connected_frame(rate: int, headers: Mapping[str, str]) -> str:
    """``websocket:connected`` as Vonage sends it: the content type and the endpoint headers flattened."""
    return orjson.dumps({"event": "websocket:connected", "content-type": f"audio/l16;rate={rate}",
                         **{k: v for k, v in headers.items() if k not in ("event", "content-type")}}).decode()


def parse_outbound(frame: str | bytes) -> OutboundEvent:
    """Decode one server → Vonage message (binary audio, ``notify`` or ``clear``).

    Raises:
        CarrierProtocolError: anything else.
    """
    if isinstance(frame, bytes):
        return frames.PlayAudio(frame)
    raw = frames.load_object(frame)
    action = raw.get("action")
    if action == "notify":
        return frames.PlayMark(frames.string_at(raw, "payload.name"))
    if action == "clear":
        return frames.PlayClear()
    raise frames.unknown("action", raw.get("action"))
