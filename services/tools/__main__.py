"""``python -m services.tools`` — run a tool worker; ``python -m services.tools seed`` — seed demo data.

The worker serves every tool of ``SWITCHBOARD_TOOL_MODULES`` (default ``services.tools.receptionist``) as
nats.micro endpoints ``tools.<name>`` of the service ``switchboard-tools``, after migrating the database
(``SWITCHBOARD_DATABASE_URL``, default SQLite in the data dir) and seeding demo data (unless
``SWITCHBOARD_TOOLS_SEED=0``). Its metrics are served on ``SWITCHBOARD_TOOLS_METRICS_PORT``
(:mod:`shared.metrics_http`).
"""

from __future__ import annotations

import asyncio
import logging
import sys

from services.tools.db import Database
from services.tools.seed import seed
from services.tools.settings import ToolsSettings
from services.tools.worker import ToolWorker, load_tools
from shared.config import get_settings
from shared.metrics_http import serve_metrics
from shared.runtime import ServiceContext, run_service

log = logging.getLogger("services.tools")


async def main(ctx: ServiceContext) -> None:
    """Migrate, seed, register the endpoints and serve until ``ctx.stopping``; then drain
    (:meth:`ToolWorker.drain`: no new requests, the ones in flight answered) before the database closes."""
    metrics = serve_metrics(ctx.settings.tools_metrics_port, ctx.settings.host,
                            variable="SWITCHBOARD_TOOLS_METRICS_PORT")
    if metrics is not None:
        ctx.stack.callback(metrics.close)
    settings = ToolsSettings()
    tools = load_tools(settings.modules)
    database = Database(ctx.settings.effective_database_url)
    ctx.stack.push_async_callback(database.dispose)
    await database.migrate()
    if settings.tools_seed:
        report = await seed(database, settings)
        log.info("seed: %d customers (%d added)", report.customers_total, report.customers_added)
    worker = ToolWorker(tools, database=database, settings=settings)
    await worker.register(ctx.bus, ctx.micro, replicas=ctx.settings.js_replicas)
    await ctx.stopping.wait()
    await worker.drain(ctx.bus, ctx.micro)


async def seed_command() -> int:
    """Migrate and seed the configured database; print what was done."""
    database = Database(get_settings().effective_database_url)
    try:
        await database.migrate()
        report = await seed(database, ToolsSettings())
    finally:
        await database.dispose()
    print(f"database: {database.engine.url.render_as_string(hide_password=True)}")
    print(f"customers: {report.customers_total} ({report.customers_added} added)")
    a = report.appointment
    if a is not None:
        made = "created" if report.appointment_created else "existing"
        print(f"John Smith's appointment ({made}): #{a.id} {a.slot_date.isoformat()} {a.slot_time.strftime('%H:%M')}")
    else:
        print("no free slot for John Smith's appointment")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["seed"]:
        sys.exit(asyncio.run(seed_command()))
    if sys.argv[1:]:
        print("usage: python -m services.tools [seed]", file=sys.stderr)
        sys.exit(2)
    run_service("tools", main)
