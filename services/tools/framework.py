"""The tool model: :class:`Tool`, the :func:`tool` decorator, and the request/result/context types.

A tool is a typed async function plus a JSON Schema for its arguments::

    @tool(parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
    async def get_weather(ctx: ToolContext, city: str) -> dict[str, Any]:
        \"\"\"Current weather for a city.\"\"\"
        ...

The decorator returns a :class:`Tool`; a worker serves every module-level Tool of the modules it is told to
load (:func:`tools_in_module`). Tools discovered at run time (e.g. from an MCP server) are built directly with
``Tool(name=..., description=..., parameters=..., fn=...)`` — no decorator needed.

Wire format (docs/tools.md, "Wire contract"): the request on ``tools.<name>`` is :class:`ToolRequest`, the reply is
:meth:`ToolResult.to_reply` (``{"output": <JSON>}`` plus an optional ``"control"`` directive). Errors are
:class:`~shared.errors.ServiceCallError` subclasses whose code travels as ``Nats-Service-Error-Code`` and whose
message, safe to speak to a caller, as ``Nats-Service-Error``.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import math
import re
import time
import types
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from shared import subjects
from shared.bus import Headers
from shared.errors import ServiceCallError
from shared.tool_registry import ToolSpec

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from services.tools.settings import ToolsSettings

__all__ = [
    "CallInfo",
    "Conflict",
    "DeadlineExceeded",
    "InvalidArguments",
    "NotFound",
    "Tool",
    "ToolContext",
    "ToolFn",
    "ToolRequest",
    "ToolResult",
    "tool",
    "tools_in_module",
]

ToolFn = Callable[..., Awaitable[Any]]
"""``async def fn(ctx: ToolContext, **arguments) -> JSON | ToolResult``."""

_ABSOLUTE_DEADLINE_MS = 10**12
"""``deadline_ms`` values at or above this (year 2001 in unix ms) are read as an absolute unix time in ms."""


# --- errors with fixed codes ---------------------------------------------------------------------------


class InvalidArguments(ServiceCallError):
    """400: the arguments do not match the tool's schema or make no sense (message says what to fix)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class NotFound(ServiceCallError):
    """404: the customer, appointment, … asked about does not exist."""

    def __init__(self, message: str) -> None:
        super().__init__(404, message)


class Conflict(ServiceCallError):
    """409: the request conflicts with the current state (slot taken, already cancelled, ambiguous)."""

    def __init__(self, message: str) -> None:
        super().__init__(409, message)


class DeadlineExceeded(ServiceCallError):
    """504: the work could not finish before the request's deadline."""

    def __init__(self, message: str = "That took too long; please try again in a moment.") -> None:
        super().__init__(504, message)


# --- wire types ----------------------------------------------------------------------------------------


def _deadline_header(headers: Mapping[str, str] | None) -> float | None:
    """The ``Switchboard-Deadline`` header (unix ms) as a float, None when absent.

    Raises:
        InvalidArguments: present but not a finite number.
    """
    raw = headers.get(Headers.DEADLINE) if headers else None
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArguments(f"The {Headers.DEADLINE} header must be a unix time in ms.") from None
    if not math.isfinite(value):
        raise InvalidArguments(f"The {Headers.DEADLINE} header must be a unix time in ms.")
    return value


def _opt_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArguments(f"The request field {key} must be a string.")
    return value


@dataclass(frozen=True, slots=True)
class CallInfo:
    """The phone call a tool request belongs to (request field ``call``).

    Attributes:
        call_id: Switchboard call id (``call.<id>.*`` subjects).
        caller: the caller ID (``from``, E.164 for phone calls); tools use it when a phone number is missing.
        callee: the number called (``to``).
        agent: the agent spec name.
    """

    call_id: str | None = None
    caller: str | None = None
    callee: str | None = None
    agent: str | None = None

    @classmethod
    def from_json(cls, raw: object) -> CallInfo:
        """Parse the ``call`` object (``call_id, from, to, agent``; each optional).

        Raises:
            InvalidArguments: not an object, or a field is not a string.
        """
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise InvalidArguments("The request field call must be an object.")
        return cls(_opt_str(raw, "call_id"), _opt_str(raw, "from"), _opt_str(raw, "to"), _opt_str(raw, "agent"))

    def to_json(self) -> dict[str, Any]:
        """The ``call`` object as sent on the wire (``from``/``to`` keys)."""
        return {"call_id": self.call_id, "from": self.caller, "to": self.callee, "agent": self.agent}


