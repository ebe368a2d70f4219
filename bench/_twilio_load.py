"""The load generator of ``bench/pipeline.py``: N Twilio Media Streams callers that time every echoed frame.

Each caller sends one 20 ms μ-law frame (160 bytes, base64 in a ``media`` message) every 20 ms at real time
(paced against the call's start, so a late wake-up does not shift later frames), echoes every ``mark`` at once
(as Twilio does when the audio before it has played on a line that plays at once), and reads the audio that comes
back. Frames are marked in the audio itself: the first 10 bytes of every frame are :data:`MAGIC`, the call index
(u16) and the frame's sequence number (u32), the rest a 440 Hz tone. The bytes pass through base64, the bus, the
model's echo and any re-batching unchanged, so the caller reassembles the returned audio as one byte stream per
call and reads the markers from it at 160-byte steps (resynchronising on :data:`MAGIC` if bytes ever go missing).

Per returned marked frame: round trip = receive time − send time (monotonic, ms). Also counted: frames never
returned (lost), returned twice (duplicated) and returned bytes that carry no marker (audio the caller did not
send, e.g. a generated greeting). After the last frame a caller waits up to ``drain_s`` for the rest to come back
and then sends ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import struct
import time
from base64 import b64decode, b64encode
from dataclasses import dataclass, field

import numpy as np
import websockets

from shared.audio import ulaw_encode

__all__ = ["FRAME_BYTES", "FRAME_S", "MAGIC", "CallResult", "frame", "run_calls"]

FRAME_S = 0.020
"""One Twilio media frame: 20 ms of μ-law at 8 kHz."""
FRAME_BYTES = 160
MAGIC = b"\x00\xff\x00\xff"
"""Marker start: full-scale negative / silence codes alternating, which a −12 dBFS tone never produces."""
_TONE = ulaw_encode((8000 * np.sin(2 * math.pi * 440 * np.arange(8000) / 8000.0)).astype(np.int16))


def frame(call: int, seq: int) -> bytes:
    """The 160-byte μ-law frame ``seq`` of call ``call``: marker + tone."""
    head = MAGIC + struct.pack(">HI", call, seq)
    start = (seq * FRAME_BYTES) % (len(_TONE) - FRAME_BYTES)
    return head + bytes(_TONE[start + len(head):start + FRAME_BYTES])


@dataclass
class CallResult:
    """What one caller saw. ``rtt_ms[i]`` is the round trip of frame ``i`` (NaN: never returned)."""

    index: int
    sent: int = 0
    rtt_ms: list[float] = field(default_factory=list)
    duplicated: int = 0
    unmarked_bytes: int = 0
    media_messages: int = 0
    clears: int = 0
    error: str | None = None

    @property
    def returned(self) -> int:
        """Distinct frames that came back."""
        return sum(1 for r in self.rtt_ms if not math.isnan(r))


class _Reassembler:
    """Reads frame markers from one call's returned byte stream."""

    def __init__(self, result: CallResult, sent_at: list[float]) -> None:
        self.buf = bytearray()
        self.result = result
        self.sent_at = sent_at

    def feed(self, audio: bytes, now: float) -> None:
        buf = self.buf
        buf += audio
        while len(buf) >= FRAME_BYTES:
            if buf[:4] != MAGIC:
                i = buf.find(MAGIC, 1)
                skip = i if i > 0 else len(buf) - 3
                self.result.unmarked_bytes += skip
                del buf[:skip]
                continue
            call, seq = struct.unpack_from(">HI", buf, 4)
            del buf[:FRAME_BYTES]
            if call != self.result.index or seq >= len(self.sent_at):
                self.result.unmarked_bytes += FRAME_BYTES
                continue
            rtts = self.result.rtt_ms
            if not math.isnan(rtts[seq]):
                self.result.duplicated += 1
            else:
                rtts[seq] = (now - self.sent_at[seq]) * 1000.0


