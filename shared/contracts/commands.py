"""Commands from the session to the gateway: ``call.<id>.command.{clear,hangup,transfer,play,capture,replay,dtmf}``
(docs/events.asyncapi.yaml). :func:`parse_command` reads any of them by verb."""

from __future__ import annotations

import base64
import binascii
import re
from typing import ClassVar

from pydantic import NonNegativeInt, field_validator
from pydantic.dataclasses import dataclass

from shared.audio import parse_format

from .base import CONFIG, Body, Contract, ContractError

__all__ = ["COMMANDS", "Command", "CommandCapture", "CommandClear", "CommandDtmf", "CommandHangup", "CommandPlay",
           "CommandReplay", "CommandTransfer", "parse_command"]

_DIGITS = re.compile(r"[0-9*#A-D]{1,32}")


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class CommandClear(Contract):
    """``command.clear``: stop playback now and drop queued audio (barge-in); pending marks echo as cleared.

    Attributes:
        reason: why (``barge_in``).
        item_id / response_id: the assistant item and response being interrupted, if known.
    """

    MESSAGE: ClassVar[str] = "command.clear"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"reason", "item_id", "response_id"})

    reason: str | None = None
    item_id: str | None = None
    response_id: str | None = None


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class CommandHangup(Contract):
    """``command.hangup``: end the carrier leg after the audio already queued (``reason``: ``agent_hangup``…)."""

    MESSAGE: ClassVar[str] = "command.hangup"

    reason: str = "agent_hangup"


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class CommandTransfer(Contract):
    """``command.transfer``: hand the caller to ``to`` (E.164 number or SIP URI); the call ends ``transfer``."""

    MESSAGE: ClassVar[str] = "command.transfer"

    reason: str = "transfer"
    to: str


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class CommandPlay(Contract):
    """``command.play``: play audio that did not come from the model (a hold prompt …).

    Attributes:
        audio: the audio, base64 (RFC 4648 §4).
        audio_format: its Realtime GA format name; None: the call's carrier format.
        item_id: a name for the played item (marks report it); None: ``play``.
    """

    MESSAGE: ClassVar[str] = "command.play"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"audio_format", "item_id"})

    audio: str
    audio_format: str | None = None
    item_id: str | None = None

    @field_validator("audio")
    @classmethod
    def _audio(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except binascii.Error:
            raise ValueError("audio must be base64") from None
        return value

    @field_validator("audio_format")
    @classmethod
    def _audio_format(cls, value: str | None) -> str | None:
        return None if value is None else parse_format(value).name

    def audio_bytes(self) -> bytes:
        """The decoded audio."""
        return base64.b64decode(self.audio, validate=True)


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class CommandCapture(Contract):
    """``command.capture``: a keypad capture starts or ends (docs/compliance.md, "Keypad capture"); while
    ``active`` the gateway sends keypad digits on core-only ``call.<id>.keypad`` instead of the stored
    ``carrier.dtmf``.

    Attributes:
        active: the capture is on.
        state: the flow state that captures (None: the flow has no state).
        kind: ``card`` or ``digits`` (only when starting).
    """

    MESSAGE: ClassVar[str] = "command.capture"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"kind"})

    active: bool
    state: str | None = None
    kind: str | None = None


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class CommandReplay(Contract):
    """``command.replay``: send again the caller audio the gateway kept (its last 5 s) from byte offset
    ``from_bytes`` of the call's ``audio.in`` on — asked by a session that took the call over after its owner
    crashed (docs/gateway.md "Drain and resume"). The chunks carry header ``Switchboard-Replay`` (their offset);
    an empty chunk marks a replay with nothing kept.

    Attributes:
        from_bytes: carrier-format byte offset into the call's caller audio (≥ 0).
    """

    MESSAGE: ClassVar[str] = "command.replay"

    from_bytes: NonNegativeInt


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class CommandDtmf(Contract):
    """``command.dtmf``: send keypad tones to the far end of the call through the carrier's API (an IVR the agent
    navigates, an extension to dial); carriers that cannot send digits on a live call log it and send nothing.

    Attributes:
        digits: 1–32 of ``0``–``9``, ``*``, ``#``, ``A``–``D`` (RFC 4733 §3.2 events 0–15), sent in order.
    """

    MESSAGE: ClassVar[str] = "command.dtmf"

    digits: str

    @field_validator("digits")
    @classmethod
    def _digits(cls, value: str) -> str:
        if _DIGITS.fullmatch(value) is None:
            raise ValueError("digits must be 1-32 of 0-9 * # A-D")
        return value


Command = (CommandClear | CommandHangup | CommandTransfer | CommandPlay | CommandCapture | CommandReplay
           | CommandDtmf)

COMMANDS: dict[str, type[Command]] = {
    "clear": CommandClear, "hangup": CommandHangup, "transfer": CommandTransfer, "play": CommandPlay,
    "capture": CommandCapture, "replay": CommandReplay, "dtmf": CommandDtmf,
}
"""Contract of each command verb (``shared.subjects.command``)."""


def parse_command(verb: str, data: Body) -> Command:
    """Read the body of ``call.<id>.command.<verb>`` (an empty body is ``{}``).

    Raises:
        ContractError: an unknown verb, or a body that does not match the verb's contract.
    """
    cls = COMMANDS.get(verb)
    if cls is None:
        raise ContractError(f"command.{verb}", "unknown command verb")
    return cls.parse(data or b"{}")
