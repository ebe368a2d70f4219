"""Recorder benchmark: archive throughput into SQLite and PostgreSQL, and consumer lag under 100 live calls.

Prints, per database:

1. writer throughput — ``Archive.persist`` of realistic events (scripted-call bodies over 100 call ids) in
   batches of 512 (one transaction each), beside the unbatched baseline (one event per transaction) measured
   in the same run, and the ratio (targets: ≥ 10,000 events/s SQLite, ≥ 20,000 events/s PostgreSQL);
2. end-to-end drain — events already in the RT stream pulled by the durable consumer, archived and acked;
   then the consumer's CPU per event (process CPU time while one RT consumer drains ``--events``) with its
   batch puller (``services/recorder/puller.py``) and with nats-py's ``PullSubscription.fetch`` instead,
   alternating ``--rounds`` times in the same run (the puller is kept only while it saves ≥ 20 %);
3. consumer lag at ``--calls`` (100) concurrent simulated calls published in real time by a separate process
   (20 ms caller frames, agent replies as bursts of 20 ms deltas with transcript deltas and response events):
   ``Switchboard-Ts`` at publish → batch committed, p50/p95/p99/max (target < 1 s), and JetStream's storage
   time → committed (the recorder's own share, without the publisher's queueing).

4. the cost of sealing caller content (``services/recorder/crypto.py``): ``Archive.persist`` of the same
   realistic events without and with a vault (per-call AES-GCM data keys), alternating ``--rounds`` times in the
   same run on one database (two streams), as recorder process CPU per event and events/s (``--encryption``
   runs only this phase).

Telemetry is on, as in production. PostgreSQL: ``SWITCHBOARD_BENCH_POSTGRES_URL`` or
``SWITCHBOARD_TEST_POSTGRES_URL`` (a fresh database is created and dropped), else
``postgresql+asyncpg://postgres@127.0.0.1:5432/test``; skipped when unreachable.

Run: ``.venv/bin/python bench/recorder.py [--events 20000] [--calls 100] [--seconds 10] [--only sqlite]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.recorder.archive import Archive  # noqa: E402
from services.recorder.consumer import StreamConsumer  # noqa: E402
from services.recorder.crypto import LocalKms  # noqa: E402
from services.recorder.db import open_database  # noqa: E402
from services.recorder.records import Incoming  # noqa: E402
from services.recorder.service import Recorder  # noqa: E402
from services.recorder.vault import Vault  # noqa: E402
from shared import subjects  # noqa: E402
from shared.bus import Bus, Headers  # noqa: E402
from shared.config import load_settings  # noqa: E402
from shared.telemetry import setup_telemetry  # noqa: E402
from switchboard import natsserver  # noqa: E402
from switchboard.testing.scripted import script  # noqa: E402


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def realistic_events(n: int, calls: int = 100, first_seq: int = 1, prefix: str = "CAbench",
                     stream: str = "RT") -> list[Incoming]:
    """``n`` RT events cycling through the scripted call's bodies, spread over ``calls`` call ids
    ``<prefix><number>``, stored as ``stream``."""
    steps = [s for s in script("CAbench") if s.subject.startswith("rt.")]
    out = []
    now = time.time_ns()
    run = uuid.uuid4().hex[:8]  # unique Nats-Msg-Ids per run: the stream's duplicate window would drop repeats
    for i in range(n):
        step = steps[i % len(steps)]
        call_id = f"{prefix}{i % calls:04d}"
        subject = step.subject.replace("CAbench", call_id, 1)
        headers = {Headers.CALL_ID: call_id, Headers.SOURCE: "session", Headers.SEQ: str(i),
                   Headers.TS: str(now + i), Headers.MSG_ID: f"{call_id}:session:{run}:{i}",
                   Headers.TRACEPARENT: f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"}
        out.append(Incoming(stream, first_seq + i, now + i, subject, headers, json.dumps(step.payload).encode()))
    return out


async def writer_throughput(url: str, n: int) -> tuple[float, float]:
    """(batched events/s, unbatched events/s) of Archive.persist on a fresh database at ``url``."""
    engine = await open_database(url)
    try:
        archive = Archive(engine)
        events = realistic_events(n)
        t0 = time.perf_counter()
        for start in range(0, n, 512):
            await archive.persist("RT", events[start:start + 512])
        batched = n / (time.perf_counter() - t0)
        single = realistic_events(min(2000, n), first_seq=n + 1)
        t0 = time.perf_counter()
        for ev in single:
            await archive.persist("RT", [ev])
        unbatched = len(single) / (time.perf_counter() - t0)
    finally:
        await engine.dispose()
    return batched, unbatched


async def encryption_cost(url: str, n: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Per round, ``(µs process CPU per event, events/s)`` of ``Archive.persist`` (512 per transaction) of ``n``
    realistic events over 100 new calls, plain (stream ``RT``) and sealed (stream ``RTSEALED``, a vault with a
    random archive key), alternating on one fresh database at ``url``."""
    engine = await open_database(url)
    out: dict[str, list[tuple[float, float]]] = {"plain": [], "sealed": []}
    try:
        archives = {"plain": (Archive(engine), "RT"),
                    "sealed": (Archive(engine, vault=Vault(LocalKms(os.urandom(32)))), "RTSEALED")}
        for r in range(rounds):
            for name, (archive, stream) in archives.items():
                events = realistic_events(n, first_seq=r * n + 1, prefix=f"CA{name}{r}x", stream=stream)
                cpu, wall = time.process_time(), time.perf_counter()
                for start in range(0, n, 512):
                    await archive.persist(stream, events[start:start + 512])
                out[name].append(((time.process_time() - cpu) / n * 1e6, n / (time.perf_counter() - wall)))
    finally:
        await engine.dispose()
    return out


