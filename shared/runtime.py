"""Running a service process: settings, telemetry, the bus, readiness and a graceful stop.

Every ``python -m services.<name>`` calls :func:`run_service` with its ``main(ctx)`` coroutine:

1. JSON logging and OpenTelemetry for ``switchboard-<name>``;
2. connect the :class:`~shared.bus.Bus` (retrying), ensure the JetStream streams, publish finished spans to
   ``otel.spans`` when no OTLP endpoint is configured;
3. register the nats.micro service ``switchboard-<name>`` (``$SRV.PING/INFO/STATS`` = readiness);
4. :func:`tune_gc`: the start-up heap is frozen out of garbage collection and young-generation collections
   are made rarer, so collector pauses stay off the media path;
5. run ``main(ctx)``; SIGTERM/SIGINT set ``ctx.stopping``: the service stops taking new work, and whatever
   it pushed on ``ctx.stack`` is closed in reverse order, then the bus drains and telemetry flushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from shared.bus import Bus, Headers
from shared.config import Settings, get_settings
from shared.tasks import TaskSet
from shared.telemetry import NatsSpanExporter, Telemetry, setup_logging, setup_telemetry

__all__ = ["GC_GEN0_THRESHOLD", "ServiceContext", "install_uvloop", "run_service", "serve_http", "start_service",
           "tune_gc"]

log = logging.getLogger(__name__)

GC_GEN0_THRESHOLD = 50_000
"""Net container allocations between young-generation collections (CPython's default: 700)."""


def install_uvloop() -> bool:
    """Make uvloop (shipped with ``uvicorn[standard]``, a declared dependency) the event loop of this process's
    later ``asyncio.run``; returns False, changing nothing, when it cannot be imported.

    For the services that do socket I/O per audio frame (the gateway, the session): uvloop's loop costs less each
    time it wakes from idle, which a lightly loaded session does for every message (``bench/session.py``'s paced
    rounds; ``docs/session.md``).
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] installs it
        return False
    uvloop.install()
    return True


def tune_gc() -> int:
    """Keep garbage-collector pauses off the media path; call once per process, after start-up. Returns the
    number of objects frozen.

    - A full collection, then ``gc.freeze()`` (https://docs.python.org/3/library/gc.html#gc.freeze): every object
      alive after start-up (modules, the OTel SDK, SQLAlchemy, pydantic models: ~133,000 tracked objects after
      importing the gateway, session, tools and recorder modules) moves to the permanent generation, which later
      collections do not scan, so a full collection no longer stops the event loop for several audio frames.
    - Young-generation threshold :data:`GC_GEN0_THRESHOLD` instead of 700: short-lived objects are freed by
      reference counting; what the collector finds is the few that survive, so it runs a few times where it ran
      hundreds (``bench/tools.py``).

    Frozen objects are never collected, so this is for a service process's entry point, not for code that
    runs inside a test process.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
    return gc.get_freeze_count()


@dataclass
class ServiceContext:
    """What a service's ``main`` receives.

    Attributes:
        name: the service name (``gateway``, ``session``, …).
        settings: the process settings.
        bus: the connected bus (source = ``name``).
        stopping: set on SIGTERM/SIGINT; ``main`` should return soon after.
        stack: exit stack closed (reverse order) when the service stops.
        micro: the nats.micro service ``switchboard-<name>``.
        telemetry: tracer/meter providers.
    """

    name: str
    settings: Settings
    bus: Bus
    stopping: asyncio.Event
    stack: AsyncExitStack
    micro: Any
    telemetry: Telemetry
    tasks: TaskSet = field(default_factory=lambda: TaskSet("service", log))

    def spawn(self, coro: Awaitable[Any], *, name: str | None = None) -> asyncio.Task[Any]:
        """Start a supervised background task (kept referenced; exceptions logged; cancelled at stop)."""
        return self.tasks.spawn(coro, name=name)


async def start_service(name: str, settings: Settings | None = None, *, metadata: dict[str, str] | None = None,
                        install_signals: bool = False) -> ServiceContext:
    """Set up telemetry, bus, streams and the micro service for ``name``; returns the context.

    Tests use this directly to run a service in-process; :func:`run_service` wraps it for ``__main__``.
    """
    settings = settings or get_settings()
    telemetry = setup_telemetry(f"switchboard-{name}")
    if settings.insecure_dev:
        log.warning("SWITCHBOARD_INSECURE_DEV=true: unsigned carrier requests are accepted (development only)")
    bus = await Bus.connect(settings.effective_nats_url, name=f"switchboard-{name}", source=name,
                            options=settings.nats_options(identity=name))
    await bus.ensure_streams(settings)
    if not telemetry.otlp:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from shared.subjects import OTEL_SPANS

        async def publish_spans(records: list[tuple[bytes, str | None]]) -> None:
            for payload, call_id in records:
                if bus.nc.is_closed:
                    return
                headers = {Headers.CALL_ID: call_id} if call_id else None
                await bus.nc.publish(OTEL_SPANS, payload, headers=headers)

        telemetry.add_span_processor(BatchSpanProcessor(
            NatsSpanExporter(publish_spans, asyncio.get_running_loop()), schedule_delay_millis=500))
    micro = await bus.add_service(f"switchboard-{name}", description=f"Switchboard {name} service",
                                  metadata=metadata or {})
    stopping = asyncio.Event()
    if install_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
    return ServiceContext(name, settings, bus, stopping, AsyncExitStack(), micro, telemetry)


async def stop_service(ctx: ServiceContext) -> None:
    """Close what ``main`` registered, cancel leftover tasks, stop the micro service, drain the bus."""
    ctx.stopping.set()
    await ctx.stack.aclose()
    if left := ctx.tasks.cancel():
        await asyncio.wait(left, timeout=5)
    with contextlib.suppress(Exception):
        await ctx.micro.stop()
    ctx.telemetry.tracer_provider.force_flush(2000)
    await ctx.bus.close()


def run_service(name: str, main: Callable[[ServiceContext], Awaitable[None]], *,
                metadata: dict[str, str] | None = None) -> None:
    """Run ``main(ctx)`` as the process's service until it returns or SIGTERM/SIGINT arrives."""
    setup_logging(f"switchboard-{name}")

    async def runner() -> None:
        ctx = await start_service(name, metadata=metadata, install_signals=True)
        frozen = tune_gc()
        log.info("service %s started on %s's event loop (%d start-up objects frozen out of garbage collection)",
                 name, type(asyncio.get_running_loop()).__module__.split(".")[0], frozen)
        main_task: asyncio.Future[None] = asyncio.ensure_future(main(ctx))
        stop_task: asyncio.Future[Any] = asyncio.ensure_future(ctx.stopping.wait())
        try:
            done, _ = await asyncio.wait({main_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if main_task in done and main_task.exception() is not None:
                log.error("service %s main failed", name, exc_info=main_task.exception())
        finally:
            stop_task.cancel()
            if not main_task.done():
                # main saw ctx.stopping; give it time to finish its own shutdown (a drain: SWITCHBOARD_DRAIN_S)
                with contextlib.suppress(asyncio.TimeoutError, Exception):
                    await asyncio.wait_for(asyncio.shield(main_task), ctx.settings.drain_s + 10)
                main_task.cancel()
            await stop_service(ctx)
            log.info("service %s stopped", name)

    asyncio.run(runner())


async def serve_http(ctx: ServiceContext, app: Any, host: str, port: int, *,
                     before_stop: Callable[[], Awaitable[None]] | None = None) -> None:
    """Serve the ASGI ``app`` with uvicorn on ``host:port`` until ``ctx.stopping`` is set; then await
    ``before_stop()`` (e.g. the gateway's drain; the server keeps serving meanwhile) and stop uvicorn.

    Raises:
        OSError: the port cannot be bound.
    """
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on",
                            ws_max_size=1 << 20, access_log=False)
    server = uvicorn.Server(config)
    # the service's own SIGTERM/SIGINT handlers (run_service) decide when to stop, not uvicorn's
    setattr(server, "capture_signals", contextlib.nullcontext)  # noqa: B010
    serve_task = asyncio.create_task(server.serve())
    stop_task = asyncio.create_task(ctx.stopping.wait())
    try:
        await asyncio.wait({serve_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if before_stop is not None and not serve_task.done():
            try:
                await before_stop()
            except Exception:
                log.exception("shutdown hook failed")
    finally:
        server.should_exit = True
        stop_task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serve_task, 10)
    if serve_task.done() and not serve_task.cancelled() and serve_task.exception():
        raise serve_task.exception()  # type: ignore[misc]
