"""Stereo recordings of a call from its archived events: caller left, agent right, on the call's timeline.

- The timeline is media time: until caller audio flows, wall-clock time from the call's start; from then on
  the caller audio itself is the clock (the carrier sends it continuously in real time): an event's position
  is the caller audio written before it, plus any idle time beyond :data:`GAP_TOLERANCE_MS` since the last
  caller frame (the carrier stopped sending). Jitter and faster-than-real-time test runs do not skew it.
- Caller audio = the ``input_audio_buffer.append`` client events (base64 ``audio`` in the session's input
  format), laid end to end.
- Agent audio = the ``response.output_audio.delta`` server events (base64 ``delta``) and the audio the session
  plays itself (``call.<id>.command.play`` ``audio``: the disclosure), played as the carrier plays them:
  queued one after the other, each starting no earlier than the media time it arrived at.
- Interruptions cut agent audio where the caller interrupted
  (https://platform.openai.com/docs/guides/realtime-conversations): an item's audio stops at
  ``conversation.item.truncate.audio_end_ms`` (what the caller actually heard), else at the ``played_bytes`` of
  a ``call.<id>.carrier.mark`` echoed with ``cleared: true``; and a ``call.<id>.command.clear`` drops whatever
  was still queued after the moment it was sent; ``call.<id>.ended`` likewise ends the agent channel (audio
  the model sent after the caller hung up never played).

Both channels are PCM16 at the caller's input rate (8 kHz for μ-law/A-law calls, 24 kHz for PCM calls);
agent audio in another format is converted with :class:`shared.audio.Converter`.

A recording is a projection of the archive, not a file that can be lost: :func:`cached_wav` serves the cached
``<call id>.wav`` (``SWITCHBOARD_RECORDINGS_DIR``, a PersistentVolumeClaim on Kubernetes) and renders it again
from the archived events when the file is missing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import tempfile
import wave
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.recorder.records import ArchivedEvent
from shared import audio
from shared.contracts import CallStarted, CarrierMark, ContractError
from shared.fencing import OwnerFence

__all__ = ["GAP_TOLERANCE_MS", "EventLoader", "ItemPlayout", "Timeline", "cached_wav", "call_formats", "format_name",
           "render", "render_wav", "write_wav"]

log = logging.getLogger("switchboard.recorder.recording")

GAP_TOLERANCE_MS = 120.0
"""Caller frames arriving later than this after the previous frame's end start a silent gap (ms)."""


@dataclass(slots=True)
class ItemPlayout:
    """When an assistant audio item played: ms from call start, bytes played (output format) and total."""

    item_id: str
    start_ms: float
    end_ms: float
    played_bytes: int = 0
    total_bytes: int = 0
    interrupted: bool = False


@dataclass(slots=True)
class Timeline:
    """A rendered call: ``rate`` Hz, ``caller`` and ``agent`` int16 sample arrays of equal length."""

    t0_ns: int
    rate: int
    caller: npt.NDArray[np.int16]
    agent: npt.NDArray[np.int16]
    items: dict[str, ItemPlayout] = field(default_factory=dict)
    caller_start_ms: float | None = None
    """When the first caller frame was published (ms from call start); the Realtime ``audio_start_ms`` /
    ``audio_end_ms`` of VAD events count from here."""

    @property
    def duration_ms(self) -> float:
        """Length of the recording in ms."""
        return len(self.caller) * 1000.0 / self.rate