def print_encryption(kind: str, figures: dict[str, list[tuple[float, float]]]) -> None:
    """One line per mode and the median CPU overhead of sealing."""
    for name, values in figures.items():
        print(f"[{kind}] writer {name}: " + ", ".join(f"{c:.1f} µs CPU/event ({r:,.0f} events/s)" for c, r in values)
              + f" (median {pct([c for c, _ in values], 0.5):.1f} µs)")
    plain, sealed = (pct([c for c, _ in figures[k]], 0.5) for k in ("plain", "sealed"))
    print(f"[{kind}] sealing caller content costs {sealed - plain:+.1f} µs CPU/event ({sealed / plain - 1:+.0%})")


async def drain(url: str, nats_url: str, n: int, data_dir: Path) -> float:
    """Events/s for the durable consumer to archive ``n`` events already in the RT stream."""
    bus = await Bus.connect(nats_url, name="bench-drain", source="session")
    await bus.ensure_streams(load_settings(js_max_age=3600))
    before = (await bus.js.stream_info("RT")).state.last_seq
    engine = await open_database(url)
    async with engine.begin() as conn:  # start after what earlier phases left in the stream
        await conn.execute(text("INSERT INTO consumer_positions (stream, last_stream_seq) VALUES ('RT', :s)"),
                           {"s": before})
    for ev in realistic_events(n):
        await bus.js.publish_async(ev.subject, ev.body, headers=ev.headers)
    await bus.js.publish_async_completed()
    target = (await bus.js.stream_info("RT")).state.last_seq
    assert target == before + n, f"stream holds {target - before} of {n} events"
    recorder = Recorder(bus, engine, data_dir, durable_prefix=f"drain{uuid.uuid4().hex[:6]}", batch=512)
    t0 = time.perf_counter()
    await recorder.start()
    await recorder.archive.wait_for_position("RT", target)
    rate = n / (time.perf_counter() - t0)
    await recorder.stop()
    await engine.dispose()
    await bus.close()
    return rate


