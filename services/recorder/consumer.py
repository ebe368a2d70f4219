"""Durable JetStream pull consumers: CALLS and RT into the archive, TRACES into the spans table.

One durable consumer per stream (name ``<prefix>-calls|rt|traces``, ``AckPolicy.ALL``), read in batches by
:class:`services.recorder.puller.BatchPuller` (kept over nats-py's ``PullSubscription.fetch``, which cost the
recorder markedly more CPU per event in a same-run benchmark; see docs/recorder.md). A batch is one transaction and
is acknowledged by acking its last message, only after the commit — and only once every sequence below it is
archived or recorded as a gap (below), so the cumulative ack never covers a message the archive lacks
(at-least-once; the archive skips redeliveries by position and its inserts are idempotent on
``(stream, stream_seq)``).

The database, not the consumer, is the source of truth for the position: at start-up a durable whose ack floor
differs from the committed position (a crash between commit and ack, or before commit) is recreated to start at
the committed position + 1, so redeliveries never overtake newer messages and the per-call chains stay in stream
order. A batch whose transaction fails is retried (backoff, with ``in_progress`` acks) before anything newer is
fetched.

Batches are gathered, not taken one by one: after a batch that was not full the next fetch waits ``linger_s``
(0.1 s) while the batch commits, so at live rates a transaction, its ack, its span and the finalizer callback
are paid per ~0.1 s of traffic rather than per handful of events (the archive's lag grows by at most
``linger_s``). A full batch is followed at once by the next fetch.

Nothing readable is skipped: when a batch does not continue at the committed position + 1 (deliveries lost while
the connection stalled, a consumer that ran ahead), the missing range is re-read from the stream by a short-lived
ephemeral consumer (:func:`services.recorder.reread.reread`) and archived first, in stream order. Only sequences the
stream no longer holds (below its ``first_seq``: expired or purged; or deleted) become gaps, which the archive
records in the chains of the calls they may have hit (``Archive.persist``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.recorder.archive import Archive, BatchResult
from services.recorder.puller import BatchPuller
from services.recorder.records import Gap, Incoming
from services.recorder.reread import reread
from shared import metrics, subjects
from shared.bus import Headers, batch_span

__all__ = ["GUARD_POLL_S", "BatchCallback", "ConsumerStats", "StreamConsumer"]

GUARD_POLL_S = 0.25
"""Seconds between checks of a false guard while a batch is held."""

log = logging.getLogger(__name__)

BatchCallback = Callable[[str, BatchResult], Awaitable[None]]
"""``async callback(stream_name, result)`` run after each committed CALLS/RT batch."""


@dataclass(slots=True)
class ConsumerStats:
    """Running figures of one consumer."""

    batches: int = 0
    stored: int = 0
    skipped: int = 0
    reread: int = 0
    """Messages re-read from the stream to fill a hole in the delivered sequence."""
    gaps: int = 0
    """Stream sequences recorded as gaps (gone from the stream)."""
    failures: int = 0
    lag_ms: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=200_000))
    """Per committed message: ``Switchboard-Ts`` (publish) → commit, ms (bounded window)."""
    store_lag_ms: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=200_000))
    """Per committed message: stored in JetStream → commit, ms (the recorder's own share of the lag)."""


class StreamConsumer:
    """Fetch → persist → ack loop for one stream (see the module docstring)."""

    def __init__(self, nc: NATS, archive: Archive, stream: subjects.StreamSpec, *,
                 durable_prefix: str = "recorder", batch: int = 512, fetch_timeout: float = 1.0,
                 on_batch: BatchCallback | None = None, track_lag: bool = False, linger_s: float = 0.1,
                 guard: Callable[[], bool] | None = None) -> None:
        self.nc = nc
        self.guard = guard
        """Checked before each batch is persisted (the single-writer lease, ``services.recorder.lease``): while
        false the batch is held, neither persisted nor acked, until it is true again (a renewal that was only
        late) or the service stops (the lease was lost: the batch is redelivered to the next writer)."""
        self.fenced = False
        """True while a batch is held because the guard is false."""
        self.js: JetStreamContext = nc.jetstream()
        self.archive = archive
        self.stream = stream
        self.durable = f"{durable_prefix}-{stream.name.lower()}"
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.on_batch = on_batch
        self.track_lag = track_lag
        self.linger_s = linger_s
        self.stats = ConsumerStats()
        self.ready = asyncio.Event()

    async def _subscribe(self) -> BatchPuller:
        """Bind the durable (recreated at the committed position + 1 when its ack floor disagrees)."""
        position = await self.archive.position(self.stream.name)
        try:
            info = await self.js.consumer_info(self.stream.name, self.durable)
            floor = info.ack_floor.stream_seq or 0 if info.ack_floor is not None else None
            if floor == position and not info.num_ack_pending:
                return await self._puller()
            log.info("recreating consumer %s at stream seq %d (ack floor %s)", self.durable, position + 1, floor)
            await self.js.delete_consumer(self.stream.name, self.durable)
        except nats.js.errors.NotFoundError:
            pass
        config = ConsumerConfig(
            durable_name=self.durable, ack_policy=AckPolicy.ALL, ack_wait=60.0, max_ack_pending=-1,
            max_deliver=-1, inactive_threshold=None,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if position else DeliverPolicy.ALL,
            opt_start_seq=position + 1 if position else None)
        await self.js.add_consumer(self.stream.name, config)
        return await self._puller()

    async def _puller(self) -> BatchPuller:
        puller = BatchPuller(self.nc, self.stream.name, self.durable)
        await puller.start()
        return puller

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until ``stopping`` is set (a batch in flight is committed and acked first)."""
        psub = await self._subscribe()
        self.ready.set()
        # the next batch is fetched while the current one is being committed (batches still handled in order)
        pending: asyncio.Task[list[Msg] | None] = asyncio.create_task(self._fetch(psub))
        try:
            while not stopping.is_set():
                msgs = await pending
                if msgs is None:
                    return
                linger = self.linger_s if msgs and len(msgs) < self.batch else 0.0
                pending = asyncio.create_task(self._fetch(psub, linger))
                if msgs:
                    await self._handle(msgs, stopping)
        finally:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
            await psub.stop()

    async def _fetch(self, psub: BatchPuller, linger: float = 0.0) -> list[Msg] | None:
        """One fetch after ``linger`` seconds: the messages, [] on timeout or a transient error, None once the
        connection is closed."""
        if linger > 0:
            await asyncio.sleep(linger)
        try:
            return await psub.fetch(self.batch, timeout=self.fetch_timeout)
        except TimeoutError:
            return []
        except nats.errors.ConnectionClosedError:
            return None
        except Exception as exc:  # connection blip: fetch again
            log.warning("fetch from %s failed: %s", self.stream.name, exc)
            await asyncio.sleep(0.5)
            return []

    async def _handle(self, msgs: list[Msg], stopping: asyncio.Event) -> None:
        by_seq: dict[int, Incoming] = {}
        for msg in msgs:
            try:
                incoming = Incoming.from_msg(msg)
            except ValueError as exc:
                log.error("dropping a non-JetStream message on %s: %s", msg.subject, exc)
                continue
            by_seq[incoming.stream_seq] = incoming
        batch = [by_seq[s] for s in sorted(by_seq)]
        delay = 0.2
        while True:
            if self.guard is not None and not self.guard():
                if not self.fenced:
                    log.warning("%s: the writer lease is not valid; holding %d events", self.durable, len(batch))
                self.fenced = True
                if stopping.is_set():
                    return  # not acked: the next writer gets it again from the committed position
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), GUARD_POLL_S)
                continue
            self.fenced = False
            try:
                if self.stream.name == subjects.TRACES_STREAM.name:  # no span: it would trace itself
                    stored = await self.archive.persist_spans(batch)
                    result = BatchResult(stored=stored)
                else:
                    with batch_span("persist", self.stream.name, [m.headers for m in batch]):
                        result = await self._persist_complete(batch)
                break
            except Exception as exc:  # database down/locked, stream unreachable: retry, keep stream order
                self.stats.failures += 1
                log.error("persisting %d %s events failed (retrying in %.1fs): %s", len(batch),
                          self.stream.name, delay, exc)
                for msg in msgs:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()
                if stopping.is_set():
                    return  # not acked: redelivered after restart from the committed position
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        await msgs[-1].ack()  # AckPolicy.ALL: covers the batch and every re-read sequence below it
        self.stats.batches += 1
        self.stats.stored += result.stored
        self.stats.skipped += result.skipped
        if result.stored:
            metrics.EVENTS_PERSISTED.add(result.stored, {"stream": self.stream.name})
        if self.track_lag:
            now = time.time_ns()
            for m in batch:
                ts = m.headers.get(Headers.TS)
                if ts and ts.isdigit():
                    self.stats.lag_ms.append((now - int(ts)) / 1e6)
                self.stats.store_lag_ms.append((now - m.stream_ts_ns) / 1e6)
        if self.on_batch is not None and self.stream.name != subjects.TRACES_STREAM.name:
            try:
                await self.on_batch(self.stream.name, result)
            except Exception:
                log.exception("batch callback failed")

    async def _persist_complete(self, batch: list[Incoming]) -> BatchResult:
        """Archive ``batch`` after whatever the stream holds between the committed position and it (one
        transaction per :meth:`_complete` chunk); the results merged."""
        position = await self.archive.position(self.stream.name)
        fresh = [m for m in batch if m.stream_seq > position]
        total = BatchResult(skipped=len(batch) - len(fresh), last_stream_seq=position)
        if not fresh:
            return total
        async for chunk, gaps in self._complete(position, fresh):
            result = await self.archive.persist(self.stream.name, chunk, gaps)
            total.stored += result.stored
            total.skipped += result.skipped
            total.calls |= result.calls
            total.ended |= result.ended
            total.gap += result.gap
            total.last_stream_seq = result.last_stream_seq
        self.stats.gaps += total.gap
        return total

    async def _complete(self, position: int, fresh: list[Incoming]) -> AsyncIterator[tuple[list[Incoming], list[Gap]]]:
        """``fresh`` (sequences above ``position``, ascending) with every hole before or between them filled:
        re-read from the stream, or a :class:`Gap` for what the stream no longer holds. Yields ``(messages,
        gaps)`` chunks of at most ``batch`` messages that continue each other without a hole. With nothing
        archived yet (``position`` 0) the archive starts at the stream's ``first_seq``."""
        chunk: list[Incoming] = []
        gaps: list[Gap] = []
        expected = position + 1
        first_seq: int | None = None
        for msg in fresh:
            if msg.stream_seq > expected:
                if first_seq is None:
                    first_seq = int((await self.js.stream_info(self.stream.name)).state.first_seq or 0)
                if position == 0 and expected == 1:
                    expected = min(max(first_seq, 1), msg.stream_seq)  # before the archive began: not a gap
                gone_last = min(msg.stream_seq, first_seq) - 1
                if gone_last >= expected:
                    gaps.append(Gap(expected, gone_last, f"expired or purged: below the stream's first_seq "
                                                         f"{first_seq}"))
                    expected = gone_last + 1
            if msg.stream_seq > expected:
                log.warning("%s stream sequences %d..%d were not delivered; re-reading them from the stream",
                            self.stream.name, expected, msg.stream_seq - 1)
                async for got in reread(self.js, self.stream.name, expected, msg.stream_seq - 1):
                    if got.stream_seq > expected:
                        gaps.append(Gap(expected, got.stream_seq - 1, "no longer in the stream (deleted)"))
                    chunk.append(got)
                    self.stats.reread += 1
                    expected = got.stream_seq + 1
                    if len(chunk) >= self.batch:
                        yield chunk, gaps
                        chunk, gaps = [], []
                if msg.stream_seq > expected:
                    gaps.append(Gap(expected, msg.stream_seq - 1, "no longer in the stream (deleted)"))
            chunk.append(msg)
            expected = msg.stream_seq + 1
        yield chunk, gaps
