"""Following a simulated call on the bus: find its call id, print what the agent says, know when a turn ends.

The simulator starts Twilio's stream with a fresh ``run_id`` custom parameter; the gateway copies it into
``call.<id>.started``.custom_parameters, which is how :class:`CallFollower` learns the call id (docs/gateway.md,
"Caller simulator"). It then follows ``rt.<id>.>`` (every Realtime event the session sent and received)
and ``call.<id>.ended`` from the RT and CALLS streams (ordered consumers: nothing the log stored is missed
across a NATS reconnect).

A turn of the agent is finished when a ``response.done`` arrived since the caller's last line, no response
is in progress (``response.created`` without its ``response.done``), none is pending (a client
``response.create`` not yet answered by ``response.created``), no function call awaits its follow-up
response (a ``function_call`` item done → keep waiting until the next ``response.created``), and — checked
by the simulator — all agent audio received has been played on its own clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any

from nats.aio.subscription import Subscription

from shared import subjects
from shared.bus import Bus, Envelope, is_high_rate
from shared.contracts import CallStarted, ContractError

__all__ = ["ASK_TO_REPEAT", "CallFollower", "asked_again"]

ASK_TO_REPEAT = re.compile(r"\b(say (it|that) again|repeat (it|that))\b", re.I)
"""An agent line that asks the caller to repeat themselves."""


def asked_again(asked: str | None, later: list[str]) -> bool:
    """Whether the agent's lines ``later`` (after the caller's line) ask for that line again: ``asked`` (its line
    before the caller's) said again word for word, or a line asking the caller to say it again."""
    return any((asked is not None and line.strip() == asked.strip()) or ASK_TO_REPEAT.search(line)
               for line in later)

log = logging.getLogger("switchboard.caller")


class CallFollower:
    """Bus-side view of one simulated call (see the module docstring).

    ``on_line(speaker, text)`` is called for each agent transcript (``agent``) and each caller transcription
    the model produced (``heard``).
    """

    def __init__(self, bus: Bus, run_id: str, on_line: Callable[[str, str], None] | None = None) -> None:
        self.bus = bus
        self.run_id = run_id
        self.on_line = on_line
        self.call_id: str | None = None
        self.found = asyncio.Event()
        self.ended = asyncio.Event()
        self.changed = asyncio.Event()
        self.responses_done = 0
        self.responses_created = 0
        self.creates_sent = 0
        self.in_progress: set[str] = set()
        self.function_call_pending = False
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        """Subscribe to ``call.*.started`` (before the simulator connects, so the start cannot be missed)."""
        self._subs.append(await self.bus.subscribe(subjects.all_calls_started(), self._on_started))

    async def stop(self) -> None:
        """Unsubscribe everything."""
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # connection already closed
                log.debug("unsubscribe failed: %s", exc)
        self._subs.clear()

    @property
    def settled(self) -> bool:
        """No response in progress or pending and no function call awaiting its follow-up response."""
        pending_creates = max(0, self.creates_sent - self.responses_created)
        return not self.in_progress and not self.function_call_pending and pending_creates == 0

    @property
    def activity(self) -> int:
        """How many responses were requested or started so far (0: the agent has not spoken yet)."""
        return max(self.creates_sent, self.responses_created)

    async def wait_changed(self, timeout: float) -> None:
        """Wait (up to ``timeout`` s) for any followed event."""
        self.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)

    def _touch(self) -> None:
        self.changed.set()

    async def _on_started(self, env: Envelope) -> None:
        if self.call_id is not None:
            return
        try:
            started = CallStarted.parse(env.data)
        except ContractError:
            return
        if started.custom_parameters.get("run_id") != self.run_id:
            return
        call_id = self.call_id = started.call_id
        # from the log, not core NATS: what was stored while the connection was down still arrives
        self._subs.append(await self.bus.follow(subjects.rt_all(call_id), subjects.RT_STREAM, self._on_rt))
        self._subs.append(await self.bus.follow(subjects.call_ended(call_id), subjects.CALLS_STREAM, self._on_ended))
        self.found.set()
        self._touch()

    async def _on_ended(self, env: Envelope) -> None:
        self.ended.set()
        self._touch()

    async def _on_rt(self, env: Envelope) -> None:
        parsed = subjects.parse(env.subject)
        if is_high_rate(env.subject):
            return  # high-rate events carry nothing the turn logic needs
        etype = parsed.rest
        try:
            event = env.json()
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if parsed.direction == "client":
            if etype == "response.create":
                self.creates_sent += 1
        else:
            self._server_event(etype, event)
        self._touch()

    def _server_event(self, etype: str, event: dict[str, Any]) -> None:
        raw = event.get("response")
        response: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if etype == "response.created":
            self.responses_created += 1
            self.function_call_pending = False
            self.in_progress.add(str(response.get("id", "")))
        elif etype == "response.done":
            self.responses_done += 1
            self.in_progress.discard(str(response.get("id", "")))
            if not response.get("id"):
                self.in_progress.clear()
        elif etype == "response.output_item.done":
            item = event.get("item") or {}
            if item.get("type") == "function_call":
                self.function_call_pending = True
        elif etype == "response.output_audio_transcript.done":
            self._line("agent", str(event.get("transcript", "")))
        elif etype == "conversation.item.input_audio_transcription.completed":
            self._line("heard", str(event.get("transcript", "")))

    def _line(self, speaker: str, text: str) -> None:
        if self.on_line is not None:
            self.on_line(speaker, text)
