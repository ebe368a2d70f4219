"""Typed wire contracts: one class per message on the bus that is not a Realtime event.

Every publisher builds its body with a contract's ``encode()`` and every consumer reads it with ``parse()``
(``ContractError`` on a body that does not match). The published catalogue is docs/events.asyncapi.yaml;
``tests/unit/test_contracts.py`` validates each contract's encoding against the catalogue's payload schema
and checks that every non-Realtime message there has a contract (:data:`CATALOGUE`).

=========================  ==================================  =====================================
subject                    contract                            module
=========================  ==================================  =====================================
``call.<id>.started``      :class:`CallStarted`                :mod:`.calls`
``call.<id>.ended``        :class:`CallEnded`                  :mod:`.calls`
``call.<id>.erased``       :class:`CallErased`                 :mod:`.calls`
``call.<id>.carrier.*``    :class:`CarrierMark` / ``Dtmf`` /   :mod:`.calls`
                           ``Error`` / ``Detached`` /
                           ``Resumed`` / ``Amd``
``call.<id>.command.*``    :class:`CommandClear` … (verb)      :mod:`.commands`
``call.<id>.session.*``    :class:`SessionSummary` … (event)   :mod:`.session`
``tools.<name>``           :class:`ToolRequest` / reply        :mod:`.tools`
                           :class:`ToolResult`
=========================  ==================================  =====================================

Not here: ``call.<id>.audio.in`` (raw audio bytes, no JSON), ``rt.<id>.*`` (Realtime events, logged exactly as
sent/received), ``otel.spans`` (span records of :func:`shared.telemetry.span_to_dict`) and the tool error reply
(a nats.micro error: headers only, :class:`shared.errors.ServiceCallError`).
"""

from __future__ import annotations

from .base import Body, Contract, ContractError
from .calls import (
    CallEnded,
    CallErased,
    CallStarted,
    CarrierAmd,
    CarrierDetached,
    CarrierDtmf,
    CarrierError,
    CarrierMark,
    CarrierResumed,
    KeypadDigit,
)
from .commands import (
    COMMANDS,
    Command,
    CommandCapture,
    CommandClear,
    CommandDtmf,
    CommandHangup,
    CommandPlay,
    CommandReplay,
    CommandTransfer,
    parse_command,
)
from .session import (
    SESSION_EVENTS,
    SessionCapture,
    SessionDisclosure,
    SessionError,
    SessionEvent,
    SessionHandover,
    SessionModelConnected,
    SessionStateChanged,
    SessionSummary,
    parse_session_event,
)
from .tools import CallInfo, ToolRequest, ToolResult

__all__ = [
    "CATALOGUE",
    "COMMANDS",
    "SESSION_EVENTS",
    "Body",
    "CallEnded",
    "CallErased",
    "CallInfo",
    "CallStarted",
    "CarrierAmd",
    "CarrierDetached",
    "CarrierDtmf",
    "CarrierError",
    "CarrierMark",
    "CarrierResumed",
    "Command",
    "CommandCapture",
    "CommandClear",
    "CommandDtmf",
    "CommandHangup",
    "CommandPlay",
    "CommandReplay",
    "CommandTransfer",
    "Contract",
    "ContractError",
    "KeypadDigit",
    "SessionCapture",
    "SessionDisclosure",
    "SessionError",
    "SessionEvent",
    "SessionHandover",
    "SessionModelConnected",
    "SessionStateChanged",
    "SessionSummary",
    "ToolRequest",
    "ToolResult",
    "parse_command",
    "parse_session_event",
]

CATALOGUE: dict[str, type[Contract] | type[ToolRequest] | type[ToolResult]] = {
    "CallStarted": CallStarted,
    "CallEnded": CallEnded,
    "CallErased": CallErased,
    "CarrierMark": CarrierMark,
    "CarrierDtmf": CarrierDtmf,
    "CarrierError": CarrierError,
    "CarrierDetached": CarrierDetached,
    "CarrierResumed": CarrierResumed,
    "CarrierAmd": CarrierAmd,
    "Keypad": KeypadDigit,
    "CommandClear": CommandClear,
    "CommandHangup": CommandHangup,
    "CommandTransfer": CommandTransfer,
    "CommandPlay": CommandPlay,
    "CommandCapture": CommandCapture,
    "CommandReplay": CommandReplay,
    "CommandDtmf": CommandDtmf,
    "SessionModelConnected": SessionModelConnected,
    "SessionStateChanged": SessionStateChanged,
    "SessionSummary": SessionSummary,
    "SessionError": SessionError,
    "SessionDisclosure": SessionDisclosure,
    "SessionCapture": SessionCapture,
    "SessionHandover": SessionHandover,
    "ToolRequest": ToolRequest,
    "ToolReply": ToolResult,
}
"""Contract of each message in docs/events.asyncapi.yaml (``components.messages`` key) that has a JSON body
and is not a Realtime event."""
