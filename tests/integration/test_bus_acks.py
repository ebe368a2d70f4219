"""JetStream publish acks (shared.bus.acks) against a real nats-server: every message is acknowledged, a refused
or unanswered publish is retried and then surfaced, and the pending bound holds a publisher back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from shared import subjects
from shared.bus import Bus, Headers
from shared.bus.acks import ack_failure
from shared.config import load_settings
from shared.errors import PublishFailedError
from switchboard import natsserver


def test_ack_failure_reads_acks_errors_and_no_responders() -> None:
    assert ack_failure(b'{"stream":"RT","seq":7}') is None
    assert ack_failure(b'{"stream":"RT","seq":7,"duplicate":true}') is None
    assert ack_failure(b'{"stream":"error","seq":1}') is None  # "error" only as a value
    refused = ack_failure(b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}')
    assert refused is not None and "10077" in refused and "maximum messages exceeded" in refused
    assert ack_failure(b"", "503") is not None
    assert ack_failure(b"", "408") is not None
    assert ack_failure(b"not json") is not None
    assert ack_failure(b'{"error": broken') is not None


async def test_every_publish_is_acknowledged_and_lands_once(bus: Bus, unique: str) -> None:
    call_id = f"acks{unique}"
    for n in range(500):
        await bus.publish_event(subjects.rt_client(call_id, "input_audio_buffer.append"), {"n": n},
                                call_id=call_id)
    await bus.flush_acks(10)
    assert bus.acks.pending == 0 and bus.failed_publishes == []
    events = [env async for env in bus.replay(subjects.rt_all(call_id), subjects.RT_STREAM)]
    assert [env.json()["n"] for env in events] == list(range(500))
    assert [env.seq for env in events] == list(range(1, 501))


async def test_a_publish_no_stream_takes_is_retried_then_surfaced(nats_url: str,
                                                                  unique: str) -> None:
    bus = await Bus.connect(nats_url, name="test-nostream", source="session", ack_timeout=2.0)
    bus.max_attempts = 2
    surfaced: list[PublishFailedError] = []

    async def on_failure(error: PublishFailedError, call_id: str | None) -> None:
        surfaced.append(error)

    bus.on_publish_failure(on_failure)
    try:
        started = time.monotonic()
        hdrs = await bus.publish_event(f"nostream{unique}.x", {"n": 1}, call_id=f"c{unique}")
        await bus.flush_acks(10)
        assert [e.msg_id for e in surfaced] == [hdrs[Headers.MSG_ID]]
        # refused at once (503), not after the 2 s ack timeout; the one retry follows 0.1 s later
        assert time.monotonic() - started < 1.0
        assert surfaced[0].attempts == 2 and bus.failed_publishes == surfaced
    finally:
        await bus.close()


async def test_pending_bound_holds_the_publisher_until_acks_settle(tmp_path: Path) -> None:
    server = natsserver.start(tmp_path / "js")
    bus = await Bus.connect(server.url, name="bounded", source="session", ack_timeout=0.4)
    bus.max_attempts = 1
    bus.acks.max_pending = 2
    try:
        await bus.ensure_streams(load_settings(js_max_age=600))
        server.stop()  # nothing will be acknowledged
        started = time.monotonic()
        for n in range(2):
            await bus.publish_event(subjects.rt_client("bounded1", "x"), {"n": n}, call_id="bounded1")
        assert time.monotonic() - started < 0.3
        third = asyncio.create_task(bus.publish_event(subjects.rt_client("bounded1", "x"), {"n": 2},
                                                      call_id="bounded1"))
        await asyncio.sleep(0.2)
        assert not third.done()  # two unacknowledged: the third waits
        await asyncio.wait_for(third, 5)
        assert time.monotonic() - started >= 0.4  # released when the first two timed out
        await bus.flush_acks(10)
        assert len(bus.failed_publishes) == 3  # one attempt each: all surfaced, none dropped
    finally:
        await bus.close()
        server.stop()
