"""Why a call ended: the ``reason`` of ``call.<id>.ended`` (design.md, "End reasons").

Exactly one reason per call, chosen by what actually happened, never ``caller_hangup`` for something the caller
did not do. The gateway publishes every reason except ``lost``, which the recorder sets on a call whose
``ended`` never arrived (``services.recorder.finalize``); an OpenAI SIP call's session publishes its
``caller_hangup`` (the sideband closed), ``agent_hangup`` and ``transfer`` (``services.session.sideband``).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["DROPPED", "EndReason"]


class EndReason(StrEnum):
    """The values of ``call.<id>.ended`` ``reason`` (a ``str``, so it serializes as itself)."""

    CALLER_HANGUP = "caller_hangup"
    """The caller hung up: Twilio's ``stop``, a browser's ``stop``/close, or the carrier closing its stream
    normally (close code 1000/1001/1005)."""
    AGENT_HANGUP = "agent_hangup"
    """The agent ended the call (``call.<id>.command.hangup``, e.g. from the ``end_call`` tool)."""
    TRANSFER = "transfer"
    """The agent transferred the call (``call.<id>.command.transfer``)."""
    CARRIER_SILENT = "carrier_silent"
    """No media from the carrier for ``SWITCHBOARD_CARRIER_IDLE_S``."""
    PROTOCOL_ERROR = "protocol_error"
    """The carrier broke its protocol (bad frame, 1002/1003/1007/1009 close)."""
    DRAIN_TIMEOUT = "drain_timeout"
    """The gateway was stopping and the call was still live after ``SWITCHBOARD_DRAIN_S`` (or the carrier
    cannot be redirected to another gateway)."""
    SESSION_LOST = "session_lost"
    """No session instance served the call and none took it over in time."""
    LOST = "lost"
    """The connection broke without a close (1006), the gateway failed under the call (e.g. the bus went
    away), or — set by the recorder — the call's ``ended`` never arrived."""


DROPPED = frozenset({EndReason.CARRIER_SILENT, EndReason.PROTOCOL_ERROR, EndReason.DRAIN_TIMEOUT,
                     EndReason.SESSION_LOST, EndReason.LOST})
"""Reasons that mean the call broke rather than finished."""
