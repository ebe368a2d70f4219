"""nats.micro services and endpoints for :class:`shared.bus.Bus` (see :mod:`shared.bus`).

Errors cross the wire as nats.micro service errors (``Nats-Service-Error-Code`` and a speakable message),
never as a ``repr`` of an exception.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from nats.aio.client import Client as NATS
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from shared.bus.envelope import Dispatcher, Envelope, Payload, encode_payload
from shared.bus.wire import flush_shielded
from shared.errors import ServiceCallError

__all__ = ["HeaderFactory", "Micro"]

log = logging.getLogger("shared.bus")


HeaderFactory = Callable[[str | None, Mapping[str, str] | None], dict[str, str]]
"""``(call_id, extra) -> headers``: the bus's standard headers for a message (here: a reply)."""


class Micro:
    """nats.micro registration, a part of :class:`~shared.bus.Bus` (which delegates to it).

    Each request's handler runs in its own task, shielded from the endpoint's subscription: stopping the
    nats.micro service (``service.stop()`` unsubscribes, which cancels nats-py's message loop) takes no new
    requests but lets the ones in flight finish and reply; :meth:`requests_done` waits for them (a draining
    worker, design.md "Tools").

    Args:
        nc: the NATS connection.
        bus: what endpoint handlers run through (trace context and SERVER span; the owning bus).
        headers: the bus's standard headers, put on every reply.
    """

    def __init__(self, nc: NATS, bus: Dispatcher, headers: HeaderFactory) -> None:
        self.nc = nc
        self._bus = bus
        self._headers = headers
        self._in_flight: set[asyncio.Task[None]] = set()

    async def add_service(self, name: str, *, version: str = "0.1.0", description: str = "",
                          metadata: Mapping[str, str] | None = None) -> Any:
        """Register a nats.micro service ``name`` (answers ``$SRV.PING/INFO/STATS``); returns it.

        Every Switchboard service registers ``switchboard-<service>`` so ``switchboard up`` and
        ``switchboard status`` can find it.
        """
        from nats.micro import add_service

        return await add_service(self.nc, name=name, version=version, description=description,
                                 metadata=dict(metadata or {}))

    async def add_endpoint(
        self,
        service: Any,
        *,
        name: str,
        subject: str,
        handler: Callable[[Envelope], Awaitable[Payload]],
        queue_group: str = "q",
        metadata: Mapping[str, str] | None = None,
        span_name: str | None = None,
        span_attributes: Mapping[str, Any] | None = None,
    ) -> None:
        """Add a request/reply endpoint to a nats.micro ``service``.

        ``handler(env)`` returns the reply payload, or raises :class:`ServiceCallError` (sent as a
        nats.micro error with its code and speakable message). Any other exception becomes a 500 with a
        generic message (logged with the trace id; never a stack trace or ``repr`` to the peer). The handler
        runs in a SERVER span (``span_name``, default ``process <template>``) in the caller's trace. The
        Envelope is built from the request's public ``subject``/``data``/``headers`` (it has no ``reply``: the
        answer is the handler's return value).
        """
        from nats.micro.request import Request

        async def micro_handler(request: Request) -> None:
            task = asyncio.ensure_future(serve(request))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            await asyncio.shield(task)

        async def serve(request: Request) -> None:
            env = Envelope.from_parts(request.subject, request.data, request.headers, self._bus)

            async def run(e: Envelope) -> None:
                span = trace.get_current_span()
                try:
                    reply = await handler(e)
                except ServiceCallError as exc:
                    span.set_status(Status(StatusCode.ERROR, exc.message))
                    span.set_attribute("error.type", str(exc.code))
                    await request.respond_error(str(exc.code), exc.message)
                    return
                except Exception as exc:
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    span.set_attribute("error.type", type(exc).__name__)
                    log.exception("endpoint %s failed", name)
                    await request.respond_error("500", "Something went wrong on our side.")
                    return
                await request.respond(encode_payload(reply), headers=self._headers(None, None))

            await self._bus.dispatch(env, run, traced=True, span_name=span_name, attributes=span_attributes,
                                kind=SpanKind.SERVER)

        await service.add_endpoint(name=name, subject=subject, handler=micro_handler, queue_group=queue_group,
                                   metadata=dict(metadata or {}))
        await flush_shielded(self.nc)  # the server knows the endpoint before we return

    @property
    def requests_in_flight(self) -> int:
        """Endpoint requests being handled now (their replies not yet sent)."""
        return len(self._in_flight)

    async def requests_done(self, timeout: float) -> bool:
        """Wait until no endpoint request is in flight, at most ``timeout`` s; True when none is left.

        Stop the nats.micro service first (no new requests), then call this before closing the connection.
        """
        pending = set(self._in_flight)
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        return not any(not t.done() for t in pending)
