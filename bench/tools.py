"""Tool benchmark: a tool call through the bus vs the same call in-process, measured in the same run.

For a no-op tool and for ``book_appointment`` (a real booking: validation, idempotency claim, slot check,
insert, stored result, commit) it prints p50/p99 latency (ms) and requests/s of

- ``direct``: :meth:`ToolWorker.execute` in-process (the same work without the transport), and for the no-op
  also the bare function call;
- ``raw``: nats-py request → nats-py responder, no headers or spans: the transport floor;
- ``bus endpoint, trivial handler``: ``Bus.request`` → ``Bus.add_endpoint`` with a handler that only returns
  (the bus layer's own cost: headers, trace context, spans, nats.micro);
- ``bus``: :func:`services.tools.client.call_tool` → NATS request → nats.micro endpoint (SERVER span, JSON,
  headers) → the same ``execute`` → reply;

and the bus overhead (bus − direct) at p50 and p99 (target: ≤ 0.5 ms at p99). Sequential requests measure
latency; ``--concurrency`` requests in flight measure throughput (one worker process: nats.micro handles an
endpoint's requests one at a time). Telemetry is on, as in production (spans exported to ``otel.spans``).

Run: ``.venv/bin/python bench/tools.py [--n 1000] [--database-url postgresql+asyncpg://...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from _sdk_off import sdk_off_figures

from services.tools.client import call_tool
from services.tools.db import Database
from services.tools.framework import Tool, ToolContext
from services.tools.settings import ToolsSettings
from services.tools.worker import ToolWorker, load_tools
from shared import tool_registry
from shared.bus import Bus, Envelope
from shared.config import load_settings
from shared.contracts import CallInfo, ToolRequest
from shared.runtime import ServiceContext, start_service, stop_service, tune_gc
from switchboard import natsserver
from switchboard.natsserver import EmbeddedNats

CALL = CallInfo("bench-call", "+15551230001", "+15559870000", "receptionist")


async def _noop_fn(ctx: ToolContext) -> dict[str, Any]:
    return {"ok": True}


NOOP = Tool(name="bench_noop", description="Does nothing.", parameters={"type": "object", "properties": {}},
            fn=_noop_fn, read_only=True)


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def slots(settings: ToolsSettings) -> Iterator[tuple[str, str]]:
    """Every bookable (date, time) from tomorrow on, in order."""
    first = dt.datetime.now(settings.tzinfo).date() + dt.timedelta(days=1)
    step = dt.timedelta(minutes=settings.clinic_slot_minutes)
    for offset in itertools.count():
        day = first + dt.timedelta(days=offset)
        at = dt.datetime.combine(day, settings.open_time)
        end = dt.datetime.combine(day, settings.close_time)
        while at + step <= end:
            yield day.isoformat(), at.strftime("%H:%M")
            at += step


async def interleaved(n: int, first: Callable[[int], Awaitable[Any]], second: Callable[[int], Awaitable[Any]],
                      blocks: int = 10) -> tuple[tuple[list[float], float], tuple[list[float], float]]:
    """:func:`timed` for two variants in alternating blocks (n requests each in all), so that drift over the run
    — a growing table, the disk's flush times on a shared machine — falls on both alike."""
    latencies: tuple[list[float], list[float]] = ([], [])
    seconds = [0.0, 0.0]
    size = max(1, n // blocks)
    for start in range(0, n, size):
        k = min(size, n - start)
        for slot, make in enumerate((first, second)):

            def shifted(i: int, make: Callable[[int], Awaitable[Any]] = make, start: int = start) -> Awaitable[Any]:
                return make(start + i)

            lat, rps = await timed(k, shifted)
            latencies[slot].extend(lat)
            seconds[slot] += k / rps
    return (latencies[0], n / seconds[0]), (latencies[1], n / seconds[1])


async def timed(n: int, make: Callable[[int], Awaitable[Any]]) -> tuple[list[float], float]:
    """Run ``make(i)`` n times sequentially; per-call latency (ms) and requests/s."""
    lat = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter_ns()
        await make(i)
        lat.append((time.perf_counter_ns() - t0) / 1e6)
    return lat, n / (time.perf_counter() - start)


async def throughput(n: int, concurrency: int, make: Callable[[int], Awaitable[Any]]) -> float:
    """Requests/s with ``concurrency`` requests in flight."""
    counter = itertools.count()

    async def lane() -> None:
        while (i := next(counter)) < n:
            await make(i)

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return n / (time.perf_counter() - start)


async def raw_nats(url: str, n: int, body: bytes) -> tuple[list[float], float]:
    """The transport floor: raw nats-py request → raw nats-py responder (no headers, spans or JSON), ms each."""
    import nats
    import nats.errors
    from nats.aio.msg import Msg

    responder = await nats.connect(url)
    requester = await nats.connect(url)

    async def answer(msg: Msg) -> None:
        await msg.respond(b'{"output":{"ok":true}}')

    await responder.subscribe("bench.raw.tool", queue="q", cb=answer)
    await responder.flush()
    try:
        # stock nats-py's flush can return before the server has the SUB (see shared.bus.wire), so the first
        # request may find no responder yet
        for _ in range(100):
            try:
                await requester.request("bench.raw.tool", body, timeout=10)
                break
            except nats.errors.NoRespondersError:
                await asyncio.sleep(0.02)
        await timed(200, lambda i: requester.request("bench.raw.tool", body, timeout=10))
        return await timed(n, lambda i: requester.request("bench.raw.tool", body, timeout=10))
    finally:
        await requester.close()
        await responder.close()


def row(label: str, lat: list[float], rps: float) -> str:
    """One printed line: p50, p99, mean (ms) and requests/s."""
    return (f"  {label:<34} p50 {pct(lat, 0.5):7.3f} ms   p99 {pct(lat, 0.99):7.3f} ms   "
            f"mean {statistics.fmean(lat):7.3f} ms   {rps:8.0f} req/s")


def overhead(bus: list[float], direct: list[float]) -> str:
    """Bus minus direct at p50 and p99, with the ratio."""
    p50 = pct(bus, 0.5) - pct(direct, 0.5)
    p99 = pct(bus, 0.99) - pct(direct, 0.99)
    verdict = "meets" if p99 <= 0.5 else "misses"
    return (f"  bus overhead (bus - direct): p50 +{p50:.3f} ms, p99 +{p99:.3f} ms ({verdict} the 0.5 ms p99 "
            f"target); ratio bus/direct p50 {pct(bus, 0.5) / pct(direct, 0.5):.2f}x")


async def _admin(url: str, statement: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def run(n: int, concurrency: int, database_url: str | None, workdir: Path) -> None:
    """Start NATS and one worker in-process, then measure (PostgreSQL: in a scratch database, dropped after)."""
    from sqlalchemy.engine import make_url

    scratch: str | None = None
    if database_url and make_url(database_url).get_backend_name() == "postgresql":
        scratch = f"sb_bench_{secrets.token_hex(6)}"
        await _admin(database_url, f'CREATE DATABASE "{scratch}"')
        url = make_url(database_url).set(database=scratch).render_as_string(hide_password=False)
    else:
        url = database_url or f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    try:
        await measure(n, concurrency, url, workdir)
    finally:
        if scratch is not None:
            await _admin(database_url or "", f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def rig(url: str, workdir: Path) -> AsyncIterator[tuple[EmbeddedNats, ServiceContext, Database, Bus]]:
    """nats-server, the tools service context (telemetry, bus, micro service), the migrated database at ``url``
    and a caller bus (source ``session``), all in this process; everything closed on exit."""
    server = natsserver.start(workdir / "nats")
    ctx = await start_service("tools", load_settings(nats_url=server.url, database_url=url, data_dir=workdir))
    database = Database(url)
    caller: Bus | None = None
    try:
        await database.migrate()
        caller = await Bus.connect(server.url, name="bench-caller", source="session")
        yield server, ctx, database, caller
    finally:
        if caller is not None:
            await caller.close()
        await stop_service(ctx)
        await database.dispose()
        server.stop()


async def measure(n: int, concurrency: int, url: str, workdir: Path) -> None:
    """Start NATS and one worker in-process on ``url``, then measure."""
    tools_settings = ToolsSettings(clinic_open="00:00", clinic_close="23:55", clinic_slot_minutes=5,
                                   booking_horizon_days=3650, clinic_timezone="UTC")
    async with rig(url, workdir) as (server, ctx, database, caller):
        worker = ToolWorker([*load_tools(["services.tools.receptionist"]), NOOP], database=database,
                            settings=tools_settings)
        await worker.register(ctx.bus, ctx.micro)
        specs = await tool_registry.load(caller.js)
        book_tool = worker.tools["book_appointment"]
        free = slots(tools_settings)

        def book_request(tag: str, i: int) -> ToolRequest:
            date, at = next(free)
            return ToolRequest({"name": f"Bench {tag} {i}", "date": date, "time": at, "phone": f"+1555{i:07d}"},
                               f"bench-{tag}-{i}", CALL, 10_000)

        noop_req = ToolRequest({}, None, CALL, 10_000)

        bare_ctx = ToolContext(tool=NOOP.name, call=CALL, tool_call_id=None, deadline=time.monotonic() + 3600,
                               settings=tools_settings)

        async def noop_bare(i: int) -> Any:
            return await NOOP.fn(bare_ctx)

        async def noop_direct(i: int) -> Any:
            return await worker.execute(NOOP, noop_req)

        async def noop_bus(i: int) -> Any:
            return await call_tool(caller, specs["bench_noop"], noop_req)

        async def book_direct(i: int) -> Any:
            return await worker.execute(book_tool, book_request("direct", i))

        async def book_bus(i: int) -> Any:
            return await call_tool(caller, specs["book_appointment"], book_request("bus", i))

        async def book_bus_conc(i: int) -> Any:
            return await call_tool(caller, specs["book_appointment"], book_request("conc", i))

        async def trivial(env: Envelope) -> dict[str, Any]:
            return {"output": {"ok": True}}

        await ctx.bus.add_endpoint(ctx.micro, name="bench_trivial", subject="bench.trivial", handler=trivial)
        noop_body = noop_req.encode()

        async def plain_endpoint(i: int) -> Any:
            return await caller.request("bench.trivial", noop_body, timeout=10)

        tune_gc()  # as run_service does for every service process
        for make in (noop_direct, noop_bus, plain_endpoint):  # warm up imports, pools, JIT-less caches
            await timed(200, make)
        await timed(50, lambda i: worker.execute(book_tool, book_request("warm", i)))

        backend = "PostgreSQL" if not database.is_sqlite else "SQLite"
        print(f"tools benchmark: n={n}, backend {backend}, telemetry on, one worker, nats-server {server.url}")
        print("no-op tool")
        bare, bare_rps = await timed(n, noop_bare)
        direct, direct_rps = await timed(n, noop_direct)
        bus, bus_rps = await timed(n, noop_bus)
        plain, plain_rps = await timed(n, plain_endpoint)
        raw, raw_rps = await raw_nats(server.url, n, json.dumps(noop_req.encode()).encode())
        print(row("bare function call", bare, bare_rps))
        print(row("raw nats-py request/reply (floor)", raw, raw_rps))
        print(row("direct (ToolWorker.execute)", direct, direct_rps))
        print(row("bus (call_tool → nats.micro)", bus, bus_rps))
        print(row("bus endpoint, trivial handler", plain, plain_rps))
        print(overhead(bus, direct))
        print(f"  of which the NATS hop itself (raw request/reply): p50 {pct(raw, 0.5):.3f} ms, "
              f"p99 {pct(raw, 0.99):.3f} ms = {pct(raw, 0.99) / 0.5:.0%} of the 0.5 ms p99 budget before the bus, "
              "the tool framework or telemetry add anything")
        off = await sdk_off_figures(__file__, "--n", str(n))
        print("  the same no-op path with OTEL_SDK_DISABLED=true (child process, own nats-server, no spans or "
              f"metrics): bus p50 {off['bus p50']:.3f} ms, p99 {off['bus p99']:.3f} ms; overhead p50 "
              f"+{off['bus p50'] - off['direct p50']:.3f} ms, p99 +{off['bus p99'] - off['direct p99']:.3f} ms "
              f"(raw hop there p50 {off['raw p50']:.3f}, p99 {off['raw p99']:.3f} ms)")
        conc = await throughput(n, concurrency, noop_bus)
        print(f"  bus throughput, {concurrency} in flight: {conc:.0f} req/s")
        print("book_appointment")
        (bdirect, bdirect_rps), (bbus, bbus_rps) = await interleaved(n, book_direct, book_bus)
        print(row("direct (ToolWorker.execute)", bdirect, bdirect_rps))
        print(row("bus (call_tool → nats.micro)", bbus, bbus_rps))
        print(overhead(bbus, bdirect))
        bconc = await throughput(n, concurrency, book_bus_conc)
        print(f"  bus throughput, {concurrency} in flight: {bconc:.0f} req/s")


async def sdk_off_child(n: int) -> None:
    """The no-op tool through the bus, in a process started with ``OTEL_SDK_DISABLED=true`` (no spans, no metrics;
    the same bus, worker and client code) on its own nats-server; prints one JSON object with the p50/p99 (ms) of
    ``direct``, ``bus`` and ``raw`` (subprocess entry point)."""
    with tempfile.TemporaryDirectory(prefix="sb-bench-tools-off-") as tmp:
        async with rig(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}", Path(tmp)) as (server, ctx, database, caller):
            worker = ToolWorker([NOOP], database=database, settings=ToolsSettings())
            await worker.register(ctx.bus, ctx.micro)
            specs = await tool_registry.load(caller.js)
            request = ToolRequest({}, None, CALL, 10_000)

            async def direct(i: int) -> Any:
                return await worker.execute(NOOP, request)

            async def via_bus(i: int) -> Any:
                return await call_tool(caller, specs["bench_noop"], request)

            tune_gc()
            for make in (direct, via_bus):
                await timed(200, make)
            figures: dict[str, float] = {}
            for name, lat in (("direct", (await timed(n, direct))[0]), ("bus", (await timed(n, via_bus))[0]),
                              ("raw", (await raw_nats(server.url, n, json.dumps(request.encode()).encode()))[0])):
                figures[f"{name} p50"], figures[f"{name} p99"] = pct(lat, 0.5), pct(lat, 0.99)
            print(json.dumps(figures), flush=True)


def main() -> None:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=1000, help="requests per measurement")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight for throughput")
    parser.add_argument("--database-url", default=None,
                        help="SQLAlchemy async URL (default: SQLite temp file; PostgreSQL: a scratch database "
                             "is created on that server and dropped afterwards)")
    parser.add_argument("--sdk-off", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sdk_off:
        asyncio.run(sdk_off_child(args.n))
        return
    with tempfile.TemporaryDirectory(prefix="sb-bench-tools-") as tmp:
        asyncio.run(run(args.n, args.concurrency, args.database_url, Path(tmp)))


if __name__ == "__main__":
    main()
