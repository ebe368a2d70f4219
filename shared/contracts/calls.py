"""Call lifecycle and carrier messages the gateway publishes (docs/events.asyncapi.yaml, design.md "Subjects,
streams and payloads"): ``call.<id>.started``, ``call.<id>.ended`` and
``call.<id>.carrier.{mark,dtmf,error,detached,resumed,amd}``."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, NonNegativeInt, field_validator
from pydantic.dataclasses import dataclass

from shared import subjects
from shared.audio import parse_format

from .base import CONFIG, Contract

__all__ = ["CallEnded", "CallErased", "CallStarted", "CarrierAmd", "CarrierDetached", "CarrierDtmf", "CarrierError",
           "CarrierMark", "CarrierResumed", "KeypadDigit"]

_DTMF = re.compile(r"[0-9*#A-D]")


def _dtmf_digit(value: str) -> str:
    if _DTMF.fullmatch(value) is None:
        raise ValueError("a DTMF digit is one of 0-9 * # A-D")
    return value


DtmfDigit = Annotated[str, AfterValidator(_dtmf_digit)]
"""One keypad digit: ``0``–``9``, ``*``, ``#``, ``A``–``D`` (RFC 4733 §3.2 events 0–15)."""


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class CallStarted(Contract):
    """``call.<id>.started``: a carrier leg began (gateway → session, recorder, analytics, caller simulator).

    Attributes:
        call_id: Switchboard call id, ``[A-Za-z0-9_-]{1,64}`` (:func:`shared.subjects.validate_call_id`).
        carrier: ``twilio``, ``browser``, ….
        agent: the agent spec name the call runs.
        agent_version: the version the gateway chose (``agents/rollout.yaml``); None: the spec's own.
        audio_format: the Realtime GA name of the audio on ``call.<id>.audio.in`` (``audio/pcmu`` …).
        from_: caller ID, wire key ``from`` (E.164 for phone calls).
        to: the number called.
        carrier_call_id: the carrier's call id (Twilio ``CallSid``).
        stream_id: the carrier's stream id (Twilio ``StreamSid``).
        custom_parameters: TwiML ``<Parameter>`` values (the caller simulator's ``run_id``).
        started_at: RFC 3339 time the stream started (UTC).
    """

    MESSAGE: ClassVar[str] = "call.started"

    call_id: str
    carrier: str
    agent: str
    agent_version: str | None = None
    audio_format: str
    from_: str | None = Field(default=None, validation_alias="from", serialization_alias="from")
    to: str | None = None
    carrier_call_id: str | None = None
    stream_id: str | None = None
    custom_parameters: dict[str, str] = Field(default_factory=dict)
    started_at: str

    @field_validator("call_id")
    @classmethod
    def _call_id(cls, value: str) -> str:
        return subjects.validate_call_id(value)

    @field_validator("audio_format")
    @classmethod
    def _audio_format(cls, value: str) -> str:
        return parse_format(value).name

    @field_validator("started_at")
    @classmethod
    def _started_at(cls, value: str) -> str:
        datetime.fromisoformat(value)  # ValueError → a validation error naming the field
        return value


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class CallEnded(Contract):
    """``call.<id>.ended``: the carrier leg is over (published once per call by the gateway; for an OpenAI SIP
    call, whose media never reaches the gateway, by the session serving it, or by the gateway when no session took
    it).

    Attributes:
        reason: ``caller_hangup``, ``agent_hangup``, ``transfer``, ``carrier_silent``, ``protocol_error``,
            ``drain_timeout``, ``session_lost``, ``lost`` (:class:`shared.endreasons.EndReason`).
        duration_ms: ms from ``started`` to the end.
        audio_in_ms / audio_out_ms: ms of caller audio received / agent audio sent to the carrier.
        outbound_dropped: agent audio chunks dropped because the carrier queue was full.
        carrier, carrier_call_id, stream_id: as in :class:`CallStarted`.
        error: what broke (``protocol_error``, ``lost``); left out when None.
        close_code: the WebSocket close code (RFC 6455 §7.4) when the carrier closed; left out when None.
        transfer_to: where a ``transfer`` sent the caller; left out when None.
        idle_s: the silence limit that ended a ``carrier_silent`` call, s; left out when None.
    """

    MESSAGE: ClassVar[str] = "call.ended"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"error", "close_code", "transfer_to", "idle_s"})

    reason: str
    duration_ms: float | None = None
    audio_in_ms: float | None = None
    audio_out_ms: float | None = None
    outbound_dropped: NonNegativeInt | None = None
    carrier: str | None = None
    carrier_call_id: str | None = None
    stream_id: str | None = None
    error: str | None = None
    close_code: int | None = None
    transfer_to: str | None = None
    idle_s: float | None = None


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class CarrierMark(Contract):
    """``call.<id>.carrier.mark``: a playback mark echoed by the carrier (barge-in truncation reads it).

    Attributes:
        name: the mark's name as the gateway sent it.
        item_id: the assistant item whose audio the mark follows (None: not model audio).
        played_bytes: carrier-format bytes of that item played so far (cumulative).
        cleared: True when the echo came from a ``clear`` (the audio before it was not played).
    """

    MESSAGE: ClassVar[str] = "carrier.mark"

    name: str
    item_id: str | None = None
    played_bytes: NonNegativeInt
    cleared: bool


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class CarrierDtmf(Contract):
    """``call.<id>.carrier.dtmf``: one keypad digit from the caller (``0``–``9``, ``*``, ``#``, ``A``–``D``)."""

    MESSAGE: ClassVar[str] = "carrier.dtmf"

    digit: DtmfDigit


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class CarrierAmd(Contract):
    """``call.<id>.carrier.amd``: the carrier's answering-machine detection result for an outbound call.

    Attributes:
        carrier: ``twilio``, ``telnyx``, ….
        answered_by: the carrier's verdict as it sent it (Twilio/Telnyx TeXML ``AnsweredBy``: ``human``,
            ``machine_start``, ``machine_end_beep``, ``fax``, ``unknown`` …;
            https://www.twilio.com/docs/voice/answering-machine-detection#webhook-parameters).
        human: True when the verdict is a person, False for a machine or fax, None when unknown.
        carrier_call_id: the carrier's call id the result is for (Twilio ``CallSid``).
        detection_ms: how long detection took (Twilio ``MachineDetectionDuration``), when sent.
    """

    MESSAGE: ClassVar[str] = "carrier.amd"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"carrier_call_id", "detection_ms"})

    carrier: str
    answered_by: str = Field(min_length=1, max_length=64)
    human: bool | None = None
    carrier_call_id: str | None = None
    detection_ms: NonNegativeInt | None = None


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class KeypadDigit(Contract):
    """``call.<id>.keypad``: one keypad digit pressed during a keypad capture (core NATS only, never stored;
    docs/compliance.md, "Keypad capture"); same body as :class:`CarrierDtmf`."""

    MESSAGE: ClassVar[str] = "call.keypad"

    digit: DtmfDigit


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class CarrierError(Contract):
    """``call.<id>.carrier.error``: the carrier leg broke the protocol (the call then ends ``protocol_error``).

    Attributes:
        code: the WebSocket close code (1002 framing, 1007 invalid data, 1009 too big; RFC 6455 §7.4.1) when
            the WebSocket layer refused a frame, else ``invalid_frame`` (a frame the carrier codec rejected).
        reason: what was wrong, one line.
    """

    MESSAGE: ClassVar[str] = "carrier.error"

    code: int | str
    reason: str


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class CarrierDetached(Contract):
    """``call.<id>.carrier.detached``: a stopping gateway closed the call's carrier stream with the resume
    marker (close 1000 ``resume``); the call goes on and the carrier reconnects it through another gateway
    (TwiML ``<Redirect>``, docs/gateway.md "Drain and resume"). The gateway's last message for the call.

    Attributes:
        reason: why the gateway let go (``gateway_drain``).
        stream_id: the carrier stream that was closed.
    """

    MESSAGE: ClassVar[str] = "carrier.detached"

    reason: str
    stream_id: str | None = None


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class CarrierResumed(Contract):
    """``call.<id>.carrier.resumed``: a gateway reconnected the call's carrier stream under the same call id
    (published instead of a second ``call.<id>.started``).

    Attributes:
        carrier: ``twilio``.
        carrier_call_id: the carrier's call id (Twilio ``CallSid``).
        stream_id: the new stream's id.
        gap_ms: ms since the previous gateway's last logged message for the call (None: none found).
    """

    MESSAGE: ClassVar[str] = "carrier.resumed"

    carrier: str
    carrier_call_id: str | None = None
    stream_id: str | None = None
    gap_ms: float | None = None


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class CallErased(Contract):
    """``call.<id>.erased``: the recorder destroyed the call's data key (crypto-shredding, docs/compliance.md);
    archived in the call's CALLS chain as the audit record of the erasure.

    Attributes:
        call_id: the erased call.
        erased_ns: when the key was destroyed (unix ns).
        erased_by: who asked: ``api:<actor or client address>``, ``cli:…`` or ``retention``.
        reason: ``request`` or ``retention``.
    """

    MESSAGE: ClassVar[str] = "call.erased"

    call_id: str
    erased_ns: int
    erased_by: str
    reason: Literal["request", "retention"]
