"""A lean batch pull from a durable JetStream consumer (the pull API over core NATS).

nats-py's ``PullSubscription.fetch`` awaits each message with its own timeout (a future and a timer per
message); at archive rates that costs more than the archive write. This puller sends one pull request per
batch to ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`` (JetStream pull API, ADR-13:
https://github.com/nats-io/nats-architecture-and-design/blob/main/adr/ADR-13.md) with the reply on a private
inbox, collects messages in a subscription callback and ends the batch on a status message (``404`` no
messages, ``408`` request expired, ``409`` conflict) or when the batch is full.

:meth:`BatchPuller.fetch` first takes whatever is available at once (``no_wait``); when nothing is, it waits up
to ``timeout`` for one message and then takes the rest available — low latency at a trickle, full batches
under load. Messages arrive in consumer delivery order on the one inbox, so batches keep stream order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["BatchPuller"]

_STATUS = "Status"
_HEARTBEAT = "100"


class BatchPuller:
    """Pull batches from durable ``consumer`` of ``stream`` (``start`` first, ``stop`` at the end)."""

    def __init__(self, nc: NATS, stream: str, consumer: str, *, api_prefix: str = "$JS.API") -> None:
        self.nc = nc
        self.subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._buffer: list[Msg] = []
        self._want = 0
        self._done = asyncio.Event()
        self.last_status: str | None = None

    async def start(self) -> None:
        """Subscribe the reply inbox."""
        self._sub = await self.nc.subscribe(self.inbox, cb=self._on_msg, pending_msgs_limit=1 << 20,
                                            pending_bytes_limit=1 << 30)

    async def stop(self) -> None:
        """Unsubscribe the reply inbox."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get(_STATUS) if msg.headers else None
        if status:
            if status != _HEARTBEAT:
                self.last_status = status
                self._done.set()
            return
        self._buffer.append(msg)
        if len(self._buffer) >= self._want:
            self._done.set()

    async def _request(self, request: dict[str, Any], want: int, wait: float) -> list[Msg]:
        self._buffer = []
        self._want = want
        self._done.clear()
        await self.nc.publish(self.subject, json.dumps(request).encode(), reply=self.inbox)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), wait)
        out, self._buffer = self._buffer, []
        return out

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to ``batch`` messages: those available now, else the first to arrive within ``timeout`` seconds
        plus those available right after it; [] when none came."""
        msgs = await self._request({"batch": batch, "no_wait": True}, batch, timeout + 1)
        if msgs or batch == 1:
            return msgs
        first = await self._request({"batch": 1, "expires": int(timeout * 1e9)}, 1, timeout + 1)
        if not first:
            return []
        return first + await self._request({"batch": batch - 1, "no_wait": True}, batch - 1, timeout + 1)