class NatsPyFetch:
    """nats-py's ``PullSubscription.fetch`` behind the puller's ``fetch``/``stop`` (comparison only)."""

    def __init__(self, psub: Any) -> None:
        self.psub = psub

    async def fetch(self, batch: int, timeout: float) -> list[Any]:
        """Up to ``batch`` messages within ``timeout`` s ([] when none came)."""
        try:
            result: list[Any] = await self.psub.fetch(batch, timeout=timeout)
            return result
        except TimeoutError:
            return []

    async def stop(self) -> None:
        """Unsubscribe."""
        await self.psub.unsubscribe()


class NatsPyFetchConsumer(StreamConsumer):
    """:class:`StreamConsumer` reading its durable with nats-py's pull subscription instead of the puller."""

    async def _puller(self) -> Any:
        return NatsPyFetch(await self.js.pull_subscribe_bind(durable=self.durable, stream=self.stream.name))


async def drain_cpu(url: str, nats_url: str, n: int, consumer_cls: type[StreamConsumer]) -> tuple[float, float]:
    """(events/s, process CPU µs per event) for one RT consumer of ``consumer_cls`` draining ``n`` events."""
    bus = await Bus.connect(nats_url, name="bench-cpu", source="session")
    await bus.ensure_streams(load_settings(js_max_age=3600))
    before = (await bus.js.stream_info("RT")).state.last_seq
    engine = await open_database(url)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM consumer_positions"))
        await conn.execute(text("INSERT INTO consumer_positions (stream, last_stream_seq) VALUES ('RT', :s)"),
                           {"s": before})
    for ev in realistic_events(n):
        await bus.js.publish_async(ev.subject, ev.body, headers=ev.headers)
    await bus.js.publish_async_completed()
    target = (await bus.js.stream_info("RT")).state.last_seq
    archive = Archive(engine)
    consumer = consumer_cls(bus.nc, archive, subjects.RT_STREAM, durable_prefix=f"cpu{uuid.uuid4().hex[:6]}")
    stopping = asyncio.Event()
    cpu0, t0 = time.process_time(), time.perf_counter()
    task = asyncio.create_task(consumer.run(stopping))
    await archive.wait_for_position("RT", target)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    stopping.set()
    await task
    await engine.dispose()
    await bus.close()
    return n / wall, cpu * 1e6 / n


PUBLISHER = r"""
import asyncio, base64, random, sys, time
sys.path.insert(0, sys.argv[4])
from shared import subjects
from shared.bus import Bus
from shared.contracts import CallEnded, CallStarted
from shared.telemetry import setup_telemetry
from switchboard.testing.scripted import tone

async def call(bus, call_id, seconds, caller_b64, agent_b64):
    started = CallStarted(call_id=call_id, carrier="twilio", agent="receptionist", audio_format="audio/pcmu",
        from_="+15550000000", to="+15551111111", started_at="2026-12-07T00:00:00+00:00")
    await bus.publish_event(subjects.call_started(call_id), started.encode(), call_id=call_id)
    start = time.monotonic()
    frame = 0
    next_reply = random.uniform(1.0, 3.0)
    while time.monotonic() - start < seconds:
        await bus.publish_event(subjects.rt_client(call_id, "input_audio_buffer.append"),
                                {"type": "input_audio_buffer.append", "audio": caller_b64}, call_id=call_id)
        frame += 1
        if frame * 0.02 >= next_reply:  # the agent replies: 1 s of audio as 50 deltas, in a burst
            next_reply += 3.0
            await bus.publish_event(subjects.rt_server(call_id, "response.created"),
                                    {"type": "response.created", "response": {"id": f"r{frame}"}}, call_id=call_id)
            for i in range(50):
                await bus.publish_event(subjects.rt_server(call_id, "response.output_audio.delta"),
                    {"type": "response.output_audio.delta", "item_id": f"i{frame}", "delta": agent_b64},
                    call_id=call_id)
                if i % 5 == 0:
                    await bus.publish_event(subjects.rt_server(call_id, "response.output_audio_transcript.delta"),
                        {"type": "response.output_audio_transcript.delta", "item_id": f"i{frame}", "delta": "word "},
                        call_id=call_id)
            await bus.publish_event(subjects.rt_server(call_id, "response.done"),
                                    {"type": "response.done", "response": {"id": f"r{frame}", "status": "completed"}},
                                    call_id=call_id)
        due = start + frame * 0.02
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    await bus.publish_event(subjects.call_ended(call_id), CallEnded(reason="caller_hangup").encode(), call_id=call_id)

async def main():
    setup_telemetry("switchboard-bench-publisher")
    url, calls, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    bus = await Bus.connect(url, name="bench-publisher", source="session")
    caller = base64.b64encode(tone(440, 20)).decode()
    agent = base64.b64encode(tone(300, 20)).decode()
    t0 = time.monotonic()
    await asyncio.gather(*(call(bus, f"CAlag{sys.argv[5]}{i:03d}", seconds, caller, agent) for i in range(calls)))
    await bus.flush_acks(60)
    print(f"published for {time.monotonic() - t0:.1f}s", flush=True)
    await bus.close()

asyncio.run(main())
"""