def format_name(value: Any) -> str | None:
    """A Realtime GA format object (``{"type": "audio/pcmu"}``, ``{"type": "audio/pcm", "rate": 24000}``) or
    name as the ``shared.audio`` name (``audio/pcmu``, ``audio/pcm;rate=24000``); None when unrecognised."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        kind = value.get("type")
        if kind in ("audio/pcmu", "audio/pcma"):
            return str(kind)
        if kind == "audio/pcm":
            return f"audio/pcm;rate={int(value.get('rate') or 24000)}"
    return None


def _parse(name: str | None, default: audio.AudioFormat) -> audio.AudioFormat:
    if name is None:
        return default
    try:
        return audio.parse_format(name)
    except ValueError:
        return default


def call_formats(events: Sequence[ArchivedEvent]) -> tuple[audio.AudioFormat, audio.AudioFormat]:
    """``(input, output)`` audio formats of a call: the session's last ``session.update`` before audio, else
    ``call.<id>.started.audio_format``, else μ-law."""
    started: str | None = None
    in_name: str | None = None
    out_name: str | None = None
    for ev in events:
        if ev.direction is None and ev.type == "started":
            with contextlib.suppress(ContractError):
                started = CallStarted.parse(ev.body).audio_format
        elif ev.direction == "client" and ev.type == "session.update":
            session = (ev.json() or {}).get("session") or {}
            aud = session.get("audio") if isinstance(session, dict) else None
            if isinstance(aud, dict):
                in_name = format_name((aud.get("input") or {}).get("format")) or in_name
                out_name = format_name((aud.get("output") or {}).get("format")) or out_name
    base = _parse(started, audio.parse_format(audio.PCMU))
    return _parse(in_name, base), _parse(out_name, _parse(in_name, base))


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        return b""
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError):
        return b""


class _Track:
    """A growable int16 track with a play cursor (samples)."""

    def __init__(self) -> None:
        self.data = np.zeros(0, dtype=np.int16)
        self.cursor = 0

    def write(self, at: int, samples: npt.NDArray[np.int16]) -> None:
        end = at + len(samples)
        if end > len(self.data):
            grown = np.zeros(max(end, len(self.data) * 2), dtype=np.int16)
            grown[: len(self.data)] = self.data
            self.data = grown
        self.data[at:end] = samples
        self.cursor = end

    def cut(self, at: int) -> None:
        if at < self.cursor:
            self.data[at:self.cursor] = 0
            self.cursor = at


def _allowances(events: Sequence[ArchivedEvent], out_fmt: audio.AudioFormat) -> dict[str, int]:
    """Bytes of each interrupted assistant item the caller actually heard."""
    allow: dict[str, int] = {}
    for ev in events:
        body = ev.json()
        if body is None:
            continue
        if ev.direction == "client" and ev.type == "conversation.item.truncate":
            item, end_ms = body.get("item_id"), body.get("audio_end_ms")
            if isinstance(item, str) and isinstance(end_ms, int | float):
                allow[item] = min(allow.get(item, 1 << 62), audio.bytes_for_ms(out_fmt, float(end_ms)))
        elif ev.direction is None and ev.type == "carrier.mark":
            try:
                mark = CarrierMark.parse(body)
            except ContractError:
                continue
            if mark.cleared and mark.item_id is not None and mark.item_id not in allow:
                allow[mark.item_id] = mark.played_bytes
    return allow


def render(events: Sequence[ArchivedEvent], t0_ns: int | None = None) -> Timeline:
    """Lay the call's audio on its timeline (see the module docstring); ``events`` in any order.

    ``t0_ns`` (unix ns) is the call's start; default the ``call.<id>.started`` event, else the first event.
    Undecodable audio (bad base64) is skipped, and so are agent audio and commands of a stale owner epoch
    (:class:`~shared.fencing.OwnerFence`: the gateway dropped them, the caller never heard them).
    Caller audio has its own fence: during a handover both owners append the same live audio until the old one
    stops, and once the new owner's first append is seen only its appends are laid down (once, not twice).
    """
    ordered = sorted(events, key=lambda e: (e.time_ns, e.stream, e.stream_seq))
    in_fmt, out_fmt = call_formats(ordered)
    rate = in_fmt.rate
    if t0_ns is None:
        starts = [e.time_ns for e in ordered if e.direction is None and e.type == "started"]
        t0_ns = starts[0] if starts else (ordered[0].time_ns if ordered else 0)
    allow = _allowances(ordered, out_fmt)
    caller, agent = _Track(), _Track()
    converter = audio.Converter(out_fmt, audio.AudioFormat(f"audio/pcm;rate={rate}", "pcm", rate, 2))
    items: dict[str, ItemPlayout] = {}
    caller_start: float | None = None
    gap = GAP_TOLERANCE_MS * rate / 1000
    last_append_ns: int | None = None
    fence, caller_fence = OwnerFence(), OwnerFence()

    def position(ev: ArchivedEvent) -> int:
        """Media time of ``ev`` in samples: wall clock from t0 until caller audio flows, then the caller
        audio written so far (plus any idle time beyond the gap tolerance)."""
        if last_append_ns is None:
            return max(0, int((ev.time_ns - t0_ns) * rate // 1_000_000_000))
        idle = (ev.time_ns - last_append_ns) * rate / 1e9
        return caller.cursor + (int(idle - gap) if idle > gap else 0)

    for ev in ordered:
        if ev.direction == "client" and ev.type == "input_audio_buffer.append":
            if not caller_fence.current(ev.headers):
                continue
            samples = audio.decode(in_fmt, _b64((ev.json() or {}).get("audio")))
            if len(samples) == 0:
                continue
            start = position(ev)
            if caller_start is None:
                caller_start = start * 1000.0 / rate
            caller.write(start, samples)
            last_append_ns = ev.time_ns
        elif (ev.direction == "server" and ev.type == "response.output_audio.delta") or (
                ev.direction is None and ev.type == "command.play"):
            if not fence.current(ev.headers):
                continue
            body = ev.json() or {}
            item_id = str(body.get("item_id") or "play")
            raw = _b64(body.get("delta") if ev.direction else body.get("audio"))
            if ev.direction is None and body.get("audio_format") not in (None, out_fmt.name):
                continue  # session-played audio (the disclosure) is in the call's own format
            play = items.get(item_id)
            if play is None:
                play = items[item_id] = ItemPlayout(item_id, -1.0, -1.0)
            play.total_bytes += len(raw)
            limit = allow.get(item_id)
            if limit is not None:
                keep = max(0, min(len(raw), limit - play.played_bytes))
                keep -= keep % out_fmt.sample_bytes
                if keep < len(raw):
                    play.interrupted = True
                raw = raw[:keep]
            if not raw:
                continue
            play.played_bytes += len(raw)
            pcm = audio.pcm16_from_bytes(converter.convert(raw))
            start = max(agent.cursor, position(ev))
            if play.start_ms < 0:
                play.start_ms = start * 1000.0 / rate
            agent.write(start, pcm)
            play.end_ms = agent.cursor * 1000.0 / rate
        elif ev.direction is None and ev.type in ("command.clear", "ended"):
            if not fence.current(ev.headers):
                continue
            at = position(ev)
            if agent.cursor > at:
                agent.cut(at)
                for play in items.values():
                    if play.end_ms * rate / 1000.0 > at:
                        play.interrupted = True
                        play.end_ms = max(play.start_ms, at * 1000.0 / rate)
            if ev.type == "ended":
                break
    if fence.ignored:
        log.info("call %s: %d agent audio/command events of a stale owner epoch left out of the recording",
                 ordered[0].call_id, fence.ignored)
    length = max(caller.cursor, agent.cursor, len(caller.data[:caller.cursor]))
    left = np.zeros(length, dtype=np.int16)
    right = np.zeros(length, dtype=np.int16)
    left[: caller.cursor] = caller.data[: caller.cursor]
    right[: agent.cursor] = agent.data[: agent.cursor]
    return Timeline(t0_ns, rate, left, right, items, caller_start)


def write_wav(path: Path, timeline: Timeline) -> Path:
    """Write ``timeline`` as a 16-bit stereo WAV (left = caller, right = agent) atomically; returns ``path``.

    The file is written under a unique temporary name in the same directory and renamed over ``path``, so
    concurrent writers (the finalizer and an API request re-rendering the cache) never expose a partial file.

    Raises:
        OSError: the file cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.column_stack((timeline.caller, timeline.agent)).astype("<i2").tobytes()
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".wav.tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as raw, wave.open(raw, "wb") as out:
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(timeline.rate)
            out.writeframes(frames)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def render_wav(path: Path, events: Sequence[ArchivedEvent]) -> Path | None:
    """Render the call's ``events`` (:func:`render`) and write them to ``path`` (:func:`write_wav`); None, and
    no file, when the call has no caller audio.

    Raises:
        OSError: the file cannot be written.
    """
    timeline = render(events)
    if not len(timeline.caller):
        return None
    return write_wav(path, timeline)


EventLoader = Callable[[], Awaitable[Sequence[ArchivedEvent]]]
"""Returns one call's archived events (e.g. ``lambda: queries.call_events(engine, call_id)``)."""


async def cached_wav(path: Path, load_events: EventLoader) -> Path | None:
    """The recording cached at ``path``; when the file is missing it is rendered again from ``load_events()``
    (the same rendering as the finalizer's, so the audio is identical) and cached there. None when the call
    has no caller audio. Rendering and file I/O run in a worker thread.

    Raises:
        OSError: the cache directory cannot be written.
    """
    if await asyncio.to_thread(path.is_file):
        return path
    events = await load_events()
    return await asyncio.to_thread(render_wav, path, events)
