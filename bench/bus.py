"""Bus benchmark: our wrappers vs raw nats-py, measured in the same run against the same nats-server.

Prints, for core publish → subscriber delivery and request/reply round trips, p50/p99 latency in µs, and for
JetStream asynchronous publish the throughput in messages/s — each beside raw nats-py and with the ratio
(target: wrappers ≤ 1.2× raw). Telemetry is on, as in production (spans exported to ``otel.spans``).

Run: ``.venv/bin/python bench/bus.py [--n 5000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import nats
from nats.aio.msg import Msg

from shared import natsserver, subjects
from shared.bus import Envelope
from shared.config import load_settings
from shared.runtime import start_service, stop_service


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def raw_publish_latency(url: str, n: int, payload: bytes,
                              headers: dict[str, str] | None = None) -> list[float]:
    """Raw nats-py publish → subscriber delivery, optionally with a fixed set of headers (µs each)."""
    nc = await nats.connect(url)
    got: asyncio.Queue[int] = asyncio.Queue()

    async def cb(msg: Msg) -> None:
        got.put_nowait(time.perf_counter_ns())

    await nc.subscribe("bench.raw", cb=cb)
    await nc.flush()
    lat = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await nc.publish("bench.raw", payload, headers=headers)
        await nc.flush()
        t1 = await got.get()
        lat.append((t1 - t0) / 1000)
    await nc.close()
    return lat


async def bus_publish_latency(ctx_bus: object, n: int, payload: dict[str, object] | bytes, call_id: str,
                              subject_kind: str = "event") -> list[float]:
    """Bus publish → bus subscriber handler (µs each); ``audio`` uses the untraced audio.in subject."""
    from shared.bus import Bus

    assert isinstance(ctx_bus, Bus)
    got: asyncio.Queue[int] = asyncio.Queue()

    async def handler(env: Envelope) -> None:
        got.put_nowait(time.perf_counter_ns())

    subject = subjects.call_audio_in(call_id) if subject_kind == "audio" else subjects.session_event(call_id, "bench")
    sub = await ctx_bus.subscribe(subject, handler)
    lat = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await ctx_bus.publish(subject, payload, call_id=call_id)
        await ctx_bus.nc.flush()
        t1 = await got.get()
        lat.append((t1 - t0) / 1000)
    await sub.unsubscribe()
    return lat


async def raw_request_latency(url: str, n: int, payload: bytes) -> list[float]:
    nc = await nats.connect(url)

    async def responder(msg: Msg) -> None:
        await msg.respond(b'{"output":{}}')

    await nc.subscribe("bench.rawreq", cb=responder)
    await nc.flush()
    lat = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await nc.request("bench.rawreq", payload, timeout=5)
        lat.append((time.perf_counter_ns() - t0) / 1000)
    await nc.close()
    return lat


async def bus_request_latency(bus: object, n: int, payload: dict[str, object]) -> list[float]:
    from shared.bus import Bus

    assert isinstance(bus, Bus)
    service = await bus.add_service("switchboard-bench")

    async def handler(env: Envelope) -> dict[str, object]:
        return {"output": {}}

    await bus.add_endpoint(service, name="noop", subject="tools.bench_noop", handler=handler)
    lat = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await bus.request("tools.bench_noop", payload, timeout=5)
        lat.append((time.perf_counter_ns() - t0) / 1000)
    await service.stop()
    return lat


async def raw_js_throughput(url: str, n: int, payload: bytes) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    t0 = time.perf_counter()
    for i in range(n):
        await js.publish_async(f"rt.rawbench.client.x{i % 4}", payload, headers={"Nats-Msg-Id": f"raw-{i}"})
    await js.publish_async_completed()
    dt = time.perf_counter() - t0
    await nc.close()
    return n / dt


async def bus_js_throughput(bus: object, n: int, payload: dict[str, object], call_id: str) -> float:
    from shared.bus import Bus

    assert isinstance(bus, Bus)
    t0 = time.perf_counter()
    for i in range(n):
        await bus.publish_event(subjects.rt_client(call_id, f"x{i % 4}"), payload, call_id=call_id, traced=False)
    await bus.flush_acks()
    return n / (time.perf_counter() - t0)


async def main(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-bus-"))
    server = natsserver.start(tmp / "nats")
    settings = load_settings(nats_url=server.url, data_dir=tmp, js_max_age=600)
    ctx = await start_service("bench", settings)
    event: dict[str, object] = {"type": "response.done", "response": {"id": "resp_1", "status": "completed"}}
    raw_event = b'{"type":"response.done","response":{"id":"resp_1","status":"completed"}}'
    try:
        # warm-up
        await raw_publish_latency(server.url, 200, raw_event)
        await bus_publish_latency(ctx.bus, 200, event, "warm")
        frame = b"\xff" * 160
        same_headers = {"Nats-Msg-Id": "c:gateway:1", "Switchboard-Source": "gateway", "Switchboard-Call-Id": "c",
                        "Switchboard-Seq": "1", "Switchboard-Ts": str(time.time_ns()),
                        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
        rows = []
        bare = await raw_publish_latency(server.url, n, frame)
        with_headers = await raw_publish_latency(server.url, n, frame, same_headers)
        ours = await bus_publish_latency(ctx.bus, n, frame, "benchaudio", "audio")
        rows.append(("audio frame (no span)", bare, with_headers, ours))
        bare = await raw_publish_latency(server.url, n, raw_event)
        with_headers = await raw_publish_latency(server.url, n, raw_event, same_headers)
        ours = await bus_publish_latency(ctx.bus, n, event, "benchcall")
        rows.append(("event (2 spans)", bare, with_headers, ours))
        bare = await raw_request_latency(server.url, n, raw_event)
        ours = await bus_request_latency(ctx.bus, n, event)
        rows.append(("request/reply (2 spans)", bare, bare, ours))
        print("latency in µs; raw = nats-py without headers, raw+h = nats-py sending the same 6 headers")
        heads = ("raw p50", "raw p99", "raw+h p50", "raw+h p99", "bus p50", "bus p99")
        print(f"{'':<25}" + "".join(f"{h:>11}" for h in heads) + f"{'bus/raw p50':>13}{'bus/raw+h p50':>15}")
        for name, r, h, o in rows:
            values = (pct(r, 0.5), pct(r, 0.99), pct(h, 0.5), pct(h, 0.99), pct(o, 0.5), pct(o, 0.99))
            print(f"{name:<25}" + "".join(f"{v:>11.1f}" for v in values)
                  + f"{values[4] / values[0]:>13.2f}{values[4] / values[2]:>15.2f}")
        js_n = n * 4
        raw_tp = statistics.median([await raw_js_throughput(server.url, js_n, raw_event) for _ in range(3)])
        bus_tp = statistics.median([await bus_js_throughput(ctx.bus, js_n, event, f"tp{i}") for i in range(3)])
        print(f"jetstream async publish: raw {raw_tp:,.0f} msg/s, bus {bus_tp:,.0f} msg/s, "
              f"raw/bus time ratio {raw_tp / bus_tp:.2f} (target ≤ 1.2)")
    finally:
        await stop_service(ctx)
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000, help="messages per latency measurement")
    asyncio.run(main(parser.parse_args().n))
