"""The tool worker: serves :class:`~services.tools.framework.Tool` objects as nats.micro endpoints.

Each tool is an endpoint ``tools.<name>`` (subject from :func:`shared.subjects.tool`) in the queue group
``tools`` of the service ``switchboard-tools``, so any number of workers share the load and a request goes to
exactly one of them. The specs are put in the tool registry (KV ``switchboard_tools``) for the session.

Per request (:meth:`ToolWorker.execute`):

1. parse the request (:class:`~services.tools.framework.ToolRequest`) → 400 when malformed;
2. validate the arguments against the tool's JSON Schema → 400 with a speakable message, before any side
   effect;
3. run the tool under the request's deadline → 504 when it cannot finish in time (its transaction is rolled
   back). The deadline is the earlier of the ``Switchboard-Deadline`` header (absolute, unix ms) and the body's
   ``deadline_ms`` (relative to when the request was read; default the tool's ``timeout_ms``). A request whose
   deadline has already passed when it is read is refused (504) before validation, and a transaction commits
   only if the deadline still holds right before the commit (:func:`~services.tools.results.deadline_holds`),
   so a worker stalled past the deadline never acts on a request its caller has given up on;
4. for idempotent writing tools with a ``tool_call_id``: at most once (:func:`~services.tools.results.run_once`).

The endpoint runs in the bus's SERVER span ``process tools.<name>`` (created by :mod:`shared.bus`), and the tool
inside an INTERNAL span ``execute_tool <name>`` with ``gen_ai.operation.name="execute_tool"``,
``gen_ai.tool.name``, ``gen_ai.tool.type`` and ``gen_ai.tool.call.id`` (OTel GenAI semantic conventions,
https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/#execute-tool-span). Errors are
nats.micro errors (``Nats-Service-Error-Code`` 400/404/409/500/504 and a speakable message), logged with the
trace id; never a stack trace to the peer.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import AsyncSession

from services.tools.db import Database
from services.tools.framework import InvalidArguments, Tool, ToolContext, tools_in_module
from services.tools.results import deadline_holds, run_lazy, run_once
from services.tools.settings import ToolsSettings
from services.tools.validation import ArgumentValidator
from shared import health, subjects, tool_registry
from shared.bus import Bus, Envelope
from shared.contracts import ContractError, ToolRequest, ToolResult
from shared.errors import ServiceCallError

__all__ = ["QUEUE_GROUP", "ToolWorker", "load_tools"]

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("switchboard.tools")

QUEUE_GROUP = "tools"
"""Queue group of every tool endpoint (one worker answers each request)."""


def load_tools(module_names: Iterable[str]) -> list[Tool]:
    """Import each module and collect its module-level tools.

    Raises:
        ImportError: a module cannot be imported.
        ValueError: a module holds no tools, or two modules define the same tool name.
    """
    tools: dict[str, Tool] = {}
    for name in module_names:
        module = importlib.import_module(name)
        found = tools_in_module(module)
        if not found:
            raise ValueError(f"tool module {name} defines no tools")
        for t in found:
            if t.name in tools and tools[t.name] is not t:
                raise ValueError(f"tool {t.name} is defined twice (second time in {name})")
            tools[t.name] = t
    return list(tools.values())


class ToolWorker:
    """Serves tools on the bus; :meth:`execute` is the transport-free core (benchmarks and tests call it).

    Raises:
        ValueError: two tools share a name.
    """

    def __init__(self, tools: Sequence[Tool], *, database: Database, settings: ToolsSettings | None = None) -> None:
        names = [t.name for t in tools]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate tool names in {names}")
        self.tools = {t.name: t for t in tools}
        self.database = database
        self.settings = settings or ToolsSettings()
        self._validators = {t.name: ArgumentValidator(t.parameters) for t in tools}
        self.readiness = health.Readiness()
        """Started by :meth:`register`."""

    async def register(self, bus: Bus, service: Any, *, replicas: int = 1) -> None:
        """Add one endpoint per tool to the nats.micro ``service``, publish the specs to the registry and
        answer readiness on ``switchboard.ready.tools`` (:attr:`readiness`: NATS round trip, ``SELECT 1``)."""
        for t in self.tools.values():
            await bus.add_endpoint(
                service, name=t.name, subject=subjects.tool(t.name), handler=self._endpoint(t),
                queue_group=QUEUE_GROUP,
                metadata={"timeout_ms": str(t.timeout_ms), "idempotent": str(t.idempotent).lower(),
                          "control": str(t.control).lower()},
            )
        await tool_registry.publish(bus.js, [t.spec for t in self.tools.values()], replicas=replicas)
        self.readiness.add(health.nats_connection(bus.nc))
        self.readiness.add(health.database(self.database.engine))
        self.readiness.start(until=lambda: bus.nc.is_closed)
        await health.answer_on_bus(bus, "tools", self.readiness)
        log.info("serving tools %s", ", ".join(self.tools))

    async def drain(self, bus: Bus, service: Any) -> bool:
        """Stop serving (SIGTERM): stop the nats.micro ``service`` — its endpoints leave the queue group, so
        new requests go to other workers — then wait for the requests in flight to finish and reply, at most
        the longest tool ``timeout_ms`` + 1 s (a request's default deadline).
        Returns True when none was left unfinished."""
        await service.stop()
        limit = max((t.timeout_ms for t in self.tools.values()), default=0) / 1000 + 1.0
        if bus.requests_in_flight:
            log.info("draining: %d tool request(s) in flight", bus.requests_in_flight)
        done = await bus.requests_done(limit)
        if not done:
            log.warning("drain: %d tool request(s) still running after %.1f s", bus.requests_in_flight, limit)
        return done

    def _endpoint(self, t: Tool) -> Any:
        attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": t.name,
                      "gen_ai.tool.type": "function"}

        async def handle(env: Envelope) -> dict[str, Any]:
            received = time.monotonic()
            call = {"switchboard.call_id": env.call_id} if env.call_id else {}
            with _tracer.start_as_current_span(f"execute_tool {t.name}", kind=SpanKind.INTERNAL,
                                               attributes={**attributes, **call}) as span:
                try:
                    try:
                        request = ToolRequest.parse(env.data, env.headers)
                    except ContractError as exc:  # a sentence safe to speak, sent back as a 400
                        raise InvalidArguments(exc.problem) from None
                    if request.tool_call_id:
                        span.set_attribute("gen_ai.tool.call.id", request.tool_call_id)
                    result = await self.execute(t, request, received=received)
                except ServiceCallError as exc:  # logged with the trace id (JSON log formatter), a micro error
                    span.set_attribute("error.type", str(exc.code))
                    log.log(logging.WARNING if exc.code >= 500 else logging.INFO, "tool %s answered %d: %s",
                            t.name, exc.code, exc.message)
                    raise
            return result.encode()

        return handle

    async def execute(self, t: Tool, request: ToolRequest, *, received: float | None = None) -> ToolResult:
        """Validate, then run ``t`` for ``request`` within its deadline (at most once when idempotent).

        ``received`` is the ``time.monotonic()`` reading when the request was read (default: now); a relative
        ``deadline_ms`` counts from it, an absolute deadline (``Switchboard-Deadline`` header) does not.

        Raises:
            ServiceCallError: 400 invalid arguments (nothing written), 404/409 from the tool, 504 when the
                deadline had passed on arrival (the tool is not run) or passes before the commit (rolled back).
        """
        start = received if received is not None else time.monotonic()
        deadline = request.deadline_at(start, t.timeout_ms)
        deadline_holds(deadline)  # expired on arrival (e.g. read after a stall): refused, nothing runs
        self._validators[t.name].validate(request.arguments)
        ctx = ToolContext(tool=t.name, call=request.call, tool_call_id=request.tool_call_id,
                          deadline=deadline, settings=self.settings, open_session=self.database.sessions)

        async def in_transaction(session: AsyncSession) -> ToolResult:
            ctx.db = session
            return await t(ctx, request.arguments)

        if t.stores_result and request.tool_call_id:
            result, replayed = await run_once(self.database.sessions, t.name, request.tool_call_id,
                                              request.call.call_id, in_transaction, deadline=deadline)
            if replayed:
                trace.get_current_span().set_attribute("switchboard.tool.replayed", True)
            return result
        return await run_lazy(ctx, lambda: t(ctx, request.arguments))
