"""Bus benchmark: our wrappers vs raw nats-py, measured in the same run against the same nats-server.

Prints, for core publish → subscriber delivery and request/reply round trips, p50/p99 latency in µs, and for
JetStream asynchronous publish the throughput in messages/s — each beside raw nats-py and with the ratio
(target: wrappers ≤ 1.2× raw). Telemetry is on, as in production (spans exported to ``otel.spans``).

Two baselines: ``raw`` (nats-py, no headers; JetStream: only ``Nats-Msg-Id``) and ``raw+h`` (nats-py sending
the same six headers the bus sets — for JetStream built per message, as any caller must: unique id, seq, ts),
so the wrapper's own cost is visible apart from the header bytes on the wire. It also prints the floor of a
traced message (:func:`telemetry_floor_us`): the CPU cost, measured in the same process and run, of the
OpenTelemetry work a traced message does on the measured path (its SDK spans, W3C context inject/extract, the
bus-hop histogram), and the best ratio a traced event or request could reach if everything else were free; then
the two traced rows again in a child process started with ``OTEL_SDK_DISABLED=true`` against the same server (the
bus code unchanged, the SDK's tracers and meters no-ops), so what the SDK costs in place — caches, allocation,
the export thread — shows beside what the bus itself costs.

Run: ``.venv/bin/python bench/bus.py [--n 5000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import nats
import orjson
from _sdk_off import sdk_off_figures
from nats.aio.msg import Msg
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from shared import subjects
from shared.bus import Envelope
from shared.config import load_settings
from shared.runtime import start_service, stop_service, tune_gc
from shared.telemetry import span_to_dict
from switchboard import natsserver

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def raw_publish_latency(url: str, n: int, payload: bytes, subject: str = "bench.raw",
                              headers: dict[str, str] | None = None) -> list[float]:
    """Raw nats-py publish → subscriber delivery on ``subject``, optionally with a fixed set of headers (µs each).

    Each row publishes raw and bus messages on subjects of the same kind: a ``call.<id>.session.*`` event is
    also stored by the CALLS stream on the server, an ``audio.in`` frame is not.
    """
    nc = await nats.connect(url)
    got: asyncio.Queue[int] = asyncio.Queue()

    async def cb(msg: Msg) -> None:
        got.put_nowait(time.perf_counter_ns())

    await nc.subscribe(subject, cb=cb)
    await nc.flush()
    lat = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await nc.publish(subject, payload, headers=headers)
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


async def raw_js_throughput(url: str, n: int, payload: bytes, run: int, same_headers: bool = False) -> float:
    """Raw nats-py ``publish_async`` throughput (msg/s): only ``Nats-Msg-Id``, or (``same_headers``) the six
    headers the bus sets, built per message the way a caller of nats-py would (f-strings, ``time.time_ns``)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    call = f"raw{run}{int(same_headers)}"
    t0 = time.perf_counter()
    for i in range(n):
        if same_headers:
            headers = {"Switchboard-Source": "bench", "Switchboard-Ts": str(time.time_ns()),
                       "Switchboard-Call-Id": call, "Switchboard-Seq": str(i + 1),
                       "Nats-Msg-Id": f"{call}:bench:{i + 1}", "traceparent": TRACEPARENT}
        else:
            headers = {"Nats-Msg-Id": f"{call}-{i}"}
        await js.publish_async(f"rt.{call}.client.x{i % 4}", payload, headers=headers)
    await js.publish_async_completed()
    dt = time.perf_counter() - t0
    await nc.close()
    return n / dt


def _messaging_attributes(operation: str, subject: str, template: str) -> dict[str, AttributeValue]:
    """The attributes the bus gives a messaging span (``shared.bus.client``: ``_send_span`` / ``dispatch``)."""
    return {"messaging.system": "nats", "messaging.operation.type": "process" if operation == "process" else "send",
            "messaging.operation.name": operation, "messaging.destination.name": subject,
            "messaging.destination.template": template, "messaging.message.body.size": 72,
            "messaging.message.id": "benchcall:bench:1", "switchboard.call_id": "benchcall"}


