"""What a peer reads to take over the calls of a crashed session instance (issue 22 item 3), on a real nats-server:

- the lapses of one owner's calls are reported side by side: a takeover still in progress does not hold up the
  next call's;
- every ownership renewal carries where the owner's log stood (its last ``Switchboard-Seq``, the caller audio it
  appended), and a watcher knows when the bucket stored it;
- with that mark the scans for the last seq and for the audio appended read only the log's tail (``since``), not
  every message of the call.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from services.session.audio import append_event
from services.session.ownership import TAIL_MARGIN_S, LogMark, Owner, Ownership, tail_start
from services.session.prepare import load_context
from services.session.rebuild import read_call_log
from shared import subjects
from shared.bus import Bus

pytestmark = pytest.mark.timeout(120)


async def test_the_calls_of_a_crashed_owner_are_reported_side_by_side(bus: Bus, unique: str) -> None:
    """Two calls lapse at once; the callback for the first does not return until the second was reported."""
    leaving, watching = Ownership(bus.js), Ownership(bus.js, ttl_s=3600)
    first, second = f"call_sbs1{unique}", f"call_sbs2{unique}"
    reported: dict[str, asyncio.Event] = {first: asyncio.Event(), second: asyncio.Event()}

    async def on_lapsed(call_id: str, owner: Owner, revision: int) -> None:
        if call_id not in reported:  # other tests' entries are in the bucket too
            return
        reported[call_id].set()
        if call_id == first:
            await reported[second].wait()
        else:
            await reported[first].wait()

    watching.on_lapsed(on_lapsed)
    await leaving.start(watch=False)
    await watching.start()
    try:
        for call_id in (first, second):
            assert await leaving.claim(call_id) == 1
        for call_id in (first, second):
            await leaving.leave(call_id)  # released: reported at once, not after the TTL
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in reported.values())), 30)
    finally:
        await leaving.stop()
        await watching.stop()


async def test_renewals_carry_the_owner_log_mark_and_readers_the_time_written(bus: Bus, unique: str) -> None:
    """The owner stamps its log mark on each renewal; a watcher sees it with the bucket's store time."""
    call_id = f"call_mark{unique}"
    at = datetime.now(UTC)
    owning = Ownership(bus.js, heartbeat_s=0.1,
                       mark_of=lambda cid: LogMark(41, at, (40, 16000)) if cid == call_id else None)
    watching = Ownership(bus.js, ttl_s=3600)
    await owning.start(watch=False)
    await watching.start()
    try:
        assert await owning.claim(call_id) == 1
        for _ in range(300):
            seen = watching.seen.get(call_id)
            if seen is not None and seen[0].mark is not None:
                break
            await asyncio.sleep(0.05)
        assert seen is not None
        owner = seen[0]
        assert (owner.owner, owner.epoch, owner.mark) == (owning.instance, 1, LogMark(41, at, (40, 16000)))
        assert owner.written is not None and owner.written.tzinfo is not None
        assert Owner.decode(owner.encode()) == owner  # ``written`` is not part of the value
    finally:
        await owning.release(call_id)
        await owning.stop()
        await watching.stop()


async def _log(bus: Bus, call_id: str, count: int) -> None:
    for _ in range(count):
        await bus.publish_event(subjects.rt_server(call_id, "response.output_audio.delta"), {"delta": ""},
                                call_id=call_id)
    await bus.flush_acks(10)


async def test_the_seq_scan_after_a_lapse_reads_only_the_log_tail(bus: Bus, nats_url: str, unique: str) -> None:
    """Messages stored before ``since`` are not read; the lapsed owner's mark is the floor of the result."""
    call_id = f"call_tail{unique}"
    await _log(bus, call_id, 3)  # seq 1..3
    await asyncio.sleep(TAIL_MARGIN_S + 0.2)
    mark = datetime.now(UTC)
    await _log(bus, call_id, 2)  # seq 4..5
    reader = await Bus.connect(nats_url, name="test-reader", source="session")
    try:
        tail = [env.seq async for env in reader.streams.replay(subjects.rt_all(call_id), subjects.RT_STREAM,
                                                               headers_only=True, since=mark)]
        assert tail == [4, 5]
        assert await reader.streams.last_seq(call_id, subjects.RT_STREAM, subjects.rt_all(call_id), since=mark) == 5
        assert await reader.streams.last_seq(call_id, subjects.RT_STREAM, subjects.rt_all(call_id)) == 5

        lapsed = Owner("crashed", 1, "", mark=LogMark(7, mark), written=mark)  # its 6..7 never reached the log
        start = tail_start(lapsed)
        assert start is not None and (mark - start).total_seconds() == TAIL_MARGIN_S
        _, last = await load_context(reader, call_id, asyncio.Event(), previous=lapsed)
        assert last == 7
        assert tail_start(Owner("old", 1, "", written=mark)) is None  # no mark: the whole log is read
        _, last = await load_context(reader, call_id, asyncio.Event(), previous=None)
        assert last == 5
    finally:
        await reader.close()


async def test_the_audio_a_lapsed_owner_appended_is_its_mark_plus_the_tail(bus: Bus, unique: str) -> None:
    """Appends stored before the tail are counted by the mark, not read; the owner's later appends (higher seq) in
    the tail are added, its appends up to the mark's seq and older epochs' copies are not."""
    call_id = f"call_app{unique}"
    subject = subjects.rt_client(call_id, "input_audio_buffer.append")
    bus.set_epoch(call_id, 2)
    for _ in range(3):  # seq 1..3, 100 bytes each: before the tail, never read
        await bus.publish_event(subject, append_event(b"\x01" * 100), call_id=call_id)
    await bus.flush_acks(10)
    await asyncio.sleep(TAIL_MARGIN_S + 0.2)
    at = datetime.now(UTC)
    await bus.publish_event(subject, append_event(b"\x02" * 10), call_id=call_id)  # seq 4: counted by the mark
    bus.set_epoch(call_id, 1)
    await bus.publish_event(subject, append_event(b"\x03" * 1000), call_id=call_id)  # a stale owner's copy
    bus.set_epoch(call_id, 2)
    for size in (7, 5):  # seq 6, 7: after the mark
        await bus.publish_event(subject, append_event(b"\x04" * size), call_id=call_id)
    await bus.flush_acks(10)
    lapsed = Owner("crashed", 2, "", mark=LogMark(4, at, (4, 310)), written=at)
    assert (await read_call_log(bus, call_id, previous=lapsed)).appended_bytes == 310 + 7 + 5
    assert (await read_call_log(bus, call_id)).appended_bytes == 300 + 10 + 7 + 5  # the whole log, fenced
