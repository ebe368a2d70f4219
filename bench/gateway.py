"""Gateway benchmark: N concurrent simulated Twilio calls through the gateway and the bus against an echo peer.

Processes (2-core machine, all local): nats-server (JetStream), the gateway (``python -m services.gateway``,
telemetry on as in production), an echo peer (``--role echo``: answers every ``--batch`` inbound 20 ms frames with
one ``response.output_audio.delta`` published through JetStream, like the session), and this load generator.

Per call the load generator sends ``connected`` + ``start`` and then a 160-byte μ-law ``media`` frame every
20 ms (absolute schedule; frame index in the payload), echoes each ``mark`` at once, and measures:

- frame round trip: send of the frame that completed a batch → its echo arriving as outbound ``media``. The
  gateway publishes ``SWITCHBOARD_GATEWAY_AUDIO_IN_MS`` (default 40 ms: two frames) per ``audio.in`` message, so
  ``--batch`` must be a multiple of that (default 4 = 80 ms deltas) for the completing frame to be the one that
  completes a message, as the session's own ≥ 40 ms appends would see it;
- baseline: the same echo through the bus only (publish ``call.<id>.audio.in`` directly, subscribe to the
  delta subject), same N, same run; "added by the gateway" = gateway figure − baseline figure;
- ``clear`` latency: ``call.<id>.command.clear`` published → ``clear`` received on the call's socket
  (a few calls per second are cleared);
- gateway CPU-ms per call-second (the scheduler's per-thread accounting, ``bench/_proc_cpu.py``, over the
  measurement window);
- late frames: round trip > 20 ms (one frame period); the largest N with < 1 % late is reported;
- the CPU (cores) of every process of the rig during each run, and what the rig without the gateway (load
  generator + echo peer + nats-server) would need at 300 calls if its use scaled linearly from 100 and more calls
  — on a 2-core machine this says whether 300 calls can fit at all, whatever the gateway costs; beside it the
  number of calls at which one gateway process (one core at most) is full, and the cores 300 calls would need in
  all. Runs with ``SATURATED_LATE_PCT`` or more frames late are not scaled (work due was left undone).

Run: ``.venv/bin/python bench/gateway.py [--calls 10,100,300] [--seconds 10] [--batch 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import websockets
from _proc_cpu import cpu_seconds

from shared import subjects
from shared.bus import Bus, Envelope, Headers
from shared.config import load_settings
from shared.contracts import CallStarted, CommandClear
from switchboard import natsserver

THIS = Path(__file__).resolve()
ROOT = THIS.parents[1]
FRAME_S = 0.020
LATE_MS = 20.0
SATURATED_LATE_PCT = 5.0
"""A run with this share of frames late (%) or more had more work due than the machine did: its CPU per call
understates the cost, so it is not scaled to 300 calls."""


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values`` (nan when empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine spent busy so far (/proc/stat, all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def frame(index: int) -> bytes:
    """160 bytes of μ-law: the frame index (4 bytes) and silence."""
    return struct.pack("!I", index) + b"\xff" * 156


@dataclass
class Stats:
    """Measurements of one run."""

    rtt_ms: list[float] = field(default_factory=list)
    clear_ms: list[float] = field(default_factory=list)
    send_lag_ms: list[float] = field(default_factory=list)
    frames_sent: int = 0
    errors: int = 0


# --- echo role ---------------------------------------------------------------------------------------------


async def echo_role(nats_url: str, batch: int) -> None:
    """Run an EchoPeer until SIGTERM."""
    from switchboard.testing.echo_peer import EchoPeer

    bus = await Bus.connect(nats_url, name="bench-echo", source="session")
    peer = EchoPeer(bus, batch=batch, jetstream=True)
    await peer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await bus.close()


# --- gateway calls -----------------------------------------------------------------------------------------


class GatewayCall:
    """One simulated Twilio call: paced media out, echoed media and marks in."""

    def __init__(self, index: int, ws_url: str, batch: int, stats: Stats, measuring: asyncio.Event) -> None:
        self.index = index
        self.ws_url = ws_url
        self.batch = batch
        self.stats = stats
        self.measuring = measuring
        self.sent_at: dict[int, float] = {}
        self.stream_sid = f"MZ{index:032d}"
        self.clear_sent: float | None = None
        self.call_id: str | None = None

    async def run(self, stop: asyncio.Event, offset: float) -> None:
        async with websockets.connect(self.ws_url, max_size=1 << 20, compression=None) as ws:  # as Twilio
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": self.stream_sid, "start": {
                "accountSid": "AC0", "streamSid": self.stream_sid, "callSid": f"CA{self.index:032d}",
                "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": {"run_id": f"bench-{self.index}"}}}))
            reader = asyncio.create_task(self._read(ws))
            await asyncio.sleep(offset)
            start = time.perf_counter()
            n = 0
            prefix = '{"event":"media","streamSid":"' + self.stream_sid + '","media":{"track":"inbound","chunk":"'
            while not stop.is_set():
                n += 1
                due = start + (n - 1) * FRAME_S
                now = time.perf_counter()
                if now < due:
                    await asyncio.sleep(due - now)
                    now = time.perf_counter()
                payload = base64.b64encode(frame(n)).decode()
                self.sent_at[n] = now
                await ws.send(f'{prefix}{n}","timestamp":"{(n - 1) * 20}","payload":"{payload}"}}}}')
                if self.measuring.is_set():
                    self.stats.frames_sent += 1
                    self.stats.send_lag_ms.append((now - due) * 1000)
                self.sent_at.pop(n - 200, None)
            await ws.send(json.dumps({"event": "stop", "sequenceNumber": "9", "streamSid": self.stream_sid,
                                      "stop": {"accountSid": "AC0", "callSid": "CA0"}}))
            reader.cancel()

    async def _read(self, ws: websockets.ClientConnection) -> None:
        try:
            async for raw in ws:
                now = time.perf_counter()
                msg = json.loads(raw)
                event = msg["event"]
                if event == "media":
                    audio = base64.b64decode(msg["media"]["payload"])
                    last = struct.unpack("!I", audio[-160:][:4])[0]
                    sent = self.sent_at.get(last)
                    if sent is not None and self.measuring.is_set():
                        self.stats.rtt_ms.append((now - sent) * 1000)
                elif event == "mark":
                    await ws.send(json.dumps({"event": "mark", "sequenceNumber": "0", "streamSid": self.stream_sid,
                                              "mark": msg["mark"]}))
                elif event == "clear" and self.clear_sent is not None:
                    if self.measuring.is_set():
                        self.stats.clear_ms.append((now - self.clear_sent) * 1000)
                    self.clear_sent = None
        except websockets.ConnectionClosed:
            pass


async def clear_loop(bus: Bus, calls: list[GatewayCall], stop: asyncio.Event) -> None:
    """Every 100 ms, clear one random call (as a barge-in would) and time it to the socket."""
    rng = random.Random(7)
    while not stop.is_set():
        await asyncio.sleep(0.1)
        ready = [c for c in calls if c.call_id is not None and c.clear_sent is None]
        if not ready:
            continue
        call = rng.choice(ready)
        assert call.call_id is not None
        call.clear_sent = time.perf_counter()
        await bus.publish(subjects.command(call.call_id, "clear"), CommandClear(reason="bench").encode(),
                          call_id=call.call_id)


async def run_gateway(n: int, ws_url: str, bus: Bus, batch: int, seconds: float, gateway_pid: int,
                      other_pids: dict[str, int]) -> dict[str, float]:
    stats = Stats()
    measuring = asyncio.Event()
    stop = asyncio.Event()
    calls = [GatewayCall(i, ws_url, batch, stats, measuring) for i in range(n)]
    by_run = {f"bench-{i}": c for i, c in enumerate(calls)}

    async def on_started(env: Envelope) -> None:
        payload = env.json()
        call = by_run.get(payload["custom_parameters"].get("run_id", ""))
        if call is not None:
            call.call_id = payload["call_id"]

    sub = await bus.subscribe(subjects.all_calls_started(), on_started)
    tasks = [asyncio.create_task(c.run(stop, offset=(i % 50) * FRAME_S / 50)) for i, c in enumerate(calls)]
    clearer = asyncio.create_task(clear_loop(bus, calls, stop))
    await asyncio.sleep(2.0 + n / 150)  # connect and warm up
    pids = {"gateway": gateway_pid, "loadgen": os.getpid(), **other_pids}
    cpu0, t0 = {k: cpu_seconds(p) for k, p in pids.items()}, time.perf_counter()
    busy0 = machine_busy_seconds()
    measuring.set()
    await asyncio.sleep(seconds)
    measuring.clear()
    cpu1, t1 = {k: cpu_seconds(p) for k, p in pids.items()}, time.perf_counter()
    busy1 = machine_busy_seconds()
    shares = {f"cpu_{k}": (cpu1[k] - cpu0[k]) / (t1 - t0) for k in pids}
    shares["cpu_others"] = max(0.0, (busy1 - busy0) / (t1 - t0) - sum(shares.values()))
    stop.set()
    results = await asyncio.gather(*tasks, clearer, return_exceptions=True)
    await sub.unsubscribe()
    errors = sum(1 for r in results if isinstance(r, BaseException))
    late = sum(1 for r in stats.rtt_ms if r > LATE_MS)
    return {"calls": n, "rtt_p50": pct(stats.rtt_ms, 0.5), "rtt_p99": pct(stats.rtt_ms, 0.99),
            "echoes": len(stats.rtt_ms), "late_pct": 100.0 * late / max(1, len(stats.rtt_ms)),
            "clear_p50": pct(stats.clear_ms, 0.5), "clear_p99": pct(stats.clear_ms, 0.99),
            "clears": len(stats.clear_ms),
            "send_lag_p99": pct(stats.send_lag_ms, 0.99),
            "cpu_ms_per_call_s": (cpu1["gateway"] - cpu0["gateway"]) * 1000 / (n * (t1 - t0)), "errors": errors,
            **shares}


# --- baseline: the same echo through the bus only ----------------------------------------------------------


async def run_baseline(n: int, nats_url: str, batch: int, seconds: float) -> dict[str, float]:
    per_message = load_settings().gateway_audio_in_ms // 20
    bus = await Bus.connect(nats_url, name="bench-baseline", source="gateway")
    stats = Stats()
    measuring = asyncio.Event()
    stop = asyncio.Event()

    async def one(index: int) -> None:
        call_id = subjects.new_call_id()
        sent_at: dict[int, float] = {}

        async def on_delta(env: Envelope) -> None:
            now = time.perf_counter()
            audio = base64.b64decode(env.json()["delta"])
            sent = sent_at.get(struct.unpack("!I", audio[-160:][:4])[0])
            if sent is not None and measuring.is_set():
                stats.rtt_ms.append((now - sent) * 1000)

        sub = await bus.subscribe(subjects.rt_server(call_id, "response.output_audio.delta"), on_delta)
        started = CallStarted(call_id=call_id, carrier="bench", agent="bench", audio_format="audio/pcmu",
                              started_at=datetime.now(UTC).isoformat())
        await bus.publish_event(subjects.call_started(call_id), started.encode(), call_id=call_id)
        await asyncio.sleep(0.5 + (index % 50) * FRAME_S / 50)
        headers = {Headers.AUDIO_FORMAT: "audio/pcmu"}
        start, k = time.perf_counter(), 0
        held: list[bytes] = []
        while not stop.is_set():
            k += 1
            due = start + (k - 1) * FRAME_S
            now = time.perf_counter()
            if now < due:
                await asyncio.sleep(due - now)
            held.append(frame(k))
            if len(held) < per_message:  # as the gateway does: one audio.in message per per_message frames
                continue
            sent_at[k] = time.perf_counter()
            sent_at.pop(k - 200, None)
            await bus.publish(subjects.call_audio_in(call_id), b"".join(held), call_id=call_id, headers=headers)
            held.clear()
        await sub.unsubscribe()

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(2.0 + n / 150)
    measuring.set()
    await asyncio.sleep(seconds)
    measuring.clear()
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await bus.close()
    return {"rtt_p50": pct(stats.rtt_ms, 0.5), "rtt_p99": pct(stats.rtt_ms, 0.99), "echoes": len(stats.rtt_ms)}


# --- orchestration -----------------------------------------------------------------------------------------


async def wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url + "/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"gateway at {url} not ready")


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    server = natsserver.start(tmp / "nats")
    port = natsserver.free_port()
    env = {**os.environ, "SWITCHBOARD_NATS_URL": server.url, "SWITCHBOARD_GATEWAY_PORT": str(port),
           "SWITCHBOARD_DATA_DIR": str(tmp), "SWITCHBOARD_JS_MAX_AGE": "600", "PYTHONPATH": str(ROOT)}
    gateway = subprocess.Popen([sys.executable, "-m", "services.gateway"], cwd=ROOT, env=env,  # noqa: ASYNC220
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    echo = subprocess.Popen([sys.executable, str(THIS), "--role", "echo", "--nats", server.url,  # noqa: ASYNC220
                             "--batch", str(args.batch)], cwd=ROOT, env=env, stdout=subprocess.PIPE)
    try:
        await wait_ready(f"http://127.0.0.1:{port}")
        assert echo.stdout is not None
        await asyncio.to_thread(echo.stdout.readline)
        bus = await Bus.connect(server.url, name="bench-loadgen", source="session")
        per_message = load_settings().gateway_audio_in_ms // 20
        if args.batch % per_message:
            print(f"WARNING: --batch {args.batch} is not a multiple of the {per_message} frames per audio.in message:"
                  " some round trips include the gateway holding a frame for its message")
        print(f"gateway bench: {args.batch * 20} ms deltas (batch {args.batch}), {20 * per_message} ms per audio.in "
              f"message, {args.seconds:.0f} s per run, "
              f"late = round trip > {LATE_MS:.0f} ms; cpu {os.cpu_count()} cores")
        header = (f"{'calls':>6} {'rtt p50':>8} {'rtt p99':>8} {'base p50':>9} {'base p99':>9} {'added p50':>10} "
                  f"{'added p99':>10} {'ratio p50':>9} {'late %':>7} {'clear p50':>10} {'clear p99':>10} "
                  f"{'cpu-ms/call-s':>14} {'send lag p99':>12} {'errors':>6}")
        print(header)
        best = 0
        loads: list[str] = []
        rig: list[tuple[int, float]] = []  # (calls, cores used by the load generator, echo peer and nats-server)
        gateway_ms: list[float] = []  # the gateway's CPU-ms per call-second at each N
        late_pcts: list[float] = []
        for n in args.calls:
            base = await run_baseline(n, server.url, args.batch, min(args.seconds, 6.0))
            gw = await run_gateway(n, f"ws://127.0.0.1:{port}/twilio/media", bus, args.batch, args.seconds,
                                   gateway.pid, {"echo": echo.pid, "nats": server.process.pid})
            loads.append(f"{n:>6}  " + "  ".join(f"{k[4:]} {v:.2f}" for k, v in gw.items()
                                            if k.startswith("cpu_") and k != "cpu_ms_per_call_s"))
            rig.append((n, gw["cpu_loadgen"] + gw["cpu_echo"] + gw["cpu_nats"]))
            gateway_ms.append(gw["cpu_ms_per_call_s"])
            late_pcts.append(gw["late_pct"])
            if gw["late_pct"] < 1.0 and gw["echoes"] > 0 and gw["errors"] == 0:
                best = max(best, n)
            print(f"{n:>6} {gw['rtt_p50']:>8.2f} {gw['rtt_p99']:>8.2f} {base['rtt_p50']:>9.2f} {base['rtt_p99']:>9.2f} "
                  f"{gw['rtt_p50'] - base['rtt_p50']:>10.2f} {gw['rtt_p99'] - base['rtt_p99']:>10.2f} "
                  f"{gw['rtt_p50'] / base['rtt_p50']:>9.2f} {gw['late_pct']:>7.2f} {gw['clear_p50']:>10.2f} "
                  f"{gw['clear_p99']:>10.2f} {gw['cpu_ms_per_call_s']:>14.2f} {gw['send_lag_p99']:>12.2f} "
                  f"{gw['errors']:>6.0f}", flush=True)
            await asyncio.sleep(1.0)
        print("(times in ms; 'base' = the same echo through the bus only; 'ratio p50' = gateway / base)")
        print(f"CPU used during each gateway run (cores; {os.cpu_count()} on the machine; 'others' = processes"
              " outside this benchmark, e.g. other work sharing the machine):")
        print("\n".join(loads))
        cores = os.cpu_count() or 1
        for (n, used), gw_ms, late in zip(rig, gateway_ms, late_pcts, strict=True):
            if n < 100:  # below that fixed costs (timers, idle polling) dominate the per-call share
                continue
            if late >= SATURATED_LATE_PCT:
                print(f"at {n} calls the machine was saturated ({late:.0f} % of frames late): the work due was not "
                      "all done, so per-call CPU figures from this run understate the cost")
                continue
            print(f"without the gateway, the rest of the rig (load generator + echo peer + nats-server) used "
                  f"{used:.2f} cores at {n} calls: {used * 300 / n:.2f} cores at 300 calls if it scales "
                  f"linearly, of the {cores} on the machine")
            print(f"  the gateway at {n} calls: {gw_ms:.2f} CPU-ms per call-second, so one gateway process (one "
                  f"core at most: the GIL) is full at {1000 / gw_ms:.0f} calls; 300 calls need {gw_ms * 0.3:.2f} "
                  f"cores of gateway + {used * 300 / n:.2f} of rig = {gw_ms * 0.3 + used * 300 / n:.2f} of the "
                  f"{cores}")
        print(f"largest N with < 1% of frames late (> {LATE_MS:.0f} ms round trip): {best}")
        await bus.close()
    finally:
        gateway.terminate()
        echo.terminate()
        for proc in (gateway, echo):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=lambda s: [int(x) for x in s.split(",")], default=[10, 100, 300],
                        help="comma-separated concurrent call counts (default 10,100,300)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per N (s)")
    parser.add_argument("--batch", type=int, default=4,
                        help="inbound 20 ms frames per echoed delta (4 = 80 ms; a multiple of the gateway's "
                             "frames per audio.in message)")
    parser.add_argument("--role", choices=["bench", "echo"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--nats", default="", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    from shared.runtime import install_uvloop

    install_uvloop()  # the gateway runs on uvloop too (services/gateway/__main__.py)
    arguments = parse_args()
    if arguments.role == "echo":
        asyncio.run(echo_role(arguments.nats, arguments.batch))
    else:
        asyncio.run(main(arguments))