def telemetry_floor_us(n: int, kind: str) -> list[float]:
    """CPU µs of the OpenTelemetry work a traced message does BEFORE its handler (event) or before the caller
    has its reply (request), with the bus's attribute sets and this process's tracer and meter providers (batch
    processor → ``otel.spans``): what any per-message-traced NATS client pays on the measured path, whatever its
    own code costs. Everything the design asks of a traced message (docs/architecture.md, "Traces": a span per
    lifecycle/control message on each side, W3C context in headers, the bus-hop histogram) and nothing else.

    - ``event``: PRODUCER span started, context injected, span ended (the publish returns before nats-py's
      flusher writes, so its end is on the path); then the receiver extracts the context, records the hop and
      starts its CONSUMER span as current — timer stops, as the handler would run — and ends it off the clock.
    - ``request``: CLIENT span started, context injected; the responder extracts, records the hop, runs its SERVER
      span (started as current, reply context injected, ended: the reply is published inside it and the same
      process must finish that step before the caller resumes); the caller's CLIENT span ends.
    """
    from shared import metrics

    tracer = trace.get_tracer("bench.floor")
    event = kind == "event"
    subject = "call.benchcall.session.bench" if event else "tools.bench_noop"
    template = "call.{call_id}.session.bench" if event else subject
    send_attrs = _messaging_attributes("publish" if event else "request", subject, template)
    process_attrs = _messaging_attributes("process", subject, template)
    hop_attrs = {"messaging.destination.template": template}

    def receive(headers: dict[str, str]) -> int:
        """The receiving side; returns when its handler would start (perf_counter ns)."""
        token = otel_context.attach(propagate.extract(headers))
        try:
            metrics.BUS_HOP.record(0.1, hop_attrs)
            with tracer.start_as_current_span(f"process {template}", attributes=process_attrs,
                                              kind=SpanKind.CONSUMER if event else SpanKind.SERVER):
                started = time.perf_counter_ns()
                if not event:
                    propagate.inject({})  # the reply's headers
        finally:
            otel_context.detach(token)
        return started

    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        headers: dict[str, str] = {}
        span = tracer.start_span(f"publish {template}" if event else f"send {template}", attributes=send_attrs,
                                 kind=SpanKind.PRODUCER if event else SpanKind.CLIENT)
        with trace.use_span(span, end_on_exit=True):
            propagate.inject(headers)
            if not event:  # the responder runs inside the caller's CLIENT span
                receive(headers)
        t1 = receive(headers) if event else time.perf_counter_ns()
        out.append((t1 - t0) / 1000)
    return out


def span_export_us(n: int) -> list[float]:
    """CPU cost (µs) of serializing those two finished spans for ``otel.spans`` (:func:`span_to_dict` + JSON),
    which the batch processor's thread pays later, off the message's path but on the same GIL."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "switchboard-bench"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench.spans")
    attrs: dict[str, AttributeValue] = {
        "messaging.system": "nats", "messaging.destination.name": "call.benchcall.session.bench",
        "messaging.destination.template": "call.{call_id}.session.bench", "messaging.message.body.size": 72,
        "messaging.message.id": "benchcall:bench:1", "switchboard.call_id": "benchcall"}
    tracer.start_span("publish", kind=SpanKind.PRODUCER, attributes=attrs).end()
    tracer.start_span("process", kind=SpanKind.CONSUMER, attributes=attrs).end()
    pair = memory.get_finished_spans()
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        orjson.dumps([span_to_dict(span) for span in pair])  # as NatsSpanExporter does
        out.append((time.perf_counter_ns() - t0) / 1000)
    provider.shutdown()
    return out


async def bus_js_throughput(bus: object, n: int, payload: bytes, call_id: str) -> float:
    """``Bus.publish_event`` throughput (msg/s) with the same body bytes as raw nats-py: the session's event log
    publishes each Realtime frame's bytes as received, so the JSON is never re-encoded on this path."""
    from shared.bus import Bus

    assert isinstance(bus, Bus)
    t0 = time.perf_counter()
    for i in range(n):
        await bus.publish_event(subjects.rt_client(call_id, f"x{i % 4}"), payload, call_id=call_id, traced=False)
    await bus.flush_acks()
    return n / (time.perf_counter() - t0)


async def traced_rows(url: str, bus: object, n: int) -> dict[str, float]:
    """p50 (µs) of raw and bus latency for the two traced rows: ``event`` and ``request`` (raw first, then bus)."""
    event: dict[str, object] = {"type": "response.done", "response": {"id": "resp_1", "status": "completed"}}
    raw_event = b'{"type":"response.done","response":{"id":"resp_1","status":"completed"}}'
    stored = subjects.session_event("rawoff", "bench")
    return {
        "event raw": pct(await raw_publish_latency(url, n, raw_event, stored), 0.5),
        "event bus": pct(await bus_publish_latency(bus, n, event, "benchoff"), 0.5),
        "request raw": pct(await raw_request_latency(url, n, raw_event), 0.5),
        "request bus": pct(await bus_request_latency(bus, n, event), 0.5),
    }