async def lag(url: str, nats_url: str, calls: int, seconds: float, data_dir: Path) -> dict[str, float]:
    """Consumer lag (ms) while ``calls`` simulated calls publish in real time from another process."""
    bus = await Bus.connect(nats_url, name="bench-recorder", source="recorder")
    await bus.ensure_streams(load_settings(js_max_age=3600))
    engine = await open_database(url)
    last = {s: (await bus.js.stream_info(s)).state.last_seq for s in ("RT", "CALLS")}
    async with engine.begin() as conn:
        for stream, seq in last.items():
            await conn.execute(text("INSERT INTO consumer_positions (stream, last_stream_seq) VALUES (:n, :s)"),
                               {"n": stream, "s": seq})
    recorder = Recorder(bus, engine, data_dir, durable_prefix=f"lag{uuid.uuid4().hex[:6]}", track_lag=True)
    await recorder.start()
    tag = uuid.uuid4().hex[:6]
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", PUBLISHER, nats_url, str(calls), str(seconds),
                                                str(ROOT), tag, stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    target = (await bus.js.stream_info("RT")).state.last_seq
    await recorder.archive.wait_for_position("RT", target)
    await asyncio.sleep(1.5)  # let the finalizer see the ended calls (not measured)
    samples = list(recorder.consumers[1].stats.lag_ms)
    stored = list(recorder.consumers[1].stats.store_lag_ms)
    events = recorder.consumers[1].stats.stored
    await recorder.stop()
    await engine.dispose()
    await bus.close()
    return {"events": float(events), "rate": events / seconds, "p50": pct(samples, 0.5), "p95": pct(samples, 0.95),
            "p99": pct(samples, 0.99), "max": max(samples) if samples else float("nan"),
            "s50": pct(stored, 0.5), "s99": pct(stored, 0.99), "smax": max(stored) if stored else float("nan"),
            "publisher": float(out.decode().split()[2].rstrip("s")) if out else float("nan")}


