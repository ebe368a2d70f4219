"""The agent's disclosure, played first on every call, with proof of playback (docs/compliance.md).

When the agent spec declares ``disclosure`` (:class:`~services.session.agent.DisclosureSpec`), the session:

1. synthesises the exact text with espeak-ng in the call's ``audio_format`` (:mod:`shared.tts`) — the model is
   not asked to say it, so the words cannot be paraphrased;
2. publishes it as ``call.<id>.command.play`` messages (``{audio, audio_format, item_id}``, ``chunk_ms`` of audio
   each, one ``item_id`` for the whole disclosure) as soon as the call starts, before the model is even
   connected. The gateway queues them like model audio and sends a carrier mark after each chunk
   (Twilio ``mark``, protocols.md §3.2), whose echo arrives on ``call.<id>.carrier.mark`` with the cumulative
   ``played_bytes`` of the item;
3. waits until the marks confirm every byte played (:class:`~services.session.bargein.PlaybackTracker`), the
   call ends, or ``audio length + confirm_grace_s`` passes;
4. publishes ``call.<id>.session.disclosure`` (:class:`DisclosureRecord`): ``completed`` (all audio confirmed
   played), ``interrupted`` (the call ended first; ``played_ms`` says how much the caller heard),
   ``unconfirmed`` (the carrier never confirmed within the grace period) or ``failed`` (synthesis failed).

Until :attr:`Disclosure.done` is set the call does not listen: caller audio and keypad digits are not forwarded
to the model (so nothing of the caller is logged, archived or transcribed) and the greeting waits. With
``gate_recording`` (the default) what the caller sends meanwhile is discarded; without it, it is held and
forwarded afterwards. The session is where the gate sits — the recorder archives whatever the streams hold,
so its "nothing acknowledged is lost" guarantee is untouched.

A session that takes over a call finds the record already in the CALLS stream and does not play it again.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import nats.errors

from shared import subjects
from shared.audio import parse_format
from shared.bus import Bus
from shared.contracts import CommandPlay, Contract, SessionDisclosure
from shared.tts import SynthesisError, synthesize_format_async

from .agent import DisclosureSpec
from .bargein import PlaybackTracker

__all__ = ["Disclosure", "DisclosureRecord", "DisclosureStatus"]

log = logging.getLogger(__name__)

DisclosureStatus = Literal["completed", "interrupted", "unconfirmed", "failed"]

Command = Callable[[str, Contract], Awaitable[None]]
"""``command(verb, payload)``: publishes ``call.<id>.command.<verb>``."""
Publish = Callable[[str, Contract], Awaitable[None]]
"""``publish(subject, payload)``: publishes a call event (JetStream, in the call's order)."""


@dataclass(frozen=True)
class DisclosureRecord:
    """The ``call.<id>.session.disclosure`` payload.

    Attributes:
        call_id: the call.
        status: see :data:`DisclosureStatus` and the module docstring.
        text: the words played.
        item_id: the ``item_id`` of the ``command.play`` messages and of their carrier marks.
        audio_format: format of the audio played (the call's ``audio_format``).
        audio_bytes / audio_ms: length of the synthesised disclosure.
        played_bytes / played_ms: audio the carrier confirmed played (marks); the span is
            ``[0, played_ms)`` of the disclosure audio.
        started_at: unix seconds when the first ``command.play`` was published (None: nothing was played).
        finished_at: unix seconds when the status was decided.
        gate_recording: the spec's option in force for this call.
        withheld_bytes: caller audio (``audio.in`` bytes) discarded until the status was decided
            (``gate_recording``); part of the replay offset of a session that takes the call over.
    """

    call_id: str
    status: DisclosureStatus
    text: str
    item_id: str
    audio_format: str
    audio_bytes: int
    audio_ms: int
    played_bytes: int
    played_ms: int
    started_at: float | None
    finished_at: float
    gate_recording: bool
    withheld_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON payload."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> DisclosureRecord:
        """Parse a payload.

        Raises:
            ValueError: not an object, a missing field or an unknown status.
        """
        if not isinstance(data, dict):
            raise ValueError("disclosure record must be a JSON object")
        if data.get("status") not in get_args(DisclosureStatus):
            raise ValueError(f"unknown disclosure status {data.get('status')!r}")
        try:
            started = data.get("started_at")
            return cls(str(data["call_id"]), data["status"], str(data["text"]), str(data["item_id"]),
                       str(data["audio_format"]), int(data["audio_bytes"]), int(data["audio_ms"]),
                       int(data["played_bytes"]), int(data["played_ms"]),
                       float(started) if started is not None else None, float(data["finished_at"]),
                       bool(data["gate_recording"]), int(data.get("withheld_bytes") or 0))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"disclosure record is missing or mistypes {exc}") from None