async def sdk_off_child(url: str, n: int) -> None:
    """The traced rows in a process started with ``OTEL_SDK_DISABLED=true`` (the SDK hands out no-op tracers and
    meters): the same bus code with everything else equal. Prints one JSON object (subprocess entry point)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-bus-off-"))
    ctx = await start_service("bench-sdk-off", load_settings(nats_url=url, data_dir=tmp, js_max_age=600))
    tune_gc()
    try:
        await traced_rows(url, ctx.bus, 200)  # warm-up
        print(json.dumps(await traced_rows(url, ctx.bus, n)), flush=True)
    finally:
        await stop_service(ctx)


async def main(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-bus-"))
    server = natsserver.start(tmp / "nats")
    settings = load_settings(nats_url=server.url, data_dir=tmp, js_max_age=600)
    ctx = await start_service("bench", settings)
    tune_gc()  # as run_service does for every service process
    event: dict[str, object] = {"type": "response.done", "response": {"id": "resp_1", "status": "completed"}}
    raw_event = b'{"type":"response.done","response":{"id":"resp_1","status":"completed"}}'
    try:
        # warm-up
        await raw_publish_latency(server.url, 200, raw_event, subjects.session_event("warm", "bench"))
        await bus_publish_latency(ctx.bus, 200, event, "warm")
        frame = b"\xff" * 160
        same_headers = {"Nats-Msg-Id": "c:gateway:1", "Switchboard-Source": "gateway", "Switchboard-Call-Id": "c",
                        "Switchboard-Seq": "1", "Switchboard-Ts": str(time.time_ns()),
                        "traceparent": TRACEPARENT}
        rows = []
        audio = subjects.call_audio_in("rawaudio")
        bare = await raw_publish_latency(server.url, n, frame, audio)
        with_headers = await raw_publish_latency(server.url, n, frame, audio, same_headers)
        ours = await bus_publish_latency(ctx.bus, n, frame, "benchaudio", "audio")
        rows.append(("audio frame (no span)", bare, with_headers, ours))
        stored = subjects.session_event("rawcall", "bench")  # captured by the CALLS stream, like the bus's
        bare = await raw_publish_latency(server.url, n, raw_event, stored)
        with_headers = await raw_publish_latency(server.url, n, raw_event, stored, same_headers)
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
        export = pct(span_export_us(n), 0.5)
        print("floor of a traced message, measured now in this process (telemetry only, everything else free; an "
              "untraced message through the bus costs what raw does, see the audio row):")
        print(f"  serializing a message's two finished spans for otel.spans costs {export:.1f} µs p50 more, in the "
              "batch processor's thread: off the path, but on this process's GIL")
        for label, kind, row in (("event", "event", rows[1]), ("request/reply", "request", rows[2])):
            floor = telemetry_floor_us(n, kind)
            raw_p50, bus_p50 = pct(row[1], 0.5), pct(row[3], 0.5)
            best = (raw_p50 + pct(floor, 0.5)) / raw_p50
            print(f"  {label:<14} OpenTelemetry on the path {pct(floor, 0.5):5.1f} µs p50 ({pct(floor, 0.99):.1f} p99)"
                  f" = {pct(floor, 0.5) / raw_p50:.2f} of raw p50 → best possible {best:.2f}x raw, "
                  f"{best + export / raw_p50:.2f}x with the export's CPU (target 1.2); "
                  f"measured {bus_p50 / raw_p50:.2f}x")
        off = await sdk_off_figures(__file__, server.url, "--n", str(n))
        print("the same traced rows in a child process with OTEL_SDK_DISABLED=true (no spans, no metrics; the bus "
              "code unchanged): event {:.2f}x raw ({:.1f} vs {:.1f} µs p50), request/reply {:.2f}x raw ({:.1f} vs "
              "{:.1f}) — what the OpenTelemetry SDK adds in place is the difference from the table above".format(
                  off["event bus"] / off["event raw"], off["event bus"], off["event raw"],
                  off["request bus"] / off["request raw"], off["request bus"], off["request raw"]))
        js_n = n * 4
        raw_tp: list[float] = []
        raw_h_tp: list[float] = []
        bus_tp: list[float] = []
        for i in range(3):  # interleaved, so drift on a shared machine hits all three alike
            raw_tp.append(await raw_js_throughput(server.url, js_n, raw_event, i))
            raw_h_tp.append(await raw_js_throughput(server.url, js_n, raw_event, i, same_headers=True))
            bus_tp.append(await bus_js_throughput(ctx.bus, js_n, raw_event, f"tp{i}"))
        r_mps, rh_mps, b_mps = (statistics.median(v) for v in (raw_tp, raw_h_tp, bus_tp))
        print(f"jetstream async publish (median of 3): raw {r_mps:,.0f} msg/s, raw+h {rh_mps:,.0f} msg/s, bus "
              f"{b_mps:,.0f} msg/s; time ratio bus/raw {r_mps / b_mps:.2f}, bus/raw+h {rh_mps / b_mps:.2f} "
              "(target ≤ 1.2)")
    finally:
        await stop_service(ctx)
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000, help="messages per latency measurement")
    parser.add_argument("--sdk-off", metavar="NATS_URL", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sdk_off:
        asyncio.run(sdk_off_child(args.sdk_off, args.n))
    else:
        asyncio.run(main(args.n))
