"""Whole-path benchmark: Switchboard as shipped against a bare single-process bridge, same echo model, same run.

One command (``make bench`` runs it with the other benches):

    .venv/bin/python bench/pipeline.py [--calls 20,40,max] [--seconds 20] [--late-ms 100]

1. Starts the whole system as ``switchboard up`` does (:class:`tests.drills_support.Stack`: supervisor, embedded
   nats-server, every service a child process; tracing and the log on) in a temp data dir on free ports.
2. Starts the bare bridge (``bench/_bare_bridge.py``: FastAPI + websockets, Twilio frames ↔ Realtime events, no
   bus, no persistence) as its own process against the same local model (echo: model ``switchboard-echo``).
3. For each N: N Twilio Media Streams calls (``bench/_twilio_load.py``: 20 ms μ-law frames at real time, each
   frame marked in its audio) into the gateway with ``agent=echo``, then the same N into the bare bridge.
   ``max`` = the largest N the bare bridge holds (every frame back, late share ≤ 1 %), found by stepping N by
   ``--step`` from 60 with short rounds first.

Prints per N: CPU per call-second (ms of CPU per second of call audio) of every Switchboard process
(nats-server, gateway, session, tools, recorder, analytics: every process ``switchboard up`` runs but the local
model; from ``/proc``, :mod:`bench._proc_cpu`) and their sum, the
bare bridge's, the ratio; echo round trip p50/p95/p99 (send of a frame → its return), late share (round trip
over ``--late-ms``), frames lost / duplicated, audio returned that the callers never sent; recorder lag (age of
the oldest message the recorder has not yet archived — its durable consumer's ack floor + 1, JetStream's storage
time — sampled every 0.5 s; max over RT, CALLS and TRACES). The local model (it stands in for OpenAI) and the load
generator are excluded from both sides and shown for information. Switchboard's CPU window runs from the first
call until the recorder has archived everything (at most 30 s after the last call); the bare bridge's until its
last call ended.

Results are written to ``bench/results/pipeline-<UTC time>.json`` (machine, date, command, every figure).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _proc_cpu import cpu_seconds  # noqa: E402
from _twilio_load import CallResult, run_calls  # noqa: E402

from shared import subjects  # noqa: E402
from switchboard import natsserver  # noqa: E402
from tests.drills_support import Stack  # noqa: E402

SB_PROCS = ("nats", "gateway", "session", "tools", "recorder", "analytics")
"""The processes whose CPU is Switchboard's (the local model stands in for OpenAI and is excluded)."""
STREAMS = (subjects.RT_STREAM.name, subjects.CALLS_STREAM.name, subjects.TRACES_STREAM.name)
ECHO_MODEL = "switchboard-echo"


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def summarize(results: list[CallResult], late_ms: float) -> dict[str, Any]:
    """Round trip percentiles (ms), late share, lost/duplicated frames and unmarked audio over every call."""
    rtts = [r for c in results for r in c.rtt_ms if not math.isnan(r)]
    sent = sum(c.sent for c in results)
    returned = sum(c.returned for c in results)
    unmarked = sum(c.unmarked_bytes for c in results)
    lost_first = sum(1 for c in results for r in c.rtt_ms[:50] if math.isnan(r))
    lost_last = sum(1 for c in results for r in c.rtt_ms[50:][-50:] if math.isnan(r))
    return {
        "calls": len(results), "frames_sent": sent, "frames_returned": returned, "lost": sent - returned,
        "lost_first_s": lost_first, "lost_last_s": lost_last,
        "duplicated": sum(c.duplicated for c in results), "unmarked_ms": unmarked / 8.0,
        "returned_share": (returned * 160 + unmarked) / (sent * 160) if sent else math.nan,
        "rtt_p50_ms": _pct(rtts, 50), "rtt_p95_ms": _pct(rtts, 95), "rtt_p99_ms": _pct(rtts, 99),
        "rtt_max_ms": max(rtts) if rtts else math.nan,
        "late_share": sum(1 for r in rtts if r > late_ms) / len(rtts) if rtts else math.nan,
        "media_messages": sum(c.media_messages for c in results), "clears": sum(c.clears for c in results),
        "errors": sorted({c.error for c in results if c.error})[:5],
    }


