"""The caller's side of one call's session: carrier audio, playback marks and keypad digits from the gateway.

Subjects handled (subscribed by :meth:`services.session.call.Call.run`):

- ``call.<id>.audio.in``: raw carrier audio → batched ``input_audio_buffer.append``
  (https://platform.openai.com/docs/api-reference/realtime-client-events/input_audio_buffer/append), held while
  the disclosure plays, withheld while a keypad capture is in force (docs/compliance.md);
- ``call.<id>.carrier.mark``: the gateway's playback position (:class:`~shared.contracts.CarrierMark`) → the
  :class:`~services.session.bargein.PlaybackTracker`;
- ``call.<id>.carrier.dtmf`` and ``call.<id>.keypad``: a digit → the keypad capture, else the model as a user text
  item ``DTMF <digit>``;
- ``call.<id>.carrier.amd``: the carrier's answering-machine verdict of an outbound call; a machine (or fax) → the
  model as a system item (:data:`MACHINE_NOTE`), so the agent's instructions can leave a message or end the call;
- ``call.<id>.carrier.detached`` / ``carrier.resumed``: the carrier stream moved to another gateway. After a
  detach (a draining gateway let go at a quiet moment) nothing was lost. A resume without one means the gateway
  died with the stream open: what the caller was saying at that moment never reached the bus, so when the model
  had heard speech start, the truncated utterance is dropped from its input buffer (``input_audio_buffer.clear``,
  https://platform.openai.com/docs/api-reference/realtime-client-events/input_audio_buffer/clear) and the agent
  asks the caller to say it again, instead of acting on half a sentence.

After a takeover from a crashed owner, live audio is dropped until the gateway's replay (header
``Switchboard-Replay``) arrives: the replay re-sends it, in order, from the offset the log shows appended
(docs/operations.md, "Rollouts and crashes"). The gateway keeps only the last few seconds: when the replay starts
later than asked (at least :data:`MISSED_MIN_MS` of the caller's audio is gone), the agent asks the caller to say it
again instead of both sides waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from shared.bus import Envelope, Headers
from shared.contracts import CarrierAmd, CarrierDtmf, CarrierMark, CarrierResumed, ContractError

from .audio import AudioBatcher
from .bargein import PlaybackTracker
from .capture import KeypadCapture
from .disclosure import Disclosure
from .model import ModelClosedError

__all__ = ["MACHINE_NOTE", "MISSED_MIN_MS", "REPEAT_LINE", "CallerInput"]

REPEAT_LINE = "Sorry, I missed what you just said. Could you say it again?"
"""What the agent says after a takeover when caller audio was lost, unless it already said a recovery line."""

MISSED_MIN_MS = 300
"""Caller audio (ms) lost before a takeover's replay that makes the agent ask the caller to repeat."""

MACHINE_NOTE = "Answering-machine detection: this call was answered by a machine ({answered_by}), not a person."
"""The system item the model gets when the carrier detected a machine (``answered_by``: the carrier's verdict)."""

log = logging.getLogger(__name__)

Spawn = Callable[[Awaitable[Any]], "asyncio.Task[Any]"]