@dataclass(frozen=True, slots=True)
class ToolRequest:
    """A request on ``tools.<name>`` (docs/tools.md, "Wire contract").

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

    arguments: dict[str, Any]
    tool_call_id: str | None = None
    call: CallInfo = field(default_factory=CallInfo)
    deadline_ms: float | None = None
    deadline_epoch_ms: float | None = None

    @classmethod
    def parse(cls, data: bytes, headers: Mapping[str, str] | None = None) -> ToolRequest:
        """Parse a request body and its ``Switchboard-Deadline`` header (``headers``, if given).

        Raises:
            InvalidArguments: not JSON, not an object, ``arguments`` not an object (a JSON string holding an
                object is accepted, as the Realtime API sends arguments as a string), a field of the wrong type,
                or a deadline header that is not a number of ms.
        """
        try:
            raw = json.loads(data) if data else {}
        except (ValueError, UnicodeDecodeError):
            raise InvalidArguments("The tool request was not valid JSON.") from None
        if not isinstance(raw, dict):
            raise InvalidArguments("The tool request must be a JSON object.")
        arguments = raw.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                raise InvalidArguments("The tool arguments were not valid JSON.") from None
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise InvalidArguments("The tool arguments must be an object.")
        deadline = raw.get("deadline_ms")
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, int | float)):
            raise InvalidArguments("The request field deadline_ms must be a number.")
        return cls(arguments, _opt_str(raw, "tool_call_id"), CallInfo.from_json(raw.get("call")),
                   float(deadline) if deadline is not None else None, _deadline_header(headers))

    def to_json(self) -> dict[str, Any]:
        """The request body."""
        body: dict[str, Any] = {"arguments": self.arguments, "tool_call_id": self.tool_call_id,
                                "call": self.call.to_json()}
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
        absolute = budget >= _ABSOLUTE_DEADLINE_MS
        due = now_mono + (budget - now_ms) / 1000 if absolute else received + budget / 1000
        if self.deadline_epoch_ms is not None:
            due = min(due, now_mono + (self.deadline_epoch_ms - now_ms) / 1000)
        return due


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool returns: a JSON ``output`` for the model and an optional call ``control`` directive.

    ``control`` is ``{"verb": "hangup", ...}`` or ``{"verb": "transfer", "to": "+1…", ...}``; the session turns
    it into ``call.<id>.command.<verb>`` after the agent's goodbye audio has played.
    """

    output: Any
    control: dict[str, Any] | None = None

    def to_reply(self) -> dict[str, Any]:
        """The reply body: ``{"output": ...}`` plus ``"control"`` when set."""
        reply: dict[str, Any] = {"output": self.output}
        if self.control is not None:
            reply["control"] = self.control
        return reply

    @classmethod
    def from_reply(cls, raw: object) -> ToolResult:
        """Parse a reply body.

        Raises:
            ValueError: not an object with ``output``, or ``control`` not an object with a string ``verb``.
        """
        if not isinstance(raw, dict) or "output" not in raw:
            raise ValueError("tool reply must be an object with an output")
        control = raw.get("control")
        if control is not None and not (isinstance(control, dict) and isinstance(control.get("verb"), str)):
            raise ValueError("tool reply control must be an object with a verb")
        return cls(raw["output"], control)


@dataclass(slots=True)
class ToolContext:
    """What a tool function receives besides its arguments.

    Attributes:
        tool: the tool's name.
        call: the call the request belongs to (``call.caller`` is the caller ID).
        tool_call_id: the Realtime ``call_id`` of the function call (None when the caller sent none).
        deadline: ``time.monotonic()`` instant by which the reply is due.
        settings: the worker's settings.
    """

    tool: str
    call: CallInfo
    tool_call_id: str | None
    deadline: float
    settings: ToolsSettings
    db: AsyncSession | None = None
    """The request's database session once opened (see :attr:`session`)."""
    open_session: Callable[[], AsyncSession] | None = None
    """Opens a session on first use of :attr:`session` (None: the worker has no database)."""

    @property
    def session(self) -> AsyncSession:
        """The request's database session, opened on first use; its transaction is committed by the worker
        after the tool returns (together with the stored idempotent result), rolled back on any error.

        Raises:
            RuntimeError: the worker has no database.
        """
        if self.db is None:
            if self.open_session is None:
                raise RuntimeError(f"tool {self.tool} needs a database but the worker has none")
            self.db = self.open_session()
        return self.db

    def remaining_ms(self) -> float:
        """Milliseconds left before the deadline (negative when past)."""
        return (self.deadline - time.monotonic()) * 1000

    def now(self) -> dt.datetime:
        """The current time, aware, in the clinic's zone (``settings.tzinfo``)."""
        return dt.datetime.now(self.settings.tzinfo)


