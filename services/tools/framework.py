"""The tool model: :class:`Tool`, the :func:`tool` decorator, and the request/result/context types.

A tool is a typed async function plus a JSON Schema for its arguments::

    @tool(parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
    async def get_weather(ctx: ToolContext, city: str) -> dict[str, Any]:
        \"\"\"Current weather for a city.\"\"\"
        ...

The decorator returns a :class:`Tool`; a worker serves every module-level Tool of the modules it is told to
load (:func:`tools_in_module`). Tools discovered at run time (e.g. from an MCP server) are built directly with
``Tool(name=..., description=..., parameters=..., fn=...)`` — no decorator needed.

Wire format (docs/tools.md, "Wire contract"): the request on ``tools.<name>`` is
:class:`~shared.contracts.ToolRequest`, the reply :class:`~shared.contracts.ToolResult` (``{"output": <JSON>}`` plus
an optional ``"control"`` directive; both re-exported here for tool authors). Errors are
:class:`~shared.errors.ServiceCallError` subclasses whose code travels as ``Nats-Service-Error-Code`` and whose
message, safe to speak to a caller, as ``Nats-Service-Error``.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import re
import time
import types
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from shared import subjects
from shared.contracts import CallInfo, ToolRequest, ToolResult
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
        json.dumps(result.encode())  # TypeError/ValueError now rather than at reply time
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

