"""``Bus.flush_acks`` waits for the publishes made before it, not for a busy connection to go idle: a session
taking a call over flushes before it reads the call's log, and with other calls publishing all the time the
connection is never idle (every takeover waited the whole timeout)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from shared.bus import Headers
from shared.bus.acks import AckTracker

ACK = b'{"stream":"RT","seq":1}'


class FakeNats:
    """Just what :class:`AckTracker` uses of a connection: the replies are settled by the test."""

    def __init__(self) -> None:
        self.replies: list[str] = []

    def new_inbox(self) -> str:
        return "_INBOX.test"

    async def subscribe(self, subject: str, cb: Any) -> object:
        return object()

    async def publish(self, subject: str, data: bytes, reply: str, headers: dict[str, str]) -> None:
        self.replies.append(reply)


async def publish(tracker: AckTracker, n: int) -> None:
    await tracker.publish("rt.x", b"{}", {Headers.MSG_ID: f"m{n}"}, None)


def settle(tracker: AckTracker, nc: FakeNats, n: int) -> None:
    tracker._settle(nc.replies[n][len("_INBOX.test."):], ACK, None)  # the ack arriving


async def test_waits_for_earlier_publishes_only() -> None:
    nc = FakeNats()
    tracker = AckTracker(cast(NATS, nc), cast(JetStreamContext, object()), ack_timeout=60)
    await publish(tracker, 0)
    await publish(tracker, 1)
    barrier = asyncio.create_task(tracker.wait_settled(30))
    await asyncio.sleep(0)  # the barrier is taken
    await publish(tracker, 2)  # published after the barrier: never acknowledged in this test
    settle(tracker, nc, 0)
    await asyncio.sleep(0.01)
    assert not barrier.done()  # message 1 is still pending
    settle(tracker, nc, 1)
    assert await asyncio.wait_for(barrier, 5)
    assert tracker.pending == 1
    assert not await tracker.wait_idle(0.05)  # the connection is not idle, as in a busy session service
    tracker.stop()


async def test_times_out_when_an_earlier_publish_is_not_acknowledged() -> None:
    nc = FakeNats()
    tracker = AckTracker(cast(NATS, nc), cast(JetStreamContext, object()), ack_timeout=60)
    await publish(tracker, 0)
    assert not await tracker.wait_settled(0.05)
    settle(tracker, nc, 0)
    assert await tracker.wait_settled(1)
    tracker.stop()