async def _twiml(gateway_url: str) -> tuple[str, dict[str, str]]:
    from switchboard.caller.client import fetch_twiml

    return await fetch_twiml(gateway_url, from_="+15550100000", to="+15550199999",
                             call_sid="CA" + secrets.token_hex(16))


def _start_message(stream_sid: str, call_sid: str, params: dict[str, str]) -> str:
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": {
        "accountSid": "AC" + "0" * 32, "streamSid": stream_sid, "callSid": call_sid, "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": params}})


async def _one_call(index: int, *, gateway_url: str | None, ws_url: str | None, seconds: float, delay: float,
                    drain_s: float, params: dict[str, str], echo_marks: bool = True) -> CallResult:
    n = round(seconds / FRAME_S)
    result = CallResult(index, rtt_ms=[math.nan] * n)
    sent_at = [0.0] * n
    asm = _Reassembler(result, sent_at)
    await asyncio.sleep(delay)
    try:
        if gateway_url is not None:
            url, twiml_params = await _twiml(gateway_url)
            params = {**twiml_params, **params}
        else:
            assert ws_url is not None
            url = ws_url
        ws = await websockets.connect(url, compression=None, max_size=2**22)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    stream_sid = "MZ" + secrets.token_hex(16)
    sid_json = json.dumps(stream_sid)
    loop_time = time.monotonic

    async def reader() -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                msg = json.loads(raw)
                kind = msg.get("event")
                if kind == "media":
                    result.media_messages += 1
                    asm.feed(b64decode(msg["media"]["payload"]), loop_time())
                elif kind == "mark" and echo_marks:
                    await ws.send('{"event":"mark","streamSid":' + sid_json + ',"mark":{"name":'
                                  + json.dumps(msg["mark"]["name"]) + "}}")
                elif kind == "clear":
                    result.clears += 1

    await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    await ws.send(_start_message(stream_sid, "CA" + secrets.token_hex(16), params))
    read_task = asyncio.create_task(reader())
    prefix = '{"event":"media","sequenceNumber":"%d","streamSid":' + sid_json + \
        ',"media":{"track":"inbound","chunk":"%d","timestamp":"%d","payload":"'
    try:
        start = loop_time()
        for i in range(n):
            if read_task.done():
                result.error = result.error or "closed by the server"
                break
            payload = b64encode(frame(index, i)).decode()
            sent_at[i] = loop_time()
            await ws.send(prefix % (i + 2, i + 1, 20 * i) + payload + '"}}')
            result.sent += 1
            await asyncio.sleep(max(0.0, start + (i + 1) * FRAME_S - loop_time()))
        drain_until = loop_time() + drain_s
        while loop_time() < drain_until and result.returned < result.sent and not read_task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send('{"event":"stop","sequenceNumber":"0","streamSid":' + sid_json + ',"stop":{}}')
    except (websockets.ConnectionClosed, OSError) as exc:
        result.error = result.error or f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            await ws.close()
        read_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await read_task
    return result


async def run_calls(calls: int, seconds: float, *, gateway_url: str | None = None, ws_url: str | None = None,
                    stagger_s: float = 0.05, drain_s: float = 10.0, params: dict[str, str] | None = None,
                    echo_marks: bool = True) -> list[CallResult]:
    """Place ``calls`` concurrent calls of ``seconds`` s each, started ``stagger_s`` apart.

    ``gateway_url`` set: each call first POSTs the voice webhook (``/twilio/voice``) and opens the stream URL
    from the TwiML, with the TwiML's parameters plus ``params`` as ``customParameters``; else it opens
    ``ws_url`` directly. ``echo_marks=False`` (a diagnostic, not Twilio's behaviour) leaves marks unanswered.
    Returns one :class:`CallResult` per call, in call order.
    """
    return list(await asyncio.gather(*(
        _one_call(i, gateway_url=gateway_url, ws_url=ws_url, seconds=seconds, delay=i * stagger_s,
                  drain_s=drain_s, params=dict(params or {}), echo_marks=echo_marks) for i in range(calls))))
