"""Every NATS subject and JetStream stream Switchboard uses, built in one place.

Subject grammar (docs/architecture.md, "Subjects and streams"; docs/events.asyncapi.yaml):

- ``call.<id>.started`` / ``.audio.in`` / ``.carrier.{mark,dtmf,error,amd}`` / ``.command.<verb>`` /
  ``.session.<event>`` / ``.ended``
- ``rt.<id>.client.<realtime event type>`` / ``rt.<id>.server.<realtime event type>``
- ``tools.<name>`` and ``otel.spans``

Call ids are validated (``[A-Za-z0-9_-]{1,64}``) so that a call id can never inject a subject token
(``.``, ``*``, ``>`` or white space). Realtime event types contain dots (``response.output_audio.delta``);
they are the tail of an ``rt`` subject and are validated to hold only ``[a-z0-9_.]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ulid import ULID

__all__ = [
    "AUDIT_STREAM",
    "CALLS_STREAM",
    "CALL_ID_PREFIX",
    "CALL_OWNERS_BUCKET",
    "OTEL_SPANS",
    "RECORDER_LEASE_BUCKET",
    "RT_STREAM",
    "STREAMS",
    "TRACES_STREAM",
    "InvalidSubjectTokenError",
    "ParsedSubject",
    "StreamSpec",
    "all_call_events",
    "all_calls_started",
    "all_session_handovers",
    "audit_checkpoint",
    "call_all",
    "call_any",
    "call_audio_in",
    "call_audio_in_all",
    "call_ended",
    "call_erased",
    "call_keypad",
    "call_started",
    "carrier_amd",
    "carrier_detached",
    "carrier_dtmf",
    "carrier_error",
    "carrier_mark",
    "carrier_resumed",
    "command",
    "new_call_id",
    "parse",
    "ready",
    "rt_all",
    "rt_any_call",
    "rt_client",
    "rt_server",
    "rt_wildcard",
    "session_disclosure",
    "session_event",
    "session_events",
    "session_handover",
    "tool",
    "tool_wildcard",
    "validate_call_id",
]

_CALL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EVENT_TYPE = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)*")
_MAX_EVENT_TYPE = 128

Direction = Literal["client", "server"]
CommandVerb = Literal["clear", "hangup", "transfer", "play", "capture", "replay", "dtmf"]
CarrierEvent = Literal["mark", "dtmf", "error", "amd"]


class InvalidSubjectTokenError(ValueError):
    """A call id, tool name, verb or event type that would not form a safe subject token."""


def validate_call_id(call_id: str) -> str:
    """Return ``call_id`` unchanged if it matches ``[A-Za-z0-9_-]{1,64}``.

    Raises:
        InvalidSubjectTokenError: the id is empty, longer than 64 characters, or holds any other
            character (``.``, ``*``, ``>``, white space ...), which could inject subject tokens.
    """
    if not isinstance(call_id, str) or _CALL_ID.fullmatch(call_id) is None:
        raise InvalidSubjectTokenError(f"invalid call id {call_id!r}: expected [A-Za-z0-9_-]{{1,64}}")
    return call_id


def _token(value: str, what: str) -> str:
    if not isinstance(value, str) or _TOKEN.fullmatch(value) is None:
        raise InvalidSubjectTokenError(f"invalid {what} {value!r}: expected [A-Za-z0-9_-]{{1,64}}")
    return value


def _event_type(value: str) -> str:
    if (
        not isinstance(value, str)
        or len(value) > _MAX_EVENT_TYPE
        or _EVENT_TYPE.fullmatch(value) is None
    ):
        raise InvalidSubjectTokenError(f"invalid event type {value!r}: expected dotted [a-z0-9_] words")
    return value


CALL_ID_PREFIX = "call_"


def new_call_id() -> str:
    """A fresh call id: ``call_`` + a ULID (26 Crockford base32 characters: 48-bit ms timestamp, 80 random
    bits; https://github.com/ulid/spec), so ids sort by creation time and never look like a carrier's id
    (Twilio's ``CA…`` CallSid stays in ``carrier_call_id``); always valid."""
    return CALL_ID_PREFIX + str(ULID())


# --- call.<id>.* -------------------------------------------------------------------------------------


def call_started(call_id: str) -> str:
    """``call.<id>.started`` (gateway → CALLS stream)."""
    return f"call.{validate_call_id(call_id)}.started"


def call_audio_in(call_id: str) -> str:
    """``call.<id>.audio.in`` — raw carrier-native audio bytes on core NATS (never in a stream)."""
    return f"call.{validate_call_id(call_id)}.audio.in"


def carrier_mark(call_id: str) -> str:
    """``call.<id>.carrier.mark`` — a playback mark echoed by the carrier."""
    return f"call.{validate_call_id(call_id)}.carrier.mark"


def carrier_detached(call_id: str) -> str:
    """``call.<id>.carrier.detached`` — a stopping gateway closed the call's carrier stream with a resume marker
    (Twilio follows the TwiML ``<Redirect>`` to another gateway); payload ``reason``, ``stream_id``."""
    return f"call.{validate_call_id(call_id)}.carrier.detached"


def carrier_resumed(call_id: str) -> str:
    """``call.<id>.carrier.resumed`` — a gateway reconnected the call's carrier stream under the same call id
    (instead of a second ``started``); payload ``stream_id``, ``carrier_call_id``, ``gap_ms``."""
    return f"call.{validate_call_id(call_id)}.carrier.resumed"


def carrier_dtmf(call_id: str) -> str:
    """``call.<id>.carrier.dtmf`` — a keypad digit from the caller."""
    return f"call.{validate_call_id(call_id)}.carrier.dtmf"


def carrier_amd(call_id: str) -> str:
    """``call.<id>.carrier.amd`` — the carrier's answering-machine detection result for an outbound call
    (:class:`shared.contracts.CarrierAmd`: ``answered_by``, ``human``)."""
    return f"call.{validate_call_id(call_id)}.carrier.amd"


def carrier_error(call_id: str) -> str:
    """``call.<id>.carrier.error`` — a carrier frame the gateway could not accept (``code``, ``reason``;
    :class:`shared.contracts.CarrierError`), published right before ``ended`` with ``protocol_error``."""
    return f"call.{validate_call_id(call_id)}.carrier.error"


def command(call_id: str, verb: str) -> str:
    """``call.<id>.command.<verb>``; verbs ``clear``, ``hangup``, ``transfer``, ``play``, ``capture``
    (``{active}``: keypad digits go to :func:`call_keypad` instead of ``carrier.dtmf``), ``replay`` (send the
    caller audio kept since byte offset ``from_bytes`` again: a session that took the call over), ``dtmf`` (send
    keypad tones through the carrier's API)."""
    if verb not in ("clear", "hangup", "transfer", "play", "capture", "replay", "dtmf", "*"):
        raise InvalidSubjectTokenError(f"unknown command verb {verb!r}")
    return f"call.{validate_call_id(call_id)}.command.{verb}"


def session_event(call_id: str, event: str) -> str:
    """``call.<id>.session.<event>`` (``model_connected``, ``state_changed``, ``disclosure``, ``capture``,
    ``summary``, ``error``, ``handover``; bodies: :mod:`shared.contracts.session`)."""
    return f"call.{validate_call_id(call_id)}.session.{_token(event, 'session event')}"


def call_keypad(call_id: str) -> str:
    """``call.<id>.keypad`` — one keypad digit pressed during a keypad capture (gateway → session, core NATS
    only: no stream captures it, so the digits are never stored)."""
    return f"call.{validate_call_id(call_id)}.keypad"


def session_disclosure(call_id: str) -> str:
    """``call.<id>.session.disclosure`` — the proof that the agent's disclosure played (or why it did not):
    status, text and the audio span the carrier confirmed (``services.session.disclosure.DisclosureRecord``)."""
    return session_event(call_id, "disclosure")


def call_ended(call_id: str) -> str:
    """``call.<id>.ended`` — the carrier leg is over (reason, durations)."""
    return f"call.{validate_call_id(call_id)}.ended"


def call_erased(call_id: str) -> str:
    """``call.<id>.erased`` — the recorder destroyed the call's data key (who, when, why); archived in the call's
    CALLS chain as the audited record of the erasure."""
    return f"call.{validate_call_id(call_id)}.erased"


def call_all(call_id: str) -> str:
    """``call.<id>.>`` — every call-level subject of one call (includes audio.in on core NATS)."""
    return f"call.{validate_call_id(call_id)}.>"


def all_calls_started() -> str:
    """``call.*.started`` — what the session service listens on (in a queue group)."""
    return "call.*.started"


def all_call_events() -> str:
    """``call.>`` — every call-level subject of every call."""
    return "call.>"


# --- rt.<id>.* ---------------------------------------------------------------------------------------


def rt_client(call_id: str, event_type: str) -> str:
    """``rt.<id>.client.<type>`` — a Realtime client event exactly as the session sent it."""
    return f"rt.{validate_call_id(call_id)}.client.{_event_type(event_type)}"


def rt_server(call_id: str, event_type: str) -> str:
    """``rt.<id>.server.<type>`` — a Realtime server event exactly as the session received it."""
    return f"rt.{validate_call_id(call_id)}.server.{_event_type(event_type)}"


def rt_all(call_id: str) -> str:
    """``rt.<id>.>`` — the whole Realtime log of one call."""
    return f"rt.{validate_call_id(call_id)}.>"


def rt_wildcard() -> str:
    """``rt.>`` — every Realtime event of every call."""
    return "rt.>"


# --- tools and telemetry -----------------------------------------------------------------------------


def tool(name: str) -> str:
    """``tools.<name>`` — the nats.micro endpoint subject of one tool."""
    return f"tools.{_token(name, 'tool name')}"


def tool_wildcard() -> str:
    """``tools.>`` — every tool endpoint."""
    return "tools.>"


def ready(service: str) -> str:
    """``switchboard.ready.<service>`` — readiness requests to a service without HTTP (``shared.health``)."""
    return f"switchboard.ready.{_token(service, 'service name')}"


OTEL_SPANS = "otel.spans"
"""Finished spans (OTLP JSON) for the embedded trace store."""


# --- parsing -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedSubject:
    """A subject split into its parts: ``kind`` is ``call``/``rt``/``tools``/``otel``.

    For ``call.<id>.<rest>``: ``call_id`` and ``rest`` (e.g. ``carrier.mark``).
    For ``rt.<id>.<direction>.<type>``: ``call_id``, ``direction`` and ``rest`` = the event type.
    """

    kind: str
    call_id: str | None
    rest: str
    direction: str | None = None


def parse(subject: str) -> ParsedSubject:
    """Split a Switchboard subject into a :class:`ParsedSubject`.

    Raises:
        InvalidSubjectTokenError: the subject is not one of ours.
    """
    parts = subject.split(".")
    if len(parts) >= 3 and parts[0] == "call":
        return ParsedSubject("call", validate_call_id(parts[1]), ".".join(parts[2:]))
    if len(parts) >= 4 and parts[0] == "rt" and parts[2] in ("client", "server"):
        return ParsedSubject("rt", validate_call_id(parts[1]), ".".join(parts[3:]), parts[2])
    if len(parts) == 2 and parts[0] == "tools":
        return ParsedSubject("tools", None, parts[1])
    if subject == OTEL_SPANS:
        return ParsedSubject("otel", None, "spans")
    raise InvalidSubjectTokenError(f"not a Switchboard subject: {subject!r}")


# --- streams -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A JetStream stream: its name, the subjects it captures, and whether it keeps data briefly."""

    name: str
    subjects: tuple[str, ...]
    short_lived: bool = False


CALLS_STREAM = StreamSpec(
    "CALLS",
    # Deliberately not "call.>": the CALLS stream must not capture call.*.audio.in.
    ("call.*.started", "call.*.ended", "call.*.erased", "call.*.carrier.*", "call.*.command.*", "call.*.session.*"),
)
RT_STREAM = StreamSpec("RT", ("rt.>",))
TRACES_STREAM = StreamSpec("TRACES", (OTEL_SPANS,), short_lived=True)
STREAMS: tuple[StreamSpec, ...] = (CALLS_STREAM, RT_STREAM, TRACES_STREAM)
AUDIT_STREAM = StreamSpec("AUDIT", ("audit.>",))
"""Signed chain checkpoints of the recorder (created with deny-delete and deny-purge; not in :data:`STREAMS`)."""


CALL_OWNERS_BUCKET = "switchboard_call_owners"
"""KV bucket of live-call ownership (key = call id; value owner instance, epoch, since;
``services/session/ownership.py``)."""
RECORDER_LEASE_BUCKET = "switchboard_recorder_lease"
"""KV bucket of the recorder's single-writer lease (key ``writer``; ``services/recorder/lease.py``)."""


def audit_checkpoint(call_id: str) -> str:
    """``audit.<id>`` — a signed checkpoint of one call's chain heads (recorder → AUDIT stream)."""
    return f"audit.{validate_call_id(call_id)}"


# --- added for the session service ----------------------------------------------------------------------


def session_handover(call_id: str) -> str:
    """``call.<id>.session.handover`` — the owner session instance is stopping and asks a peer to take the call
    over (payload ``call_id, owner, epoch``)."""
    return f"call.{validate_call_id(call_id)}.session.handover"


def all_session_handovers() -> str:
    """``call.*.session.handover`` — handover requests of every call (what session instances listen to)."""
    return "call.*.session.handover"


def session_events(call_id: str) -> str:
    """``call.<id>.session.*`` — every session lifecycle event of one call."""
    return f"call.{validate_call_id(call_id)}.session.*"


def call_audio_in_all() -> str:
    """``call.*.audio.in`` — caller audio of every call (benchmarks)."""
    return "call.*.audio.in"


def rt_any_call(direction: Direction, event_type: str) -> str:
    """``rt.*.<direction>.<type>`` — one Realtime event type of every call (benchmarks, analytics taps)."""
    if direction not in ("client", "server"):
        raise InvalidSubjectTokenError(f"invalid direction {direction!r}")
    return f"rt.*.{direction}.{_event_type(event_type)}"


# --- added for the analytics service --------------------------------------------------------------------


def webhook_status() -> str:
    """``switchboard.analytics.webhook`` — the post-call webhook's delivery status (``switchboard status``)."""
    return "switchboard.analytics.webhook"


def all_calls_ended() -> str:
    """``call.*.ended`` — the end of every call (the post-call webhook's filter)."""
    return "call.*.ended"


def call_any(event: str) -> str:
    """``call.*.<event>`` — one call event (``started``, ``session.model_connected``, …) of every call (analytics
    filters)."""
    return f"call.*.{_event_type(event)}"