class LagSampler:
    """Samples the recorder's lag per stream every ``interval`` s (see the module docstring)."""

    def __init__(self, nats_url: str, options: dict[str, Any], interval: float = 0.5) -> None:
        self.nats_url = nats_url
        self.options = options
        self.interval = interval
        self.samples: dict[str, list[float]] = {s: [] for s in STREAMS}

    async def lag(self, js: Any, stream: str) -> float:
        """Seconds the oldest not-yet-archived message of ``stream`` has waited (0 when none waits)."""
        info = await js.stream_info(stream)
        cons = await js.consumer_info(stream, f"recorder-{stream.lower()}")
        floor = cons.ack_floor.stream_seq if cons.ack_floor else 0
        if floor >= info.state.last_seq:
            return 0.0
        try:
            msg = await js.get_msg(stream, floor + 1, next=True)
        except Exception:
            return 0.0
        if msg.time is None:
            return 0.0
        return max(0.0, float((dt.datetime.now(dt.UTC) - msg.time).total_seconds()))

    async def current(self) -> float:
        """The largest lag over every stream right now."""
        nc = await nats.connect(self.nats_url, connect_timeout=5, **self.options)
        try:
            js = nc.jetstream()
            return max([await self.lag(js, s) for s in STREAMS])
        finally:
            await nc.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until ``stop`` is set."""
        nc = await nats.connect(self.nats_url, connect_timeout=5, **self.options)
        try:
            js = nc.jetstream()
            while not stop.is_set():
                for s in STREAMS:
                    with contextlib.suppress(Exception):
                        self.samples[s].append(await self.lag(js, s))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)
        finally:
            await nc.close()

    def figures(self) -> dict[str, float]:
        """``{"max_s", "p95_s", "<STREAM>_max_s"...}`` over the samples taken."""
        every = [v for s in STREAMS for v in self.samples[s]]
        out = {"max_s": max(every, default=0.0), "p95_s": _pct(every, 95) if every else 0.0}
        out.update({f"{s}_max_s": max(self.samples[s], default=0.0) for s in STREAMS})
        return out


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        with contextlib.suppress(FileNotFoundError):
            out[name] = cpu_seconds(pid)
    return out


def _cpu_delta(before: dict[str, float], after: dict[str, float], call_seconds: float) -> dict[str, float]:
    """CPU ms per call-second per process."""
    return {k: (after[k] - before[k]) * 1000.0 / call_seconds for k in before if k in after}


def start_profilers(pids: dict[str, int], seconds: float, out: Path, tag: str) -> list[subprocess.Popen[bytes]]:
    """py-spy (``record --nonblocking``, 50 Hz, raw collapsed stacks) on each process for ``seconds``;
    writes ``<out>/<tag>-<name>.txt``. A profiled round's CPU figures include py-spy's reads: not a measurement."""
    out.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    return [subprocess.Popen([str(spy), "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "50",
                              "-f", "raw", "--nonblocking", "-o", str(out / f"{tag}-{name}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, pid in pids.items()]


async def switchboard_round(stack: Stack, calls: int, seconds: float, late_ms: float,
                            profile: Path | None = None, echo_marks: bool = True) -> dict[str, Any]:
    """N calls through the gateway; CPU of every Switchboard process until the recorder caught up."""
    pids = {name: stack.pid(name) for name in SB_PROCS}
    spies = (start_profilers({k: pids[k] for k in ("gateway", "session", "recorder", "analytics")}, seconds, profile,
                             f"sb{calls}") if profile else [])
    pids["localmodel"] = stack.pid("localmodel")
    pids["loadgen"] = os.getpid()
    sampler = LagSampler(stack.nats_url, stack.supervisor.operator_options())
    stop = asyncio.Event()
    lag_task = asyncio.create_task(sampler.run(stop))
    before, t0 = _cpu(pids), time.monotonic()
    results = await run_calls(calls, seconds, gateway_url=stack.gateway_url, params={"agent": "echo"},
                              echo_marks=echo_marks)
    load_s = time.monotonic() - t0
    caught_up_by = time.monotonic() + 30.0
    while time.monotonic() < caught_up_by:
        await asyncio.sleep(0.5)
        if await sampler.current() == 0.0:
            break
    catch_up_s = time.monotonic() - t0 - load_s
    after = _cpu(pids)
    stop.set()
    await lag_task
    for spy in spies:
        await asyncio.to_thread(spy.wait)
    cpu = _cpu_delta(before, after, calls * seconds)
    total = sum(cpu[k] for k in SB_PROCS if k in cpu)
    return {"cpu_ms_per_call_s": cpu, "cpu_total": total, "load_s": load_s, "catch_up_s": catch_up_s,
            "recorder_lag": sampler.figures(), **summarize(results, late_ms)}


async def bare_round(bridge_pid: int, bridge_url: str, model_pid: int, calls: int, seconds: float,
                     late_ms: float, profile: Path | None = None, echo_marks: bool = True) -> dict[str, Any]:
    """N calls through the bare bridge; its CPU over the load."""
    pids = {"bridge": bridge_pid, "localmodel": model_pid, "loadgen": os.getpid()}
    spies = start_profilers({"bridge": bridge_pid}, seconds, profile, f"bare{calls}") if profile else []
    before, t0 = _cpu(pids), time.monotonic()
    results = await run_calls(calls, seconds, ws_url=bridge_url, echo_marks=echo_marks)
    load_s = time.monotonic() - t0
    after = _cpu(pids)
    for spy in spies:
        await asyncio.to_thread(spy.wait)
    cpu = _cpu_delta(before, after, calls * seconds)
    return {"cpu_ms_per_call_s": cpu, "cpu_total": cpu["bridge"], "load_s": load_s,
            **summarize(results, late_ms)}


def holds(row: dict[str, Any]) -> bool:
    """The bare bridge holds N: every frame came back and at most 1 % of them late."""
    return bool(row["lost"] == 0 and not row["errors"] and row["late_share"] <= 0.01)


async def start_bridge(port: int, model_url: str) -> subprocess.Popen[bytes]:
    """Start ``bench/_bare_bridge.py`` and wait for ``/readyz``."""
    proc = subprocess.Popen(  # noqa: ASYNC220 - a start-up step, nothing else runs yet
        [sys.executable, str(ROOT / "bench" / "_bare_bridge.py"), "--port", str(port),
                             "--model-url", model_url], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"http://127.0.0.1:{port}/readyz", timeout=1)).status_code == 200:
                    return proc
            await asyncio.sleep(0.1)
    proc.terminate()
    raise RuntimeError("the bare bridge did not start")


async def search_max(doc: dict[str, Any], bridge_pid: int, bridge_url: str, model_pid: int,
                     args: argparse.Namespace) -> int:
    """The largest N the bare bridge holds (:func:`holds`): up from ``--max-from`` by ``--step`` while it holds,
    or down by ``--step`` until it does when it does not hold there; 0 when it holds none (down to ``--step``)."""
    async def held(n: int) -> bool:
        row = await bare_round(bridge_pid, bridge_url, model_pid, n, args.search_seconds, args.late_ms)
        doc["search"].append({"calls": n, "holds": holds(row), **row})
        print(f"  search: bare bridge at {n} calls: p99 {_fmt(row['rtt_p99_ms'])} ms, late "
              f"{_fmt(100 * row['late_share'])} %, lost {row['lost']} -> "
              f"{'holds' if holds(row) else 'does not hold'}", flush=True)
        await asyncio.sleep(2)
        return holds(row)

    n = int(args.max_from)
    step, limit = int(args.step), int(args.max_limit)
    if await held(n):
        while n + step <= limit and await held(n + step):
            n += step
        return n
    n -= step
    while n >= step:
        if await held(n):
            return n
        n -= step
    return 0


def _fmt(v: float, spec: str = ".1f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def print_row(calls: int, sb: dict[str, Any], bare: dict[str, Any]) -> None:
    """One N's figures as a few aligned lines."""
    c = sb["cpu_ms_per_call_s"]
    procs = "  ".join(f"{k} {_fmt(c.get(k, math.nan))}" for k in SB_PROCS)
    ratio = sb["cpu_total"] / bare["cpu_total"] if bare["cpu_total"] else math.nan
    print(f"\n== {calls} calls", flush=True)
    print(f"  CPU ms per call-second: Switchboard {_fmt(sb['cpu_total'])} ({procs});  bare bridge "
          f"{_fmt(bare['cpu_total'])};  ratio {_fmt(ratio, '.2f')}x   [local model: sb "
          f"{_fmt(c.get('localmodel', math.nan))} / bare {_fmt(bare['cpu_ms_per_call_s'].get('localmodel', math.nan))};"
          f" load generator: sb {_fmt(c.get('loadgen', math.nan))} / bare "
          f"{_fmt(bare['cpu_ms_per_call_s'].get('loadgen', math.nan))}]")
    for name, row in (("Switchboard", sb), ("bare bridge", bare)):
        print(f"  {name:12s} round trip p50/p95/p99 {_fmt(row['rtt_p50_ms'])}/{_fmt(row['rtt_p95_ms'])}/"
              f"{_fmt(row['rtt_p99_ms'])} ms (max {_fmt(row['rtt_max_ms'], '.0f')}), late "
              f"{_fmt(100 * row['late_share'])} %, frames {row['frames_returned']}/{row['frames_sent']} back, "
              f"lost {row['lost']} (first s {row['lost_first_s']}, last s {row['lost_last_s']}), "
              f"dup {row['duplicated']}, unmarked {_fmt(row['unmarked_ms'], '.0f')} ms, "
              f"returned {_fmt(100 * row['returned_share'])} %, clears {row['clears']}"
              + (f", errors {row['errors']}" if row["errors"] else ""))
    lag = sb["recorder_lag"]
    print(f"  recorder lag max {_fmt(lag['max_s'], '.2f')} s (p95 {_fmt(lag['p95_s'], '.2f')}; RT "
          f"{_fmt(lag['RT_max_s'], '.2f')}, CALLS {_fmt(lag['CALLS_max_s'], '.2f')}, TRACES "
          f"{_fmt(lag['TRACES_max_s'], '.2f')}); caught up {_fmt(sb['catch_up_s'])} s after the load;  "
          f"p99 minus bare p99: {_fmt(sb['rtt_p99_ms'] - bare['rtt_p99_ms'])} ms (target <= 30)", flush=True)