async def fresh_postgres(base: str) -> str | None:
    """A new empty database next to ``base`` (None when PostgreSQL does not answer)."""
    url = make_url(base)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+asyncpg")
    name = f"sb_bench_{uuid.uuid4().hex[:8]}"
    engine = create_async_engine(url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    try:
        async with asyncio.timeout(10), engine.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        print(f"PostgreSQL at {url.render_as_string()} unusable ({exc}); skipped")
        return None
    finally:
        await engine.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


async def drop_postgres(url: str) -> None:
    """Drop a database made by :func:`fresh_postgres`."""
    parsed = make_url(url)
    engine = create_async_engine(parsed.set(database="postgres").render_as_string(hide_password=False),
                                 isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    finally:
        await engine.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only", choices=["sqlite", "postgres"])
    parser.add_argument("--rounds", type=int, default=3, help="puller vs nats-py fetch CPU rounds")
    parser.add_argument("--encryption", action="store_true", help="only the plain vs sealed writer comparison")
    args = parser.parse_args()
    setup_telemetry("switchboard-bench-recorder")
    tmp = Path(tempfile.mkdtemp(prefix="sb-bench-recorder-"))
    server = natsserver.start(tmp / "nats")
    targets = {"sqlite": 10_000.0, "postgres": 20_000.0}
    pg_base = (os.environ.get("SWITCHBOARD_BENCH_POSTGRES_URL") or os.environ.get("SWITCHBOARD_TEST_POSTGRES_URL")
               or "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    try:
        for kind in ("sqlite", "postgres"):
            if args.only and kind != args.only:
                continue
            urls: list[str] = []
            for i in range(4):
                if kind == "sqlite":
                    urls.append(f"sqlite+aiosqlite:///{tmp / f'bench{i}.db'}")
                else:
                    made = await fresh_postgres(pg_base)
                    if made is None:
                        break
                    urls.append(made)
            if len(urls) < 4:
                continue
            try:
                print_encryption(kind, await encryption_cost(urls[3], args.events, args.rounds))
                if args.encryption:
                    continue
                batched, single = await writer_throughput(urls[0], args.events)
                print(f"[{kind}] writer: {batched:,.0f} events/s batched (512/tx) vs {single:,.0f} events/s "
                      f"unbatched baseline = {batched / single:.1f}x; target {targets[kind]:,.0f}/s: "
                      f"{'met' if batched >= targets[kind] else 'NOT met'}")
                drained = await drain(urls[1], server.url, args.events, tmp / kind)
                print(f"[{kind}] consumer drain (JetStream fetch → archive → ack): {drained:,.0f} events/s")
                cpu: dict[str, list[float]] = {"puller": [], "nats-py fetch": []}
                for _ in range(args.rounds):
                    for name, cls in (("puller", StreamConsumer), ("nats-py fetch", NatsPyFetchConsumer)):
                        cpu[name].append((await drain_cpu(urls[1], server.url, args.events, cls))[1])
                for name, values in cpu.items():
                    print(f"[{kind}] RT consumer CPU with {name}: "
                          f"{', '.join(f'{v:.1f}' for v in values)} µs/event (median {pct(values, 0.5):.1f})")
                saving = 1 - pct(cpu["puller"], 0.5) / pct(cpu["nats-py fetch"], 0.5)
                print(f"[{kind}] the puller saves {saving:.0%} of the consumer's CPU "
                      f"({'keep it' if saving >= 0.2 else 'use nats-py fetch'}: threshold 20 %)")
                figures = await lag(urls[2], server.url, args.calls, args.seconds, tmp / kind)
                print(f"[{kind}] lag at {args.calls} live calls ({figures['rate']:,.0f} events/s for "
                      f"{args.seconds:.0f}s): p50 {figures['p50']:.0f} ms, p95 {figures['p95']:.0f} ms, "
                      f"p99 {figures['p99']:.0f} ms, max {figures['max']:.0f} ms (publish → commit); "
                      f"stored in JetStream → commit: p50 {figures['s50']:.0f} ms, p99 {figures['s99']:.0f} ms, "
                      f"max {figures['smax']:.0f} ms; target < 1000 ms: "
                      f"{'met' if figures['max'] < 1000 else 'NOT met (max)' if figures['p99'] < 1000 else 'NOT met'}")
            finally:
                if kind == "postgres":
                    for url in urls:
                        await drop_postgres(url)
    finally:
        server.stop()


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    asyncio.run(main())
