"""Session lifecycle events: ``call.<id>.session.{model_connected,state_changed,summary,error,handover}``
(docs/events.asyncapi.yaml). :func:`parse_session_event` reads any of them by event name."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, NonNegativeInt, field_validator
from pydantic.dataclasses import dataclass

from shared import subjects

from .base import CONFIG, Body, Contract, ContractError

__all__ = ["SESSION_EVENTS", "SessionCapture", "SessionDisclosure", "SessionError", "SessionEvent", "SessionHandover",
           "SessionModelConnected", "SessionStateChanged", "SessionSummary", "parse_session_event"]


class _CallIdMixin:
    @field_validator("call_id", check_fields=False)
    @classmethod
    def _call_id(cls, value: str) -> str:
        return subjects.validate_call_id(value)


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class SessionModelConnected(_CallIdMixin, Contract):
    """``session.model_connected``: a model session is ready (after ``session.updated``), once per connection.

    Attributes:
        call_id: the call.
        session_id / model: the Realtime session's id and model, as ``session.updated`` reported them.
        connection: 1 for the first model connection of the call, 2 after the first reconnect, ….
        reconnect: ``connection > 1``, or the call was taken over (its conversation rebuilt from the log).
        takeover: ``handover`` (the previous owner handed the call over) or ``lapse`` (it stopped renewing its
            ownership: crashed) when this instance took the call over; left out when None.
        billed: False when the session connected without an API key (the local model; priced at 0).
        agent / agent_version: the agent spec the session runs.
        url: the Realtime endpoint (never the API key); left out when None.
    """

    MESSAGE: ClassVar[str] = "session.model_connected"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"url", "takeover"})

    call_id: str
    session_id: str | None = None
    model: str | None = None
    connection: int = Field(default=1, ge=1)
    reconnect: bool = False
    takeover: Literal["handover", "lapse"] | None = None
    billed: bool
    agent: str
    agent_version: str | None = None
    url: str | None = None


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class SessionStateChanged(_CallIdMixin, Contract):
    """``session.state_changed``: the agent flow moved from state ``from_`` (wire ``from``) to ``to``, because
    the tool ``tool`` (call ``tool_call_id``) returned."""

    MESSAGE: ClassVar[str] = "session.state_changed"

    call_id: str
    from_: str | None = Field(default=None, validation_alias="from", serialization_alias="from")
    to: str
    tool: str | None = None
    tool_call_id: str | None = None


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class SessionSummary(_CallIdMixin, Contract):
    """``session.summary``: the session's account of a call, once when it ends (``services/session/summary.py``
    builds it).

    Attributes:
        call_id / agent: the call and its agent spec.
        usage: tokens summed over every ``response.done`` (``input_tokens``, ``output_tokens``,
            ``total_tokens`` and the ``*_token_details`` sums).
        turns: ``user`` (committed caller turns), ``assistant`` (responses finished), ``responses`` by status.
        durations: ms figures: ``call_ms``, ``model_connected_ms``, ``first_audio_ms`` (list), ``first_audio_p50_ms``.
        tool_calls: one object per finished tool call (``name``, ``tool_call_id``, ``ok``, ``duration_ms``).
        barge_ins / reconnects: counts.
        events: Realtime events logged, by direction.
        flow_state: the flow state at the end; ended_reason: why the session ended.
    """

    MESSAGE: ClassVar[str] = "session.summary"

    call_id: str
    agent: str | None = None
    usage: dict[str, Any] = Field(default_factory=dict)
    turns: dict[str, Any] = Field(default_factory=dict)
    durations: dict[str, Any] = Field(default_factory=dict)
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    barge_ins: NonNegativeInt = 0
    reconnects: NonNegativeInt = 0
    events: dict[str, int] = Field(default_factory=dict)
    flow_state: str | None = None
    ended_reason: str | None = None


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class SessionError(_CallIdMixin, Contract):
    """``session.error``: something the operator must see (``model_unavailable``, ``publish_failed``,
    ``internal``); ``message`` is safe to show, ``detail`` (left out when None) names the cause."""

    MESSAGE: ClassVar[str] = "session.error"
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"detail"})

    call_id: str
    code: str
    message: str
    detail: str | None = None


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class SessionHandover(_CallIdMixin, Contract):
    """``session.handover``: the owning session instance gives a live call up (SIGTERM drain) so that a peer
    claims it and continues from the log (design.md, round 2 "Subjects/streams"; issue 22).

    Attributes:
        call_id: the call handed over.
        owner: the instance handing it over (its nats.micro service instance id).
        epoch: the owner epoch it held (header ``Switchboard-Epoch``); the claimer's epoch is higher.
        reason: why (``drain``).
    """

    MESSAGE: ClassVar[str] = "session.handover"

    call_id: str
    owner: str
    epoch: NonNegativeInt
    reason: str = "drain"


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class SessionDisclosure(_CallIdMixin, Contract):
    """``session.disclosure``: the agent's disclosure and the proof it was played (docs/compliance.md,
    "Disclosure"; built by :mod:`services.session.disclosure`).

    Attributes:
        status: ``completed``, ``interrupted`` (the caller left first), ``unconfirmed`` (no marks in time) or
            ``failed`` (synthesis failed).
        text / item_id / audio_format / audio_bytes / audio_ms: what was played (bytes, ms).
        played_bytes / played_ms: what the carrier confirmed played (marks), from the start.
        started_at / finished_at: unix seconds (``started_at`` None: nothing was played).
        gate_recording: caller audio and transcripts were held back until it completed.
    """

    MESSAGE: ClassVar[str] = "session.disclosure"

    call_id: str
    status: Literal["completed", "interrupted", "unconfirmed", "failed"]
    text: str
    item_id: str
    audio_format: str
    audio_bytes: NonNegativeInt
    audio_ms: NonNegativeInt
    played_bytes: NonNegativeInt
    played_ms: NonNegativeInt
    started_at: float | None
    finished_at: float
    gate_recording: bool
    withheld_bytes: NonNegativeInt = 0


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class SessionCapture(_CallIdMixin, Contract):
    """``session.capture``: one keypad capture entry, masked (docs/compliance.md, "Keypad capture"; built by
    :mod:`services.session.capture`). The digits themselves never appear on any subject.

    Attributes:
        state / tool / kind: the capturing flow state, the tool that received the entry, ``card`` or ``digits``.
        digits: how many digits were entered; masked: e.g. ``••••1111``.
        ok / error_code: the tool accepted it, else the tool client's error code.
        tool_call_id: the id the tool request carried.
    """

    MESSAGE: ClassVar[str] = "session.capture"

    call_id: str
    state: str
    tool: str
    kind: str
    digits: NonNegativeInt
    masked: str
    ok: bool
    error_code: int | str | None
    tool_call_id: str


SessionEvent = (SessionModelConnected | SessionStateChanged | SessionSummary | SessionError | SessionHandover
                | SessionDisclosure | SessionCapture)

SESSION_EVENTS: dict[str, type[SessionEvent]] = {
    "model_connected": SessionModelConnected, "state_changed": SessionStateChanged, "summary": SessionSummary,
    "error": SessionError, "handover": SessionHandover, "disclosure": SessionDisclosure, "capture": SessionCapture,
}
"""Contract of each ``call.<id>.session.<event>`` (``shared.subjects.session_event``)."""


def parse_session_event(event: str, data: Body) -> SessionEvent:
    """Read the body of ``call.<id>.session.<event>``.

    Raises:
        ContractError: an event without a contract, or a body that does not match it.
    """
    cls = SESSION_EVENTS.get(event)
    if cls is None:
        raise ContractError(f"session.{event}", "unknown session event")
    return cls.parse(data)