def machine() -> dict[str, Any]:
    """Where the run happened: host, CPU model, cores, load average at the start."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"host": platform.node(), "cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "loadavg": os.getloadavg()}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Run every round; returns the result document."""
    wanted = [c.strip() for c in args.calls.split(",") if c.strip()]
    doc: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine(),
                           "command": " ".join([Path(sys.executable).name, *sys.argv]),
                           "seconds": args.seconds, "late_ms": args.late_ms, "rounds": [], "search": []}
    with tempfile.TemporaryDirectory(prefix="sb-pipeline-") as tmp:
        async with Stack(Path(tmp)) as stack:
            port = natsserver.free_port()
            model_url = f"ws://127.0.0.1:{stack.settings.localmodel_port}/v1/realtime?model={ECHO_MODEL}"
            bridge = await start_bridge(port, model_url)
            bridge_url = f"ws://127.0.0.1:{port}/media"
            model_pid = stack.pid("localmodel")
            try:
                await run_calls(2, 2.0, gateway_url=stack.gateway_url, params={"agent": "echo"})  # warm up
                await run_calls(2, 2.0, ws_url=bridge_url)
                for item in wanted:
                    if item == "max":
                        best = await search_max(doc, bridge.pid, bridge_url, model_pid, args)
                        if best == 0:
                            print("  the bare bridge held none of the searched N; skipping max", flush=True)
                            continue
                        calls = best
                    else:
                        calls = int(item)
                    sb = await switchboard_round(stack, calls, args.seconds, args.late_ms, args.profile,
                                                 not args.no_mark_echo)
                    await asyncio.sleep(2)
                    bare = await bare_round(bridge.pid, bridge_url, model_pid, calls, args.seconds, args.late_ms,
                                            args.profile, not args.no_mark_echo)
                    doc["rounds"].append({"calls": calls, "max": item == "max", "switchboard": sb, "bare": bare,
                                          "cpu_ratio": sb["cpu_total"] / bare["cpu_total"]})
                    print_row(calls, sb, bare)
                    await asyncio.sleep(2)
            finally:
                bridge.terminate()
                bridge.wait(10)
    return doc


def main() -> None:
    """Parse the arguments, run, print, write ``bench/results/pipeline-<time>.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="20,40,max", help="comma-separated N, 'max' = largest the bare holds")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per call (s)")
    parser.add_argument("--late-ms", type=float, default=100.0, help="a frame later than this is late (ms)")
    parser.add_argument("--max-from", type=int, default=60)
    parser.add_argument("--max-limit", type=int, default=200)
    parser.add_argument("--step", type=int, default=20)
    parser.add_argument("--search-seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--no-mark-echo", action="store_true",
                        help="diagnostic: callers do not echo marks (what the mark path costs)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy each process during each round; collapsed stacks into this dir")
    args = parser.parse_args()
    doc = asyncio.run(main_async(args))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"pipeline-{doc['date'].replace(':', '').replace('+0000', 'Z')}.json"
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"\nwritten: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