class Disclosure:
    """Plays one call's disclosure and decides its status (see the module docstring).

    Args:
        spec: the agent's disclosure (None: the agent has none; :attr:`done` is set at once).
        bus: the session's bus (to find a record a previous session of this call already logged).
        call_id: the call.
        audio_format: the call's ``audio_format`` (the carrier's, on the bus).
        playback: the call's playback tracker, fed with the call's mark echoes.
        command: publishes ``call.<id>.command.<verb>``.
        publish: publishes a call event.
        chunk_ms: audio per ``command.play`` (one mark each; the resolution of ``played_ms`` on a hang-up).
        confirm_grace_s: how long after the audio's own length the marks may take before ``unconfirmed``.
    """

    def __init__(self, spec: DisclosureSpec | None, *, bus: Bus, call_id: str, audio_format: str,
                 playback: PlaybackTracker, command: Command, publish: Publish, chunk_ms: int = 500,
                 confirm_grace_s: float = 10.0) -> None:
        if chunk_ms < 20 or confirm_grace_s < 0:
            raise ValueError("chunk_ms must be ≥ 20 and confirm_grace_s ≥ 0")
        self.spec = spec
        self.bus = bus
        self.call_id = call_id
        self.audio_format = audio_format
        self.playback = playback
        self.command = command
        self.publish = publish
        self.chunk_ms = chunk_ms
        self.confirm_grace_s = confirm_grace_s
        self.item_id = f"disclosure_{call_id}"
        self.done = asyncio.Event()
        """Set once the call may listen: the status is decided (or there is no disclosure)."""
        self.prior_checked = asyncio.Event()
        """Set once the log was searched for a record of an earlier session of this call (or there is no
        disclosure): :attr:`record` then holds that record when there was one."""
        self.record: DisclosureRecord | None = None
        self.withheld_bytes = 0
        """Caller audio discarded while the disclosure played (``gate_recording``)."""
        self._bytes_per_ms = parse_format(audio_format).bytes_per_ms
        self._audio_bytes = 0
        self._started_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        if spec is None:
            self.done.set()
            self.prior_checked.set()

    @property
    def gate_recording(self) -> bool:
        """Caller input is discarded (not held) until :attr:`done`."""
        return self.spec is not None and self.spec.gate_recording

    def start(self) -> None:
        """Start playing (in a task of its own); nothing happens without a disclosure."""
        if self.spec is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"disclosure-{self.call_id}")

    async def close(self) -> DisclosureRecord | None:
        """The call ended: a disclosure still playing is recorded (and published) as ``interrupted``."""
        self._closing = True
        task = self._task
        if task is not None and not task.done():
            if self.record is None:
                task.cancel()  # still playing; a decided record is only being published: let it finish
            await asyncio.wait({task}, timeout=5.0)
        if self.spec is not None and self.record is None:
            await self._finish("interrupted")
        self.done.set()
        return self.record

    async def _run(self) -> None:
        assert self.spec is not None
        try:
            prior = await self._prior()
            self.prior_checked.set()
            if prior is not None:
                self.record = prior
                log.info("call %s: disclosure already %s in an earlier session", self.call_id, prior.status)
                return
            try:
                audio = await synthesize_format_async(self.spec.text, self.audio_format, self.spec.voice,
                                                      self.spec.rate_wpm)
            except (SynthesisError, ValueError) as exc:
                log.error("call %s: the disclosure could not be synthesised: %s", self.call_id, exc)
                await self._finish("failed")
                return
            self._audio_bytes = len(audio)
            self.playback.expect(self.item_id, len(audio))
            self._started_at = time.time()
            step = max(1, int(self._bytes_per_ms * self.chunk_ms))
            for i in range(0, len(audio), step):
                if self._closing:
                    return
                await self.command("play", CommandPlay(audio=base64.b64encode(audio[i:i + step]).decode("ascii"),
                                                       audio_format=self.audio_format, item_id=self.item_id))
            limit = len(audio) / self._bytes_per_ms / 1000 + self.confirm_grace_s
            await self.playback.wait_played([self.item_id], limit)
            await self._finish("completed" if self._played_bytes() >= len(audio) else "unconfirmed")
        finally:
            self.prior_checked.set()
            self.done.set()

    async def _prior(self) -> DisclosureRecord | None:
        try:
            env = await self.bus.last_message(subjects.CALLS_STREAM, subjects.session_disclosure(self.call_id))
            return DisclosureRecord.from_dict(env.json()) if env is not None else None
        except (nats.errors.Error, TimeoutError, ValueError) as exc:
            log.warning("call %s: could not look for an earlier disclosure (%s); playing it", self.call_id, exc)
            return None

    def _played_bytes(self) -> int:
        item = self.playback.items.get(self.item_id)
        return min(item.played, item.received) if item is not None else 0

    async def _finish(self, status: DisclosureStatus) -> None:
        """Decide the status once: a second decision (a play task that outlived :meth:`close`) is ignored."""
        assert self.spec is not None
        if self.record is not None:
            return
        played = self._played_bytes()
        self.record = DisclosureRecord(
            self.call_id, status, self.spec.text, self.item_id, self.audio_format, self._audio_bytes,
            int(self._audio_bytes / self._bytes_per_ms), played, int(played / self._bytes_per_ms),
            self._started_at, time.time(), self.spec.gate_recording, self.withheld_bytes)
        if status != "completed":
            log.warning("call %s: disclosure %s (%d of %d ms confirmed played)", self.call_id, status,
                        self.record.played_ms, self.record.audio_ms)
        await self.publish(subjects.session_disclosure(self.call_id), SessionDisclosure(**self.record.to_dict()))