class CallerInput:
    """What reaches one call's session from the caller (see the module docstring).

    Args:
        call_id: the call (for log lines).
        audio: the batcher that turns ``audio.in`` frames into append-sized chunks.
        playback: the tracker fed by mark echoes.
        disclosure: the call's disclosure (gates audio and digits until it is over).
        keypad: the call's keypad capture (takes digits and withholds audio while active).
        send_append: sends one chunk as ``input_audio_buffer.append``; raises
            :class:`~services.session.model.ModelClosedError` when the model session is not usable.
        say: gives the model a user item and asks for a response (waits for the disclosure and the model).
        spawn: runs a coroutine as one of the call's tasks.
        await_replay: True after a takeover from a crashed owner (live audio waits for the gateway's replay).
        bytes_per_ms: of the call's audio format.
        ask_again: asks the caller to repeat (the replay lost some of what they said).
        clear_input: drops the model's uncommitted input audio (``input_audio_buffer.clear``).
    """

    def __init__(self, call_id: str, *, audio: AudioBatcher, playback: PlaybackTracker, disclosure: Disclosure,
                 keypad: KeypadCapture, send_append: Callable[[bytes], Awaitable[None]],
                 say: Callable[[dict[str, Any]], Awaitable[None]], spawn: Spawn, await_replay: bool,
                 bytes_per_ms: float, ask_again: Callable[[], Awaitable[None]],
                 clear_input: Callable[[], Awaitable[None]]) -> None:
        self.call_id = call_id
        self.bytes_per_ms = bytes_per_ms
        self._ask_again = ask_again
        self.replay_from: int | None = None
        """The offset (bytes of ``audio.in``) a takeover asked the gateway to replay from."""
        self.audio = audio
        self.playback = playback
        self.disclosure = disclosure
        self.keypad = keypad
        self._send_append = send_append
        self._say = say
        self._spawn = spawn
        self.await_replay = await_replay
        self.last_audio = time.monotonic()
        """``time.monotonic()`` of the last ``audio.in`` message (the carrier watchdog reads it)."""
        self._clear_input = clear_input
        self.speaking = False
        """The model heard the caller start speaking and has not yet heard them stop (its server VAD events)."""
        self._detached = False

    async def on_audio(self, env: Envelope) -> None:
        """``call.<id>.audio.in`` (raw carrier audio in the call's format) → ``input_audio_buffer.append``."""
        self.last_audio = time.monotonic()
        if self.await_replay:
            offset = env.headers.get(Headers.REPLAY)
            if offset is None:
                return
            self.await_replay = False
            self._check_replay(offset)
        if not env.data:
            return
        if not self.disclosure.done.is_set() and self.disclosure.gate_recording:
            self.disclosure.withheld_bytes += len(env.data)  # not heard, not logged, not archived
            return
        if self.keypad.active:
            self.keypad.withheld_bytes += len(env.data)  # a card number read aloud never reaches the model
            return
        chunk = self.audio.push(env.data)  # held while the disclosure plays (audio.ready is False)
        if chunk is None:
            return
        try:
            await self._send_append(chunk)
        except ModelClosedError:
            self.audio.ready = False
            self.audio.requeue(chunk)

    async def on_detached(self, _env: Envelope) -> None:
        """``call.<id>.carrier.detached``: the gateway let the stream go after publishing all it received."""
        self._detached = True

    async def on_resumed(self, env: Envelope) -> None:
        """``call.<id>.carrier.resumed``: after a resume with no detach before it, a truncated utterance is dropped
        and the caller asked to repeat (see the module docstring)."""
        clean, self._detached = self._detached, False
        try:
            gap_ms = CarrierResumed.parse(env.data).gap_ms
        except ContractError as exc:
            log.warning("call %s: malformed carrier.resumed (%s); treated as a broken stream", self.call_id, exc)
            gap_ms = None
        if clean or not self.speaking:
            return
        log.warning("call %s: the carrier stream broke while the caller spoke (gap %s ms); asking again",
                    self.call_id, gap_ms)
        self.speaking = False
        with contextlib.suppress(ModelClosedError):
            await self._clear_input()
        self._spawn(self._ask_again())

    async def watch_silence(self, limit_s: float, ended: asyncio.Event,
                            end: Callable[[str], Awaitable[None]]) -> None:
        """Until ``ended``: end the call with ``carrier_silent`` when no ``audio.in`` arrived for ``limit_s``
        seconds (the carrier or the gateway is gone; carriers send audio, silence included, all call long)."""
        while not ended.is_set():
            await asyncio.sleep(min(5.0, limit_s / 4))
            if time.monotonic() - self.last_audio > limit_s:
                log.warning("call %s: no carrier audio for %.0fs, ending", self.call_id, limit_s)
                await end("carrier_silent")

    async def replay_offset(self, appended_in_log: int, wait_s: float) -> int:
        """The offset to replay from after a takeover: caller audio bytes the previous owner consumed, by the log
        (``appended_in_log``: appended to the model), plus what its disclosure withheld (``gate_recording``; the
        disclosure record of the earlier session, awaited at most ``wait_s`` seconds). Remembered for the check
        of the replay's first chunk."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.disclosure.prior_checked.wait(), wait_s)
        record = self.disclosure.record
        self.replay_from = appended_in_log + (record.withheld_bytes if record is not None else 0)
        return self.replay_from

    def _check_replay(self, offset: str) -> None:
        """The replay's first chunk starts at ``offset``: audio before it (since :attr:`replay_from`) is gone."""
        lost = int(offset) - self.replay_from if offset.isdigit() and self.replay_from is not None else 0
        if lost >= MISSED_MIN_MS * self.bytes_per_ms:
            log.warning("call %s: %.1f s of caller audio was lost before the takeover; asking again", self.call_id,
                        lost / self.bytes_per_ms / 1000)
            self._spawn(self._ask_again())

    async def stop_awaiting_replay(self, after_s: float) -> None:
        """No replay within ``after_s`` seconds (an older gateway, or the carrier reconnected elsewhere): take
        live audio."""
        await asyncio.sleep(after_s)
        if self.await_replay:
            log.warning("call %s: no caller audio replay from the gateway; taking live audio", self.call_id)
            self.await_replay = False

    async def on_mark(self, env: Envelope) -> None:
        """``call.<id>.carrier.mark`` (:class:`~shared.contracts.CarrierMark`); echoes of no item are ignored."""
        try:
            mark = CarrierMark.parse(env.data)
        except ContractError as exc:
            log.warning("call %s: ignoring malformed mark echo: %s", self.call_id, exc)
            return
        if mark.item_id is not None:
            await self.playback.on_mark(mark.item_id, mark.played_bytes, mark.cleared)

    async def on_digit(self, env: Envelope) -> None:
        """``call.<id>.carrier.dtmf`` or ``call.<id>.keypad`` (:class:`~shared.contracts.CarrierDtmf`).

        A digit goes to the keypad capture when one is in force (a digit pressed just before the gateway switched
        to ``call.<id>.keypad`` arrives as ``carrier.dtmf``), else to the model as ``DTMF <digit>``; ignored while
        a gated disclosure plays (docs/compliance.md, "Disclosure")."""
        try:
            digit = CarrierDtmf.parse(env.data).digit
        except ContractError as exc:
            log.warning("call %s: ignoring a malformed keypad digit on %s: %s", self.call_id, env.subject, exc)
            return
        if not self.disclosure.done.is_set() and self.disclosure.gate_recording:
            return
        if self.keypad.active:
            self._spawn(self.keypad.press(digit))
        else:
            self._spawn(self._say({"type": "message", "role": "user",
                                   "content": [{"type": "input_text", "text": f"DTMF {digit}"}]}))

    async def on_amd(self, env: Envelope) -> None:
        """``call.<id>.carrier.amd`` (:class:`~shared.contracts.CarrierAmd`): a machine or fax (``human`` false) →
        :data:`MACHINE_NOTE` to the model as a system item, with a response; a person or an unsure verdict changes
        nothing (the conversation is already going)."""
        try:
            amd = CarrierAmd.parse(env.data)
        except ContractError as exc:
            log.warning("call %s: ignoring a malformed AMD result: %s", self.call_id, exc)
            return
        log.info("call %s: answering-machine detection: %s", self.call_id, amd.answered_by)
        if amd.human is False:
            self._spawn(self._say({"type": "message", "role": "system", "content": [
                {"type": "input_text", "text": MACHINE_NOTE.format(answered_by=amd.answered_by)}]}))
