"""Call control from a tool reply's ``control``: ``call.<id>.command.hangup|transfer`` after the goodbye, and
``call.<id>.command.dtmf`` at once.

A reply's ``control: {"verb": "dtmf", "digits": "1234#"}`` (a tool that navigates an IVR or dials an extension)
sends the digits to the far end through the carrier at once (the gateway's call control); the call goes on.

``end_call`` / ``transfer_to_human`` replies carry ``control: {"verb": "hangup"}`` or ``{"verb": "transfer",
"to": ...}`` (docs/tools.md, "Wire contract"). The command must not cut the agent's goodbye short, so it is published
only when

1. the response that follows the tool output (the response answering the ``response.create`` sent after the
   ``function_call_output``) is done, AND
2. mark echoes confirm all of that response's audio has played (or was cleared by a barge-in);

each step bounded by a safety timeout (``response_timeout`` s for the response; unplayed audio + ``play_slack``
s for playback), after which the command is sent anyway — a call never hangs open because an echo was lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shared.contracts import CommandDtmf, CommandHangup, CommandTransfer, ContractError

from .bargein import PlaybackTracker

__all__ = ["ControlDirective", "PendingControl"]

log = logging.getLogger(__name__)


@dataclass
class ControlDirective:
    """A control verb waiting for the goodbye: ``verb`` (hangup/transfer), the command to publish, and the
    ``response.create`` event id whose response is the goodbye."""

    verb: str
    payload: CommandHangup | CommandTransfer
    create_event_id: str
    response_id: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


Execute = Callable[[str, CommandHangup | CommandTransfer | CommandDtmf], Awaitable[None]]
"""``execute(verb, command)`` publishes ``call.<id>.command.<verb>``."""


class PendingControl:
    """Holds at most one directive per call and fires it once (see the module docstring)."""

    def __init__(self, playback: PlaybackTracker, execute: Execute, *, response_timeout: float = 30.0,
                 play_slack: float = 3.0) -> None:
        self.playback = playback
        self.execute = execute
        self.response_timeout = response_timeout
        self.play_slack = play_slack
        self.directive: ControlDirective | None = None
        self.fired: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def arm(self, control: dict[str, Any], create_event_id: str, reason: str | None) -> ControlDirective | None:
        """Register ``control`` (from a tool reply); returns the directive, or None for an unknown verb, a
        ``transfer`` without a ``to`` string, or ``dtmf`` (sent at once, nothing waits; bad digits are logged)."""
        verb = control.get("verb")
        if verb == "dtmf":
            self._send_dtmf(control.get("digits"))
            return None
        if verb not in ("hangup", "transfer") or self.fired:
            if verb not in ("hangup", "transfer"):
                log.warning("ignoring unknown control verb %r", verb)
            return None
        payload: CommandHangup | CommandTransfer
        if verb == "hangup":
            payload = CommandHangup(reason=reason or "agent_hangup")
        elif isinstance(control.get("to"), str) and control["to"]:
            payload = CommandTransfer(reason=reason or "transfer", to=control["to"])
        else:
            log.warning("ignoring a transfer without a destination (control %r)", control)
            return None
        self.directive = ControlDirective(verb, payload, create_event_id)
        self._spawn(self._deadline(self.directive))
        return self.directive

    def _send_dtmf(self, digits: object) -> None:
        try:
            command = CommandDtmf.parse({"digits": digits})
        except ContractError as exc:
            log.warning("ignoring a dtmf control: %s", exc)
            return
        self._spawn(self.execute("dtmf", command))

    def on_response_created(self, response_id: str, create_event_id: str | None) -> None:
        """``response.created`` answering our create ``create_event_id`` (None for server-started ones)."""
        d = self.directive
        if d is not None and d.response_id is None and create_event_id == d.create_event_id:
            d.response_id = response_id

    def on_response_done(self, response_id: str) -> None:
        """``response.done``: when it is the goodbye, wait for its audio to play, then fire."""
        d = self.directive
        if d is not None and d.response_id == response_id and not d.done.is_set():
            self._spawn(self._after_playback(d, response_id))

    async def _after_playback(self, d: ControlDirective, response_id: str) -> None:
        items = self.playback.response_items(response_id)
        timeout = self.playback.unplayed_ms(items) / 1000 + self.play_slack
        if not await self.playback.wait_played(items, timeout):
            log.warning("goodbye audio not confirmed played within %.1fs; sending %s anyway", timeout, d.verb)
        await self._fire(d)

    async def _deadline(self, d: ControlDirective) -> None:
        try:
            await asyncio.wait_for(d.done.wait(), self.response_timeout)
        except TimeoutError:
            log.warning("no goodbye response within %.0fs; sending %s", self.response_timeout, d.verb)
            await self._fire(d)

    async def _fire(self, d: ControlDirective) -> None:
        if d.done.is_set():
            return
        d.done.set()
        self.fired.append(d.verb)
        await self.execute(d.verb, d.payload)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel(self) -> None:
        """Stop waiting (the call ended)."""
        for task in list(self._tasks):
            task.cancel()
