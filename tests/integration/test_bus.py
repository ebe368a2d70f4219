"""The bus against a real nats-server: headers and trace context across processes, JetStream publish
retries through an outage, de-duplication, replay and request/reply errors."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opentelemetry import propagate
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared import subjects
from shared.bus import Bus, Envelope, Headers
from shared.bus.wire import SwitchboardClient
from shared.config import load_settings
from shared.errors import PublishFailedError, ServiceCallError
from switchboard import natsserver

PUBLISHER = textwrap.dedent("""
    import asyncio, sys
    from opentelemetry import trace
    from shared.bus import Bus
    from shared.telemetry import setup_telemetry

    async def main() -> None:
        setup_telemetry("switchboard-test-publisher")
        bus = await Bus.connect(sys.argv[1], name="publisher", source="gateway")
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("call") as span:
            print(format(span.get_span_context().trace_id, "032x"), flush=True)
            await bus.publish(sys.argv[2], {"hello": "world"}, call_id=sys.argv[3])
        await bus.close()

    asyncio.run(main())
""")


async def test_message_crosses_processes_with_trace_and_headers(bus: Bus, unique: str) -> None:
    call_id = f"xproc{unique}"
    subject = subjects.call_started(call_id)
    received: asyncio.Queue[Envelope] = asyncio.Queue()

    async def handler(env: Envelope) -> None:
        await received.put(env)

    await bus.subscribe(subject, handler)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PUBLISHER, bus.nc.connected_url.geturl() if bus.nc.connected_url else "",
        subject, call_id, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    trace_id = out.decode().strip()
    env = await asyncio.wait_for(received.get(), 10)
    assert env.json() == {"hello": "world"}
    for header in (Headers.MSG_ID, Headers.TRACEPARENT, Headers.CALL_ID, Headers.SOURCE, Headers.SEQ, Headers.TS):
        assert header in env.headers, header
    assert env.call_id == call_id and env.source == "gateway" and env.seq == 1
    assert env.headers[Headers.TRACEPARENT].split("-")[1] == trace_id
    ctx = TraceContextTextMapPropagator().extract(env.headers)
    assert ctx  # a valid remote context was carried
    assert propagate.get_global_textmap() is not None


async def test_headers_interoperate_with_stock_nats_py(bus: Bus, nats_url: str, unique: str) -> None:
    """Our header codec (shared.bus.wire) and nats-py's read each other's messages identically."""
    import nats

    stock = await nats.connect(nats_url, **load_settings().nats_options())
    try:
        odd = {"Plain": "v", "Spaced": "  padded  ", "Multi": "a\r\nb", "Utf8": "caf\u00e9"}
        by_stock: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        by_bus: asyncio.Queue[Envelope] = asyncio.Queue()

        warm = {"a": asyncio.Event(), "b": asyncio.Event()}

        async def stock_cb(msg: object) -> None:
            if getattr(msg, "data", b"") == b"warm":
                warm["a"].set()
            else:
                by_stock.put_nowait(dict(getattr(msg, "headers", None) or {}))

        async def handler(env: Envelope) -> None:
            if env.data == b"warm":
                warm["b"].set()
            else:
                by_bus.put_nowait(env)

        await stock.subscribe(f"wire.{unique}.a", cb=stock_cb)
        await stock.flush()
        await bus.subscribe(f"wire.{unique}.b", handler, dedupe=False)
        # the stock client's flush can return before the server has its SUB (see
        # test_flush_after_subscribe_means_the_server_has_the_subscription): warm both routes first
        for _ in range(40):
            if warm["a"].is_set() and warm["b"].is_set():
                break
            await bus.nc.publish(f"wire.{unique}.a", b"warm")
            await stock.publish(f"wire.{unique}.b", b"warm")
            await asyncio.gather(bus.nc.flush(), stock.flush())
            await asyncio.sleep(0.05)

        sent = await bus.publish(f"wire.{unique}.a", b"x", call_id=f"w{unique}", headers=odd)
        seen_by_stock = await asyncio.wait_for(by_stock.get(), 10)
        assert seen_by_stock == {k: v.strip().replace("\r\n", "  ") for k, v in sent.items()}

        await stock.publish(f"wire.{unique}.b", b"y", headers=odd)
        env = await asyncio.wait_for(by_bus.get(), 10)
        await stock.publish(f"wire.{unique}.a", b"y", headers=odd)
        assert env.headers == await asyncio.wait_for(by_stock.get(), 10)
    finally:
        await stock.close()


async def test_flush_after_subscribe_means_the_server_has_the_subscription(bus: Bus, nats_url: str,
                                                                          unique: str) -> None:
    """nats-py 2.16 writes a flush's PING ahead of a SUB still queued for its flusher, so ``subscribe`` +
    ``flush`` could return before the server had the subscription (2–8 in 100 messages published right then
    were lost). Our client sends the SUB first, and every message published once ``subscribe`` returned
    arrives."""
    probe = SwitchboardClient()
    await probe.connect(nats_url, **load_settings().nats_options())
    written: list[bytes] = []
    transport = probe._transport
    assert transport is not None
    real_write, real_writelines = transport.write, transport.writelines

    def write(data: bytes) -> None:
        written.append(bytes(data))
        real_write(data)

    def writelines(lines: list[bytes]) -> None:
        written.extend(bytes(line) for line in lines)
        real_writelines(lines)

    transport.write, transport.writelines = write, writelines  # type: ignore[method-assign, assignment]
    await probe.subscribe(f"order.{unique}.*", cb=None)
    await probe.flush()
    stream = b"".join(written)
    assert stream.index(f"SUB order.{unique}.*".encode()) < stream.index(b"PING\r\n")
    await probe.close()

    missed = 0
    for i in range(100):
        fresh = await Bus.connect(nats_url, name="test-fresh", source="tools")
        got = asyncio.Event()

        async def on_message(env: Envelope, got: asyncio.Event = got) -> None:
            got.set()

        await fresh.subscribe(f"fresh.{unique}{i}.*", on_message, dedupe=False)  # subscribe flushes
        await bus.nc.publish(f"fresh.{unique}{i}.x", b"{}")
        try:
            await asyncio.wait_for(got.wait(), 2)
        except TimeoutError:
            missed += 1
        await fresh.close()
    assert missed == 0


async def test_seq_is_per_call_and_gapless(bus: Bus, unique: str) -> None:
    seen: list[tuple[str, int | None]] = []
    done = asyncio.Event()

    async def handler(env: Envelope) -> None:
        assert env.call_id is not None
        seen.append((env.call_id, env.seq))
        if len(seen) == 6:
            done.set()

    await bus.subscribe(f"call.*.session.{unique}", handler)
    for i in range(3):
        for cid in (f"a{unique}", f"b{unique}"):
            await bus.publish(subjects.session_event(cid, unique), {"i": i}, call_id=cid)
    await asyncio.wait_for(done.wait(), 10)
    assert [s for c, s in seen if c == f"a{unique}"] == [1, 2, 3]
    assert [s for c, s in seen if c == f"b{unique}"] == [1, 2, 3]


async def test_core_subscription_drops_replayed_seq(bus: Bus, unique: str) -> None:
    """A retried publish (same call, source and seq) must not be handled twice by a live consumer."""
    call_id = f"dup{unique}"
    subject = subjects.call_audio_in(call_id)
    got: list[bytes] = []

    async def handler(env: Envelope) -> None:
        got.append(env.data)

    await bus.subscribe(subject, handler)
    headers = await bus.publish(subject, b"one", call_id=call_id)
    await bus.nc.publish(subject, b"one-again", headers=headers)  # the same message re-sent
    await bus.publish(subject, b"two", call_id=call_id)
    await bus.nc.flush()
    for _ in range(100):
        if len(got) >= 2:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    assert got == [b"one", b"two"]


async def test_replay_returns_a_call_in_stream_order(bus: Bus, unique: str) -> None:
    call_id = f"replay{unique}"
    types = ["session.update", "input_audio_buffer.append", "response.create"]
    for t in types:
        await bus.publish_event(subjects.rt_client(call_id, t), {"type": t}, call_id=call_id)
    await bus.flush_acks(10)
    got = [env async for env in bus.replay(subjects.rt_all(call_id), subjects.RT_STREAM)]
    assert [env.json()["type"] for env in got] == types
    assert [env.seq for env in got] == [1, 2, 3]
    assert await bus.streams.last_seq(call_id, subjects.RT_STREAM, subjects.rt_all(call_id)) == 3
    heads = [env async for env in bus.streams.replay(subjects.rt_all(call_id), subjects.RT_STREAM, headers_only=True)]
    assert [(env.seq, env.data) for env in heads] == [(1, b""), (2, b""), (3, b"")]  # headers, no bodies
    assert [env async for env in bus.replay(subjects.rt_all(f"none{unique}"), subjects.RT_STREAM)] == []


async def test_request_errors_are_service_errors(bus: Bus, unique: str) -> None:
    service = await bus.add_service(f"switchboard-test-{unique}")

    async def fail(env: Envelope) -> dict[str, str]:
        raise ServiceCallError(409, "That slot is already taken.")

    async def crash(env: Envelope) -> dict[str, str]:
        raise RuntimeError("secret internals")

    await bus.add_endpoint(service, name="fail", subject=f"tools.fail{unique}", handler=fail)
    await bus.add_endpoint(service, name="crash", subject=f"tools.crash{unique}", handler=crash)
    with pytest.raises(ServiceCallError) as err:
        await bus.request(f"tools.fail{unique}", {}, timeout=5)
    assert (err.value.code, err.value.message) == (409, "That slot is already taken.")
    with pytest.raises(ServiceCallError) as err:
        await bus.request(f"tools.crash{unique}", {}, timeout=5)
    assert err.value.code == 500 and "secret" not in err.value.message
    with pytest.raises(ServiceCallError) as err:
        await bus.request(f"tools.nobody{unique}", {}, timeout=2)
    assert err.value.code == 503
    await service.stop()


async def _stream_count(js_bus: Bus, subject: str) -> int:
    info = await js_bus.js.stream_info("CALLS", subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def test_publish_during_outage_is_retried_without_duplicates(tmp_path: Path) -> None:
    """The server goes away after a publish is sent; the retry (same Nats-Msg-Id) lands once it is back."""
    port = natsserver.free_port()
    server = natsserver.start(tmp_path / "js", port=port)
    bus = await Bus.connect(server.url, name="outage", source="gateway", ack_timeout=1.0)
    bus.max_attempts = 8
    try:
        await bus.ensure_streams(load_settings(js_max_age=600))
        call_id = "outage1"
        await bus.publish_event(subjects.call_started(call_id), {"n": 1}, call_id=call_id)
        await bus.flush_acks(10)
        server.stop()
        await bus.publish_event(subjects.call_ended(call_id), {"reason": "caller_hangup"}, call_id=call_id)
        await asyncio.sleep(1.5)  # first ack times out, retries begin while the server is down
        server = natsserver.start(tmp_path / "js", port=port)
        await bus.flush_acks(30)
        assert bus.failed_publishes == []
        assert await _stream_count(bus, subjects.call_ended(call_id)) == 1
        assert await _stream_count(bus, subjects.call_started(call_id)) == 1
    finally:
        await bus.close()
        server.stop()


async def test_publish_that_never_lands_is_surfaced(tmp_path: Path) -> None:
    server = natsserver.start(tmp_path / "js")
    bus = await Bus.connect(server.url, name="down", source="session", ack_timeout=0.3)
    bus.max_attempts = 3
    surfaced: list[tuple[PublishFailedError, str | None]] = []

    async def on_failure(error: PublishFailedError, call_id: str | None) -> None:
        surfaced.append((error, call_id))

    bus.on_publish_failure(on_failure)
    try:
        await bus.ensure_streams(load_settings(js_max_age=600))
        server.stop()
        hdrs = await bus.publish_event(subjects.rt_server("lost1", "response.done"), {"type": "response.done"},
                                       call_id="lost1")
        await bus.flush_acks(30)
        assert len(surfaced) == 1
        error, call_id = surfaced[0]
        assert call_id == "lost1" and error.msg_id == hdrs[Headers.MSG_ID] and error.attempts == 3
        assert bus.failed_publishes == [error]
    finally:
        await bus.close()
        server.stop()


def test_payload_encoding_is_compact_json() -> None:
    from shared.bus import encode_payload

    assert encode_payload({"a": 1, "b": "é"}) == json.dumps({"a": 1, "b": "é"}, separators=(",", ":"),
                                                            ensure_ascii=False).encode()
    assert encode_payload(b"\x00\xff") == b"\x00\xff"


def test_switchboard_up_starts_and_stops_nats(tmp_path: Path) -> None:
    port = natsserver.free_port()
    env = {**os.environ, "SWITCHBOARD_DATA_DIR": str(tmp_path / "data"), "SWITCHBOARD_NATS_PORT": str(port)}
    env.pop("SWITCHBOARD_NATS_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "switchboard.cli", "up", "--only", "none-selected"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "unknown services" in out
    proc = subprocess.Popen([sys.executable, "-m", "switchboard.cli", "up", "--only", "nats"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if "nats-server started" in line:
            break
    assert any(f"nats://127.0.0.1:{port}" in line for line in lines), lines
    assert natsserver._port_open("127.0.0.1", port)
    proc.send_signal(2)  # Ctrl-C
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode in (0, 1), rest
    assert "nats-server stopped" in rest
    assert not natsserver._port_open("127.0.0.1", port)
