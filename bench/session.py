"""Session benchmark: CPU cost of the session service's hot paths, against raw nats-py in the same run.

Measures, with the session service running as its own process (``python -m services.session``, telemetry on
as in production) against a minimal bench-only Realtime endpoint (a sink that answers ``session.update`` and,
on ``response.create``, streams ``response.output_audio.delta`` events as fast as it can):

1. **forwarded audio frame**: N simulated calls push μ-law audio on ``call.<id>.audio.in`` the way the gateway
   does: ``SWITCHBOARD_GATEWAY_AUDIO_IN_MS`` (default 40 ms = two 20 ms Twilio frames, 320 bytes) per message;
   the session batches it (≥ 40 ms) into ``input_audio_buffer.append``, sends it to the model and logs each
   append to JetStream. Figure: session-process CPU µs per 20 ms frame of caller audio, i.e. per Twilio media
   frame (target ≤ 50 µs), and per ``audio.in`` message.
2. **logged server event**: the sink streams audio deltas (the greeting response); the session receives,
   parses, logs (JetStream) and tracks each. Figure: CPU µs per logged event and events/s per core.

A third process receives the same frames through ``Bus.subscribe`` with a no-op handler: the floor any bus consumer
of ``audio.in`` pays (nats-py header parsing, envelope, trace-context restore, bus-hop metric), so the session's own
share per frame is visible. Session CPU is the scheduler's per-thread accounting (``/proc/<pid>/task/*/schedstat``,
nanoseconds; see ``bench/_proc_cpu.py``), minus the idle CPU of the same process over an equally long quiet
window. Baseline, in this process: raw nats-py core publish of the same 160-byte frame, and raw nats-py JetStream
``publish_async`` of an audio-delta-sized event (CPU µs per message, from ``time.process_time``). Every frame
sent is checked to have been forwarded (bytes appended = bytes sent).

Phase 1 runs ``--rounds`` times (default 3) and the median round is reported, each round printed: this 2-core
machine's speed drifts by tens of percent from one minute to the next.

Phase 1 pushes each round's messages in bursts (all calls' next message, then a 4 ms pause), so the session's
event loop handles ~20 messages per wakeup, as a loaded process does: the figure is the marginal cost per frame,
which sets how many calls a core carries. **Paced arrival** (``--paced``, default ``1,5``) sends the same
messages with a 1 ms pause after every k of them, so the session wakes for every k messages, as at light load.
A Python asyncio process pays a fixed CPU cost each time its event loop wakes from idle (epoll, the socket read,
cold caches); a fourth process, a plain nats-py subscriber to the same subjects, shows that cost for nats-py
alone in the same rounds. The session wakes about twice per message when idle (the frame, then the JetStream
ack of its logged append), so at k = 1 the per-frame figure is mostly wakeups, not work.

Run: ``.venv/bin/python bench/session.py [--calls 20] [--seconds 5] [--deltas 2000] [--batch-ms 40] [--rounds 3]
[--paced 1,5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import nats
import websockets
from _proc_cpu import context_switches
from _proc_cpu import cpu_seconds as proc_cpu
from nats.aio.msg import Msg
from websockets.asyncio.server import ServerConnection

from shared import subjects
from shared.bus import Bus, Envelope
from shared.config import load_settings
from shared.contracts import CallEnded, CallStarted
from switchboard import natsserver

ROOT = Path(__file__).resolve().parents[1]
FRAME = bytes([0xFF]) * 160


# --- the bench-only model endpoint -------------------------------------------------------------------------

async def _sink(ws: ServerConnection, deltas: int) -> None:
    ids = itertools.count(1)
    delta = base64.b64encode(bytes([0xFF]) * 800).decode()  # 100 ms of μ-law

    async def send(event: dict[str, object]) -> None:
        await ws.send(json.dumps({"event_id": f"ev_{next(ids)}", **event}))

    await send({"type": "session.created", "session": {"id": "sess_bench"}})
    async for raw in ws:
        event = json.loads(raw)
        if event["type"] == "session.update":
            await send({"type": "session.updated", "session": event["session"]})
        elif event["type"] == "response.create":
            rid = f"resp_{next(ids)}"
            await send({"type": "response.created", "response": {"id": rid, "status": "in_progress"}})
            for _ in range(deltas):
                await send({"type": "response.output_audio.delta", "response_id": rid, "item_id": f"item_{rid}",
                            "output_index": 0, "content_index": 0, "delta": delta})
            await send({"type": "response.done", "response": {"id": rid, "status": "completed", "usage": None}})


def run_session(nats_url: str, realtime_url: str, batch_ms: int) -> None:
    """The session service as production runs it (uvloop, ``start_service``: telemetry, spans to
    ``otel.spans``), with a given audio batch size (subprocess entry point)."""
    from services.session.call import CallOptions, ModelEndpoint
    from services.session.service import SessionService
    from shared.runtime import install_uvloop, start_service, stop_service, tune_gc

    async def main() -> None:
        settings = load_settings(nats_url=nats_url, realtime_url=realtime_url, js_max_age=600,
                                 agent=ROOT / "agents" / "receptionist.yaml")
        ctx = await start_service("session", settings, install_signals=True)
        service = SessionService(ctx.bus, settings, endpoint=ModelEndpoint(realtime_url, None, None),
                                 options=CallOptions(audio_batch_ms=batch_ms))
        await service.start()
        tune_gc()  # as run_service does
        await ctx.stopping.wait()
        await service.stop()
        await stop_service(ctx)

    install_uvloop()  # as python -m services.session does
    asyncio.run(main())


def run_floor(nats_url: str, kind: str) -> None:
    """A process that only receives the audio frames, with a no-op handler (subprocess entry point).

    ``kind`` ``bus``: through ``Bus.subscribe``, the floor any bus consumer of ``call.<id>.audio.in`` pays.
    ``raw``: a plain nats-py subscription with a callback, the floor of nats-py and asyncio alone.
    """
    from shared.runtime import tune_gc
    from shared.telemetry import setup_telemetry

    async def main() -> None:
        if kind == "raw":
            nc = await nats.connect(nats_url, name="bench-floor-raw")

            async def raw_noop(msg: Msg) -> None:
                return None

            await nc.subscribe(subjects.call_audio_in_all(), cb=raw_noop, pending_msgs_limit=65_536)
            await nc.flush()
        else:
            setup_telemetry("switchboard-bench-floor")
            bus = await Bus.connect(nats_url, name="bench-floor", source="bench")
            tune_gc()  # as a service process does

            async def noop(env: Envelope) -> None:
                return None

            await bus.subscribe(subjects.call_audio_in_all(), noop)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def run_sink(port: int, deltas: int) -> None:
    """Serve the sink on ``port`` forever (subprocess entry point)."""
    async def main() -> None:
        async with websockets.serve(lambda ws: _sink(ws, deltas), "127.0.0.1", port, compression=None):
            await asyncio.Future()
    asyncio.run(main())


# --- measurement helpers -----------------------------------------------------------------------------------

async def wait_ready(url: str, timeout: float = 30) -> None:
    nc = await nats.connect(url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                await nc.request("$SRV.PING.switchboard-session", b"", timeout=0.5)
                return
            except Exception:
                await asyncio.sleep(0.2)
        raise RuntimeError("session service did not answer $SRV.PING")
    finally:
        await nc.close()


async def baseline_core(url: str, n: int) -> float:
    """Raw nats-py core publish of a 160-byte frame: CPU µs per message."""
    nc = await nats.connect(url)
    t0 = time.process_time()
    for _ in range(n):
        await nc.publish("bench.raw.frame", FRAME)
    await nc.flush()
    cpu = time.process_time() - t0
    await nc.close()
    return cpu / n * 1e6


async def baseline_js(url: str, n: int) -> float:
    """Raw nats-py JetStream publish_async of a delta-sized event (acks awaited in bulk): CPU µs per message."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="BENCHRAW", subjects=["benchraw.>"], max_age=120)
    body = json.dumps({"type": "response.output_audio.delta", "delta": "/" * 1068}).encode()
    t0 = time.process_time()
    futures = [await js.publish_async("benchraw.x", body) for _ in range(n)]
    await asyncio.gather(*futures)
    cpu = time.process_time() - t0
    await js.delete_stream("BENCHRAW")
    await nc.close()
    return cpu / n * 1e6


