"""Wiring of the analytics service (``python -m services.analytics``): database, the KPI consumer, the
post-call webhook (when ``SWITCHBOARD_WEBHOOK_URL`` is set) and the HTTP API on
``SWITCHBOARD_ANALYTICS_PORT`` (8082; loopback unless ``SWITCHBOARD_API_TOKEN`` is set, then
``SWITCHBOARD_HOST``). ``SWITCHBOARD_ANALYTICS_CONSUMER`` (default ``analytics``) prefixes the durable names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from services.analytics import metrics
from services.analytics.api import create_app
from services.analytics.consumer import AnalyticsConsumer
from services.analytics.db import open_database
from services.analytics.store import BatchOutcome
from services.analytics.webhook import WebhookSender
from shared import health, subjects
from shared.health import Readiness
from shared.runtime import ServiceContext, serve_http

__all__ = ["main"]

log = logging.getLogger(__name__)


async def main(ctx: ServiceContext) -> None:
    """Run the analytics service until ``ctx.stopping``."""
    settings = ctx.settings
    engine = await open_database(settings.effective_database_url)
    ctx.stack.push_async_callback(engine.dispose)
    prefix = os.environ.get("SWITCHBOARD_ANALYTICS_CONSUMER") or "analytics"

    async def on_batch(stream: str, outcome: BatchOutcome) -> None:
        metrics.observe(stream, outcome)

    consumer = AnalyticsConsumer(ctx.bus.js, engine, durable_prefix=prefix, on_batch=on_batch)
    stopping = asyncio.Event()
    tasks = [asyncio.create_task(consumer.run(stopping), name="analytics-consumer")]
    webhook: WebhookSender | None = None
    if settings.webhook_url:
        webhook = WebhookSender(ctx.bus, engine, settings.webhook_url, settings.webhook_secret,
                                durable=f"{prefix}-webhook")
        tasks.append(asyncio.create_task(webhook.run(stopping), name="analytics-webhook"))
        await ctx.bus.add_endpoint(ctx.micro, name="webhook", subject=subjects.webhook_status(),
                                   handler=webhook.answer_status)

    async def stop() -> None:
        stopping.set()
        await asyncio.wait(tasks, timeout=15)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    ctx.stack.push_async_callback(stop)
    bound = asyncio.ensure_future(consumer.ready.wait())
    try:
        await asyncio.wait([bound, *tasks], return_when=asyncio.FIRST_COMPLETED, timeout=60)
    finally:
        bound.cancel()
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    if not consumer.ready.is_set():
        raise TimeoutError("the analytics consumer did not bind to the streams within 60 s")
    checks = [health.flag("consumer bound", consumer.ready.is_set, "binding to the streams"),
              health.nats_connection(ctx.bus.nc), health.database(engine)]
    checks += [health.jetstream_consumer(ctx.bus.js, s.name, consumer.durable(s))
               for s in (subjects.CALLS_STREAM, subjects.RT_STREAM)]
    readiness = Readiness(checks)
    readiness.start()
    ctx.stack.push_async_callback(readiness.stop)
    host = settings.host if settings.api_token else "127.0.0.1"
    app = create_app(engine, api_token=settings.api_token, ready=readiness)
    log.info("analytics API on http://%s:%d", host, settings.analytics_port)
    await serve_http(ctx, app, host, settings.analytics_port)
