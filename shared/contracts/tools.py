"""The tool request on ``tools.<name>`` and its reply (design.md, "Tools"; docs/tools.md).

Request: ``arguments`` (the model's arguments, parsed), ``tool_call_id`` (the Realtime function call's
``call_id``, the idempotency key), ``call`` (``call_id, from, to, agent``) and ``deadline_ms``; the absolute
deadline travels in the ``Switchboard-Deadline`` header (unix ms). Reply: ``{"output": <JSON>}`` and optionally
``"control": {"verb": "hangup" | "transfer" | "dtmf", ...}``. Errors are nats.micro service errors (headers
``Nats-Service-Error-Code`` and ``Nats-Service-Error``; https://github.com/nats-io/nats-architecture-and-design,
ADR-32), not bodies.

These are plain frozen dataclasses with hand-written readers (not pydantic): the request is parsed on every tool
call at a 400 boundary, and each problem is reported in a sentence the model can say to the caller.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from shared.bus import Headers

from .base import Body, ContractError, decode_object

__all__ = ["CallInfo", "ToolRequest", "ToolResult"]

_REQUEST = "tools.request"
_REPLY = "tools.reply"

ABSOLUTE_DEADLINE_MS = 10**12
"""``deadline_ms`` values at or above this (year 2001 in unix ms) are read as an absolute unix time in ms."""


def _opt_str(raw: Mapping[str, Any], key: str, where: str = "") -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ContractError(_REQUEST, f"The request field {where}{key} must be a string.")
    return value


def _deadline_header(headers: Mapping[str, str] | None) -> float | None:
    raw = headers.get(Headers.DEADLINE) if headers else None
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ContractError(_REQUEST, f"The {Headers.DEADLINE} header must be a unix time in ms.")
    return value


@dataclass(frozen=True, slots=True)
class CallInfo:
    """The call a tool request belongs to (request field ``call``; every key optional on the wire).

    Attributes:
        call_id: Switchboard call id (``call.<id>.*`` subjects).
        caller: the caller ID, wire key ``from`` (E.164 for phone calls); tools default a missing phone number
            to it.
        callee: the number called, wire key ``to``.
        agent: the agent spec name.
    """

    call_id: str | None = None
    caller: str | None = None
    callee: str | None = None
    agent: str | None = None

    @classmethod
    def parse(cls, raw: object) -> CallInfo:
        """Read the ``call`` object (None → every field None).

        Raises:
            ContractError: not an object, or a field that is not a string.
        """
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ContractError(_REQUEST, "The request field call must be an object.")
        return cls(_opt_str(raw, "call_id", "call."), _opt_str(raw, "from", "call."), _opt_str(raw, "to", "call."),
                   _opt_str(raw, "agent", "call."))

    def encode(self) -> dict[str, Any]:
        """The ``call`` object as sent (``from``/``to`` keys)."""
        return {"call_id": self.call_id, "from": self.caller, "to": self.callee, "agent": self.agent}


@dataclass(frozen=True, slots=True)
class ToolRequest:
    """A request on ``tools.<name>``.

    Attributes:
        arguments: the model's arguments, parsed (a JSON object).
        tool_call_id: the Realtime function call's ``call_id``; the idempotency key.
        call: the call the request belongs to.
        deadline_ms: the time budget in ms the caller still allows, counted from when it sent this attempt
            (a retry sends what is left). Values ≥ 10^12 are read as an absolute unix time in ms. None: the
            tool's ``timeout_ms``.
        deadline_epoch_ms: the absolute deadline, unix time in ms, from the ``Switchboard-Deadline`` header
            (not part of the body). When both are given, the earlier one binds.
    """

    MESSAGE: ClassVar[str] = _REQUEST

    arguments: dict[str, Any]
    tool_call_id: str | None = None
    call: CallInfo = field(default_factory=CallInfo)
    deadline_ms: float | None = None
    deadline_epoch_ms: float | None = None

    @classmethod
    def parse(cls, data: Body, headers: Mapping[str, str] | None = None) -> ToolRequest:
        """Read a request body (empty → ``{}``) and its ``Switchboard-Deadline`` header (``headers``, if given).

        Raises:
            ContractError: not JSON, not an object, ``arguments`` not an object (a JSON string holding an
                object is accepted: the Realtime API sends arguments as a string), a field of the wrong type,
                or a deadline header that is not a number of ms. The problem is a sentence safe to speak.
        """
        raw: object = data
        if isinstance(data, bytes | bytearray | memoryview | str):
            try:
                raw = json.loads(bytes(data) if isinstance(data, bytearray | memoryview) else data) if data else {}
            except (ValueError, UnicodeDecodeError):
                raise ContractError(_REQUEST, "The tool request was not valid JSON.") from None
        if not isinstance(raw, Mapping):
            raise ContractError(_REQUEST, "The tool request must be a JSON object.")
        arguments = raw.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                raise ContractError(_REQUEST, "The tool arguments were not valid JSON.") from None
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise ContractError(_REQUEST, "The tool arguments must be an object.")
        deadline = raw.get("deadline_ms")
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, int | float)):
            raise ContractError(_REQUEST, "The request field deadline_ms must be a number.")
        return cls(arguments, _opt_str(raw, "tool_call_id"), CallInfo.parse(raw.get("call")),
                   float(deadline) if deadline is not None else None, _deadline_header(headers))

    def encode(self) -> dict[str, Any]:
        """The request body (``deadline_ms`` left out when None; ``deadline_epoch_ms`` is a header)."""
        body: dict[str, Any] = {"arguments": self.arguments, "tool_call_id": self.tool_call_id,
                                "call": self.call.encode()}
        if self.deadline_ms is not None:
            body["deadline_ms"] = self.deadline_ms
        return body

    def deadline_at(self, received: float, default_ms: float) -> float:
        """The ``time.monotonic()`` instant by which the work must be committed, for a request received at
        ``received`` (a ``time.monotonic()`` reading): the earliest of the body's ``deadline_ms`` (relative to
        ``received``, or absolute when ≥ 10^12) and the header's absolute ``deadline_epoch_ms``; ``default_ms``
        after ``received`` when neither is given. Absolute times are converted with the wall clock now, so
        they bind however long the request waited before it was read.
        """
        now_mono, now_ms = time.monotonic(), time.time() * 1000
        budget = self.deadline_ms if self.deadline_ms is not None else default_ms
        absolute = budget >= ABSOLUTE_DEADLINE_MS
        due = now_mono + (budget - now_ms) / 1000 if absolute else received + budget / 1000
        if self.deadline_epoch_ms is not None:
            due = min(due, now_mono + (self.deadline_epoch_ms - now_ms) / 1000)
        return due


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A tool's reply: a JSON ``output`` for the model and an optional call ``control`` directive.

    ``control`` is ``{"verb": "hangup", ...}`` or ``{"verb": "transfer", "to": "+1…", ...}``; the session turns
    it into ``call.<id>.command.<verb>`` after the agent's goodbye audio has played. ``{"verb": "dtmf",
    "digits": "1234#"}`` becomes ``call.<id>.command.dtmf`` at once (the carrier sends the tones).
    """

    MESSAGE: ClassVar[str] = _REPLY

    output: Any
    control: dict[str, Any] | None = None

    def encode(self) -> dict[str, Any]:
        """The reply body: ``{"output": ...}`` plus ``"control"`` when set."""
        reply: dict[str, Any] = {"output": self.output}
        if self.control is not None:
            reply["control"] = self.control
        return reply

    @classmethod
    def parse(cls, data: Body) -> ToolResult:
        """Read a reply body.

        Raises:
            ContractError: not an object with ``output``, or ``control`` not an object with a string ``verb``.
        """
        raw = decode_object(_REPLY, data)
        if "output" not in raw:
            raise ContractError(_REPLY, "a tool reply must be an object with an output")
        control = raw.get("control")
        if control is not None and not (isinstance(control, dict) and isinstance(control.get("verb"), str)):
            raise ContractError(_REPLY, "the reply's control must be an object with a verb")
        return cls(raw["output"], control)