# --- the tool itself -----------------------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Tool:
    """A tool: its :class:`~shared.tool_registry.ToolSpec` fields plus the function that runs it.

    Attributes:
        name: ``[A-Za-z0-9_-]{1,64}``; the endpoint subject is ``tools.<name>``.
        description: what the model reads to decide when to call it.
        parameters: JSON Schema (draft 2020-12) of the arguments object.
        fn: ``async def fn(ctx, **arguments)``; receives only the arguments declared in ``properties``.
        timeout_ms: default deadline (ms) when a request carries none; also the session's budget.
        background: the session answers the model at once and adds the result later.
        idempotent: a retry with the same ``tool_call_id`` returns the first result (stored in
            ``tool_results`` in the same transaction as the tool's writes).
        control: the reply carries a ``control`` directive (``end_call``, ``transfer_to_human``).
        read_only: the tool changes nothing, so re-running it is its own idempotency (no stored result).

    Raises:
        ValueError: bad name, a schema that is not a valid object schema, or ``fn`` not a coroutine function.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    fn: ToolFn
    timeout_ms: int = 5000
    background: bool = False
    idempotent: bool = True
    control: bool = False
    read_only: bool = False

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"tool name {self.name!r} must match [A-Za-z0-9_-]{{1,64}}")
        subjects.tool(self.name)
        if not self.description.strip():
            raise ValueError(f"tool {self.name} needs a description")
        if self.parameters.get("type") != "object":
            raise ValueError(f"tool {self.name}: parameters must be a JSON Schema with type object")
        try:
            Draft202012Validator.check_schema(self.parameters)
        except SchemaError as exc:
            raise ValueError(f"tool {self.name}: invalid parameters schema: {exc.message}") from None
        if not inspect.iscoroutinefunction(self.fn):
            raise ValueError(f"tool {self.name}: fn must be an async function")
        if self.timeout_ms <= 0:
            raise ValueError(f"tool {self.name}: timeout_ms must be positive")

    @property
    def spec(self) -> ToolSpec:
        """The registry entry (what the session turns into the model's tool list)."""
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters,
                        timeout_ms=self.timeout_ms, background=self.background, idempotent=self.idempotent,
                        control=self.control)

    @property
    def stores_result(self) -> bool:
        """True when the worker stores results for ``tool_call_id`` retries (idempotent and not read-only)."""
        return self.idempotent and not self.read_only

    async def __call__(self, ctx: ToolContext, arguments: Mapping[str, Any]) -> ToolResult:
        """Run the function with the declared arguments; a plain return value becomes the ``output``.

        Raises:
            ServiceCallError: raised by the tool (400/404/409/...).
            TypeError: the output is not JSON-serializable.
        """
        declared = self.parameters.get("properties", {})
        kwargs = {k: v for k, v in arguments.items() if k in declared}
        value = await self.fn(ctx, **kwargs)
        result = value if isinstance(value, ToolResult) else ToolResult(value)
        json.dumps(result.to_reply())  # TypeError/ValueError now rather than at reply time
        return result


def tool(
    *,
    parameters: dict[str, Any],
    name: str | None = None,
    description: str | None = None,
    timeout_ms: int = 5000,
    background: bool = False,
    idempotent: bool = True,
    control: bool = False,
    read_only: bool = False,
) -> Callable[[ToolFn], Tool]:
    """Decorator: make an async function a :class:`Tool` (name defaults to the function name, description to
    its docstring's first paragraph).

    Raises:
        ValueError: as :class:`Tool` (at import time, so a bad tool never reaches the registry).
    """

    def wrap(fn: ToolFn) -> Tool:
        doc = inspect.getdoc(fn) or ""
        text = description if description is not None else doc.split("\n\n", 1)[0].replace("\n", " ")
        return Tool(name=name or fn.__name__, description=text, parameters=parameters, fn=fn,
                    timeout_ms=timeout_ms, background=background, idempotent=idempotent, control=control,
                    read_only=read_only)

    return wrap


def tools_in_module(module: types.ModuleType) -> list[Tool]:
    """Every module-level :class:`Tool` in ``module``, in definition order."""
    return [value for value in vars(module).values() if isinstance(value, Tool)]

