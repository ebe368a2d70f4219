"""Wiring of the recorder: database, archive, stream consumers, finalizer and the HTTP API.

:class:`Recorder` runs the consumers and the finalizer (usable in-process by tests and the benchmark);
:func:`main` is the service entry point (``python -m services.recorder``). The API binds loopback unless
``SWITCHBOARD_API_TOKEN`` is set (then ``SWITCHBOARD_HOST``) on ``SWITCHBOARD_RECORDER_PORT`` (8081).
``SWITCHBOARD_RECORDER_CONSUMER`` (default ``recorder``) prefixes the durable consumer names; run one
recorder per database (the hash chains need a single writer): a second one waits for the writer lease
(``services/recorder/lease.py``) before it binds any consumer. ``SWITCHBOARD_RECORDER_LOST_AFTER_S`` (600)
is the idle time after which an open call is ended as ``lost`` (``services/recorder/finalize.py``). With
``SWITCHBOARD_AUDIT_KEY`` the chain heads are signed and published to the ``AUDIT`` stream
(``services/recorder/checkpoints.py``). Caller content is sealed under per-call keys (``SWITCHBOARD_ARCHIVE_KEY``;
``services/recorder/crypto.py``) and erased on request or after ``retention_days`` /
``SWITCHBOARD_RETENTION_DAYS``, swept every ``SWITCHBOARD_RETENTION_INTERVAL_S`` (``services/recorder/erasure.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from services.recorder.api import create_app
from services.recorder.archive import Archive
from services.recorder.checkpoints import INTERVAL_S, Checkpointer, ensure_audit_stream, private_key
from services.recorder.consumer import StreamConsumer
from services.recorder.db import open_database
from services.recorder.erasure import Eraser, Retention
from services.recorder.finalize import Finalizer
from services.recorder.lease import WriterLease
from services.recorder.vault import Vault, configured_vault
from shared import health, subjects
from shared.bus import Bus
from shared.config import get_settings
from shared.health import Readiness
from shared.runtime import ServiceContext, serve_http

__all__ = ["Recorder", "main"]

log = logging.getLogger(__name__)


async def _stop_when_lost(lease: WriterLease, stopping: asyncio.Event) -> None:
    await lease.lost.wait()
    stopping.set()


class Recorder:
    """Consumers for CALLS, RT and TRACES plus the finalizer, over one engine and bus. ``guard`` (the writer
    lease's ``valid``) is checked by the consumers before every batch they persist."""

    def __init__(self, bus: Bus, engine: AsyncEngine, data_dir: Path, *, durable_prefix: str = "recorder",
                 batch: int = 512, settle_s: float = 1.0, track_lag: bool = False,
                 lost_after_s: float = 600.0, recordings_dir: Path | None = None,
                 audit_key: str | None = None, checkpoint_interval_s: float = INTERVAL_S,
                 js_replicas: int = 1, vault: Vault | None = None, retention: Retention | None = None,
                 retention_interval_s: float = 3600.0, guard: Callable[[], bool] | None = None) -> None:
        self.bus = bus
        settings = get_settings()
        self.vault = vault or Vault(configured_vault().kms)
        """Per-call data keys sealing caller content (``SWITCHBOARD_ARCHIVE_KEY``; services/recorder/vault.py);
        its own writer cache, which the recorder's :attr:`eraser` clears."""
        self.checkpointer = (Checkpointer(engine, bus.js, private_key(audit_key), interval_s=checkpoint_interval_s)
                             if audit_key else None)
        """Signs and publishes chain heads to the AUDIT stream (None without ``SWITCHBOARD_AUDIT_KEY``)."""
        self.js_replicas = js_replicas
        self.engine = engine
        self.archive = Archive(engine, vault=self.vault)
        self.recordings_dir = recordings_dir or data_dir / "recordings"
        self.finalizer = Finalizer(engine, self.archive, self.recordings_dir, self._last_seq,
                                   settle_s=settle_s, lost_after_s=lost_after_s)
        self.eraser = Eraser(engine, self.vault, bus, self.recordings_dir, archive=self.archive,
                             retention=retention or Retention(settings.retention_days, Path(settings.agent).parent))
        """Erasure on request and by retention (services/recorder/erasure.py)."""
        self.retention_interval_s = retention_interval_s
        self.consumers = [
            StreamConsumer(bus.nc, self.archive, spec, durable_prefix=durable_prefix, batch=batch,
                           on_batch=self.finalizer.on_batch, track_lag=track_lag, guard=guard)
            for spec in (subjects.CALLS_STREAM, subjects.RT_STREAM, subjects.TRACES_STREAM)
        ]
        self.stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def _last_seq(self, stream: str) -> int:
        info = await self.bus.js.stream_info(stream)
        return int(info.state.last_seq or 0)

    def ready(self) -> bool:
        """True once every consumer is bound to its stream."""
        return all(c.ready.is_set() for c in self.consumers)

    def readiness(self, *, stall_s: float = health.STALL_S) -> Readiness:
        """Readiness (not started) for ``/readyz``: consumers bound, the NATS connection answers a PING, the
        database answers ``SELECT 1``, and no durable consumer has a backlog without progress for ``stall_s``."""
        checks = [health.flag("consumers bound", self.ready, "binding to the streams"),
                  health.nats_connection(self.bus.nc), health.database(self.engine)]
        checks += [health.jetstream_consumer(self.bus.js, c.stream.name, c.durable, stall_s=stall_s)
                   for c in self.consumers]
        return Readiness(checks)

    async def start(self) -> None:
        """Start consuming; returns once every consumer is bound."""
        await self.finalizer.load_pending()
        for consumer in self.consumers:
            self._tasks.add(asyncio.create_task(consumer.run(self.stopping), name=f"consume-{consumer.durable}"))
        self._tasks.add(asyncio.create_task(self.finalizer.run(self.stopping), name="finalizer"))
        self._tasks.add(asyncio.create_task(self.eraser.run(self.stopping, self.retention_interval_s),
                                            name="retention"))
        if self.checkpointer is not None:
            await ensure_audit_stream(self.bus.js, replicas=self.js_replicas)
            self._tasks.add(asyncio.create_task(self.checkpointer.run(self.stopping), name="checkpoints"))
        else:
            log.warning("no SWITCHBOARD_AUDIT_KEY: the archive's chain heads are not signed")
        ready: asyncio.Future[list[bool]] = asyncio.ensure_future(
            asyncio.gather(*(c.ready.wait() for c in self.consumers)))
        try:
            pending: list[asyncio.Future[Any]] = [ready, *self._tasks]
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED, timeout=60)
        finally:
            ready.cancel()
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if not self.ready():
            raise TimeoutError("the recorder's consumers did not bind to their streams within 60 s")

    async def stop(self) -> None:
        """Stop after the batches in flight are committed."""
        self.stopping.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=15)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def main(ctx: ServiceContext) -> None:
    """Run the recorder service until ``ctx.stopping``: wait for the single-writer lease
    (:class:`~services.recorder.lease.WriterLease`), consume while holding it, and on SIGTERM commit and ack the
    batch in flight, stop pulling and release the lease; losing the lease stops the service."""
    settings = ctx.settings
    engine = await open_database(settings.effective_database_url)
    ctx.stack.push_async_callback(engine.dispose)
    prefix = os.environ.get("SWITCHBOARD_RECORDER_CONSUMER") or "recorder"
    lease = WriterLease(ctx.bus.js, prefix, replicas=settings.js_replicas)
    if not await lease.acquire(ctx.stopping):
        return
    ctx.stack.push_async_callback(lease.release)  # closed after recorder.stop: the last batch is acked first
    ctx.spawn(lease.keep(), name="recorder-lease")
    ctx.spawn(_stop_when_lost(lease, ctx.stopping), name="recorder-lease-watch")
    recorder = Recorder(ctx.bus, engine, settings.data_dir, guard=lease.valid,
                        durable_prefix=prefix,
                        lost_after_s=settings.recorder_lost_after_s,
                        recordings_dir=settings.effective_recordings_dir, audit_key=settings.audit_key,
                        js_replicas=settings.js_replicas, retention_interval_s=settings.retention_interval_s)
    await recorder.start()
    ctx.stack.push_async_callback(recorder.stop)
    readiness = recorder.readiness()
    readiness.start()
    ctx.stack.push_async_callback(readiness.stop)
    host = settings.host if settings.api_token else "127.0.0.1"
    app = create_app(engine, api_token=settings.api_token, bus=ctx.bus, ready=readiness,
                     recordings_dir=settings.effective_recordings_dir, eraser=recorder.eraser)
    log.info("recorder API on http://%s:%d (database %s)", host, settings.recorder_port,
             engine.url.render_as_string(hide_password=True))
    await serve_http(ctx, app, host, settings.recorder_port)