async def start_call(gw: Bus, call_id: str) -> None:
    started = CallStarted(call_id=call_id, carrier="twilio", agent="receptionist", audio_format="audio/pcmu",
                          from_="+15550000001", to="+15550000002", started_at=datetime.now(UTC).isoformat())
    await gw.publish_event(subjects.call_started(call_id), started.encode(), call_id=call_id)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0, help="audio seconds pushed per call (phase 1)")
    parser.add_argument("--deltas", type=int, default=2000, help="server events streamed per call (phase 2)")
    parser.add_argument("--batch-ms", type=int, default=40, help="audio batch per append (ms)")
    parser.add_argument("--rounds", type=int, default=3, help="phase 1 repetitions (the median is reported)")
    parser.add_argument("--paced", default="1,5",
                        help="paced rounds: audio.in messages per 1 ms tick, comma-separated ('' for none)")
    args = parser.parse_args()

    nats_srv = natsserver.start(Path(tempfile.mkdtemp(prefix="bench-session-")))
    sink_port = natsserver.free_port()
    sink = await asyncio.create_subprocess_exec(sys.executable, __file__, "--sink", str(sink_port),
                                                str(args.deltas))
    session = await asyncio.create_subprocess_exec(sys.executable, __file__, "--session", nats_srv.url,
                                                   f"ws://127.0.0.1:{sink_port}/v1/realtime", str(args.batch_ms),
                                                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gw = await Bus.connect(nats_srv.url, name="bench-gateway", source="gateway")
    try:
        await gw.ensure_streams(load_settings(js_max_age=600))
        await wait_ready(nats_srv.url)
        per_message = load_settings().gateway_audio_in_ms // 20  # 20 ms frames per audio.in message
        message = FRAME * per_message
        messages_n = int(args.seconds * 50) // per_message
        frames_n = messages_n * per_message

        # phase 0: idle CPU of the session process over a quiet window
        c0 = proc_cpu(session.pid)
        await asyncio.sleep(2.0)
        idle_per_s = (proc_cpu(session.pid) - c0) / 2.0

        # phase 2 first (the greeting streams deltas when each call starts); count logged deltas
        deltas_seen = 0
        appended = 0
        done = asyncio.Event()
        total_deltas = args.calls * args.deltas

        async def on_delta(env: Envelope) -> None:
            nonlocal deltas_seen
            deltas_seen += 1
            if deltas_seen == total_deltas:
                done.set()

        all_appended = asyncio.Event()
        expected = args.calls * frames_n * len(FRAME) - 40 * 8 * args.calls

        async def on_append(env: Envelope) -> None:
            nonlocal appended
            appended += len(base64.b64decode(json.loads(env.data)["audio"]))
            if appended >= expected:
                all_appended.set()

        await gw.subscribe(subjects.rt_any_call("server", "response.output_audio.delta"), on_delta, dedupe=False)
        await gw.subscribe(subjects.rt_any_call("client", "input_audio_buffer.append"), on_append, dedupe=False)
        calls = [subjects.new_call_id() for _ in range(args.calls)]
        c1, t1 = proc_cpu(session.pid), time.monotonic()
        for cid in calls:
            await start_call(gw, cid)
        await asyncio.wait_for(done.wait(), 120)
        await asyncio.sleep(0.5)
        cpu2, wall2 = proc_cpu(session.pid) - c1, time.monotonic() - t1
        # includes per-call setup (connect, session.update, registry, seq resume): reported separately below
        per_event = (cpu2 - idle_per_s * wall2) / total_deltas * 1e6

        # phase 1: audio frames, pushed at 10× real time across all calls, in --rounds rounds (median reported:
        # the machine's speed drifts between runs); the bus-only and raw nats-py receivers measure the floors in
        # the same rounds
        floors = [await asyncio.create_subprocess_exec(sys.executable, __file__, "--floor", nats_srv.url, kind,
                                                       stdout=subprocess.PIPE) for kind in ("bus", "raw")]
        for proc in floors:
            assert proc.stdout is not None
            await proc.stdout.readline()
        frames = frames_n * len(calls)
        sent = frames * len(FRAME)

        switches: dict[int | None, list[tuple[float, float]]] = {}
        """Session (voluntary, involuntary) context switches per audio.in message, by messages per tick (None:
        bursts): its event loop's wakeups from idle, and its preemptions."""

        async def push_round(per_tick: int | None) -> tuple[float, float, float]:
            """One round of every call's messages: in bursts (``per_tick`` None: all calls, then 2 ms per 20 ms
            frame) or paced (a 1 ms pause after every ``per_tick`` messages). Returns CPU µs per frame of the
            session, the bus floor and the raw nats-py floor."""
            nonlocal appended
            appended = 0
            all_appended.clear()
            f0 = [proc_cpu(proc.pid) for proc in floors]
            s0 = context_switches(session.pid)
            c3, t3 = proc_cpu(session.pid), time.monotonic()
            sent_n = 0
            for _ in range(messages_n):
                for cid in calls:
                    await gw.publish(subjects.call_audio_in(cid), message, call_id=cid,
                                     headers={"Switchboard-Audio-Format": "audio/pcmu"})
                    sent_n += 1
                    if per_tick is not None and sent_n % per_tick == 0:
                        await asyncio.sleep(0.001)
                if per_tick is None:
                    await asyncio.sleep(0.002 * per_message)
            try:
                await asyncio.wait_for(all_appended.wait(), 60)
            except TimeoutError:
                print("  WARNING: not every frame was forwarded within 60 s")
            cpu1, wall1 = proc_cpu(session.pid) - c3, time.monotonic() - t3
            s1 = context_switches(session.pid)
            switches.setdefault(per_tick, []).append(((s1[0] - s0[0]) / sent_n, (s1[1] - s0[1]) / sent_n))
            bus_floor, raw_floor = ((proc_cpu(proc.pid) - f) / frames * 1e6 for proc, f in zip(floors, f0, strict=True))
            return (cpu1 - idle_per_s * wall1) / frames * 1e6, bus_floor, raw_floor

        def median_of(rounds: list[tuple[float, float, float]]) -> tuple[float, float, float]:
            m = [statistics.median(r[i] for r in rounds) for i in range(3)]
            return m[0], m[1], m[2]

        rounds = [await push_round(None) for _ in range(args.rounds)]
        per_frame, per_frame_floor, per_frame_raw = median_of(rounds)
        paced = {k: median_of([await push_round(k) for _ in range(args.rounds)])
                 for k in (int(x) for x in args.paced.split(",") if x.strip())}
        for proc in floors:
            proc.kill()
            await proc.wait()

        base_core = await baseline_core(nats_srv.url, 20_000)
        base_js = await baseline_js(nats_srv.url, 20_000)
        for cid in calls:
            await gw.publish_event(subjects.call_ended(cid), CallEnded(reason="caller_hangup").encode(), call_id=cid)
        await asyncio.sleep(1.0)

        print(f"session bench (audio batch {args.batch_ms} ms): {args.calls} calls, {frames} frames of 20 ms "
              f"per round in {frames // per_message} audio.in messages of {20 * per_message} ms "
              f"({args.seconds:.0f} s audio/call at ~10x), {total_deltas} server events; "
              f"session idle CPU {idle_per_s * 1e3:.1f} ms/s")
        print(f"  forwarded audio frames: {appended}/{sent} bytes appended "
              f"({'all' if appended >= sent - 40 * 8 * len(calls) else 'MISSING'}; ≤ 40 ms/call may stay batched)")
        print(f"  CPU per forwarded 20 ms frame : {per_frame:8.1f} µs  (target ≤ 50; "
              f"{per_frame * per_message:.1f} µs per audio.in message)   "
              f"baseline raw nats-py core publish {base_core:.1f} µs → ratio {per_frame / base_core:.1f}x")
        print(f"    median of {len(rounds)} rounds: " + ", ".join(f"{r[0]:.1f}" for r in rounds) + " µs per frame "
              "(receive floor " + ", ".join(f"{r[1]:.1f}" for r in rounds) + ")")
        print(f"    of which receiving it (Bus.subscribe, no-op handler, same messages): {per_frame_floor:.1f} µs "
              f"→ session's own work {per_frame - per_frame_floor:.1f} µs per frame; "
              f"raw nats-py subscriber {per_frame_raw:.1f} µs")
        print(f"    session woken {statistics.median(s[0] for s in switches[None]):.2f} and preempted "
              f"{statistics.median(s[1] for s in switches[None]):.2f} times per audio.in message")
        if paced:
            print("  paced arrival, a 1 ms pause after every k audio.in messages (median of "
                  f"{args.rounds}), CPU µs per frame: session / Bus.subscribe floor / raw nats-py subscriber")
            for k, (p_session, p_bus, p_raw) in paced.items():
                print(f"    k = {k:2d}: {p_session:7.1f} / {p_bus:6.1f} / {p_raw:6.1f}   "
                      f"(raw nats-py: {p_raw * per_message:.1f} µs per message, "
                      f"{p_raw / per_frame_raw:.1f}x its cost in bursts; session woken "
                      f"{statistics.median(s[0] for s in switches[k]):.2f} and preempted "
                      f"{statistics.median(s[1] for s in switches[k]):.2f} times per message)")
        print(f"  CPU per logged server event   : {per_event:8.1f} µs  (incl. call setup)  "
              f"baseline raw nats-py JetStream publish_async {base_js:.1f} µs → ratio {per_event / base_js:.1f}x")
        print(f"  logged server events/s per core: {1e6 / per_event:8.0f}   "
              f"frames/s per core: {1e6 / per_frame:8.0f} (= {1e6 / per_frame / 50:.0f} calls' audio per core)")
    finally:
        await gw.close()
        session.terminate()
        try:
            await asyncio.wait_for(session.wait(), 15)
        except TimeoutError:
            session.kill()
        sink.kill()
        await sink.wait()
        nats_srv.stop()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--sink":
        run_sink(int(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) == 4 and sys.argv[1] == "--floor":
        run_floor(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 5 and sys.argv[1] == "--session":
        run_session(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        asyncio.run(main())
