"""Per-call outbound state: the bounded queue toward the carrier socket and the mark book.

The queue decouples the bus (model audio arrives in bursts, faster than real time) from the carrier socket:
the bus handler only appends and returns, so a slow socket never blocks another call's subscription. Audio
chunks beyond ``max_chunks`` are dropped (counted in ``switchboard.gateway.outbound.dropped``). Control
items jump the queue (``clear``) or wait behind the audio already queued (``close``).

Marks (https://www.twilio.com/docs/voice/media-streams/websocket-messages#send-a-mark-message): after each chunk
the gateway sends a mark named ``<item_id>:<cumulative_bytes>``;
Twilio echoes it when the audio before it has played, or at once after a ``clear`` flushed it. The
:class:`MarkBook` turns echoes into ``call.<id>.carrier.mark`` payloads (:class:`~shared.contracts.CarrierMark`:
``{name, item_id, played_bytes, cleared}``) where ``played_bytes`` is the bytes of that item confirmed played
(cumulative) and ``cleared`` is true for marks that were pending when a ``clear`` was sent.

Echoes are published at a bounded rate (:class:`MarkPublisher`): played echoes at most one per ``interval_s``
per call (the first at once, later ones held and the latest per item published when the interval has passed),
cleared echoes at once after any held played echo. ``played_bytes`` is cumulative, so the latest echo of an item
says everything the ones it replaced said: a subscriber learns the played position at most ``interval_s`` late,
and exactly whenever it matters for barge-in (the held echo goes out before the cleared ones of a ``clear``) and
at the end of the call (:meth:`MarkPublisher.flush` before ``call.<id>.ended``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from shared.contracts import CarrierMark

__all__ = ["MAX_CHUNK_BYTES", "AudioChunk", "Control", "MarkBook", "MarkPublisher", "OutboundQueue", "mark_name"]

MAX_CHUNK_BYTES = 16 * 1024
"""Most audio one carrier message carries (bytes, carrier format): a model delta can hold seconds of audio (e.g.
what a new session says after a reconnect), and a Twilio ``media`` message is limited to 64 KiB of JSON, base64
included; larger deltas are sent as several chunks, each with its mark."""

log = logging.getLogger(__name__)


def mark_name(item_id: str, cumulative_bytes: int) -> str:
    """The mark label after a chunk: ``<item_id>:<cumulative bytes of that item sent so far>``."""
    return f"{item_id}:{cumulative_bytes}"


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Carrier-format audio for one model delta and the mark that follows it."""

    audio: bytes
    item_id: str
    cumulative_bytes: int

    @property
    def mark(self) -> str:
        """The mark label sent after this chunk."""
        return mark_name(self.item_id, self.cumulative_bytes)


@dataclass(frozen=True, slots=True)
class Control:
    """A control item: ``clear`` (sent before any queued audio) or ``close`` (after it)."""

    kind: Literal["clear", "close"]
    reason: str = ""
    detail: dict[str, Any] | None = None


class OutboundQueue:
    """Bounded FIFO of :class:`AudioChunk` plus out-of-band :class:`Control` items (single consumer)."""

    def __init__(self, max_chunks: int = 1000) -> None:
        if max_chunks < 1:
            raise ValueError("max_chunks must be at least 1")
        self.max_chunks = max_chunks
        self._items: collections.deque[AudioChunk | Control] = collections.deque()
        self._audio = 0
        self._ready = asyncio.Event()
        self.dropped = 0
        """Audio chunks refused because the queue was full."""

    @property
    def audio_queued(self) -> int:
        """Audio chunks queued and not yet sent."""
        return self._audio

    def put_audio(self, chunk: AudioChunk) -> bool:
        """Queue a chunk; False (and counted in :attr:`dropped`) when ``max_chunks`` are already queued."""
        if self._audio >= self.max_chunks:
            self.dropped += 1
            return False
        self._items.append(chunk)
        self._audio += 1
        self._ready.set()
        return True

    def put_clear(self) -> list[AudioChunk]:
        """Drop every queued (unsent) chunk and put a ``clear`` at the head; returns the dropped chunks."""
        dropped = [item for item in self._items if isinstance(item, AudioChunk)]
        kept = [item for item in self._items if isinstance(item, Control)]
        self._items.clear()
        self._items.append(Control("clear"))
        self._items.extend(kept)
        self._audio = 0
        self._ready.set()
        return dropped

    def put_close(self, reason: str, detail: dict[str, Any] | None = None) -> None:
        """Queue a ``close`` behind the audio already queued."""
        self._items.append(Control("close", reason, detail))
        self._ready.set()

    async def get(self) -> AudioChunk | Control:
        """The next item, waiting while the queue is empty."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if isinstance(item, AudioChunk):
            self._audio -= 1
        return item


class MarkBook:
    """Marks sent to the carrier and not yet echoed, and the bytes confirmed played per item."""

    def __init__(self, max_items: int = 256) -> None:
        self._pending: dict[str, tuple[str, int, bool]] = {}
        self._pending_per_item: collections.Counter[str] = collections.Counter()
        self._played: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._complete: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._response_of: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._done: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._max_items = max_items

    def item_of(self, delta: Mapping[str, Any]) -> str:
        """The item a ``response.output_audio.delta`` event belongs to (``item_id``, else ``response_id``, else
        ``"item"``); remembers its response, so :meth:`response_done` completes it even when the delta is handled
        after ``response.done``."""
        response_id, item_id = delta.get("response_id"), delta.get("item_id")
        item = str(item_id or response_id or "item")
        if response_id and item not in self._response_of:
            self._response_of[item] = str(response_id)
            if len(self._response_of) > self._max_items:
                self._response_of.popitem(last=False)
        return item

    def response_done(self, response_id: str) -> None:
        """``response.done``: no more audio comes for the items of ``response_id``."""
        self._done[response_id] = None
        if len(self._done) > self._max_items:
            self._done.popitem(last=False)

    def sent(self, chunk: AudioChunk) -> str:
        """Record that ``chunk.mark`` is sent after its audio; returns that mark name."""
        name = chunk.mark
        if name not in self._pending:
            self._pending_per_item[chunk.item_id] += 1
        self._pending[name] = (chunk.item_id, chunk.cumulative_bytes, False)
        return name

    def complete(self, item_ids: Iterable[str]) -> None:
        """No more audio will be queued for ``item_ids`` (e.g. a played clip, queued whole)."""
        for item_id in item_ids:
            self._complete[item_id] = None
            self._complete.move_to_end(item_id)
        while len(self._complete) > self._max_items:
            self._complete.popitem(last=False)

    @property
    def pending(self) -> int:
        """Marks sent and not yet echoed (audio the carrier has not played yet)."""
        return len(self._pending)

    def settled(self, item_id: str | None) -> bool:
        """True when ``item_id`` is complete and no mark sent for it is still waiting for its echo: the carrier
        has played (or flushed) all of its audio."""
        if item_id is None or self._pending_per_item[item_id]:
            return False
        return item_id in self._complete or self._response_of.get(item_id) in self._done

    def clear(self) -> int:
        """A ``clear`` was sent: every pending mark will echo as cleared. Returns how many."""
        for name, (item_id, cumulative, _) in self._pending.items():
            self._pending[name] = (item_id, cumulative, True)
        return len(self._pending)

    def played(self, item_id: str) -> int:
        """Bytes of ``item_id`` confirmed played so far (0 when unknown)."""
        return self._played.get(item_id, 0)

    def echo(self, name: str) -> CarrierMark | None:
        """Apply an echo from the carrier; None for a name this call never sent (or already echoed)."""
        entry = self._pending.pop(name, None)
        if entry is None:
            return None
        item_id, cumulative, cleared = entry
        self._pending_per_item[item_id] -= 1
        if not self._pending_per_item[item_id]:
            del self._pending_per_item[item_id]
        if not cleared:
            self._played[item_id] = max(cumulative, self._played.get(item_id, 0))
            self._played.move_to_end(item_id)
            while len(self._played) > self._max_items:
                self._played.popitem(last=False)
        return CarrierMark(name=name, item_id=item_id, played_bytes=self.played(item_id), cleared=cleared)

    def unsent(self, chunks: list[AudioChunk]) -> list[CarrierMark]:
        """Cleared echoes for chunks dropped from the queue before they were sent (last one per item)."""
        last: dict[str, AudioChunk] = {}
        for chunk in chunks:
            last[chunk.item_id] = chunk
        return [CarrierMark(name=c.mark, item_id=c.item_id, played_bytes=self.played(c.item_id), cleared=True)
                for c in last.values()]


class MarkPublisher:
    """Publishes one call's mark echoes (:class:`~shared.contracts.CarrierMark`), played ones at a bounded rate.

    A carrier echoes a mark per chunk of model audio (Twilio: one per delta, 25-50 a second while the agent
    speaks); each became a logged, archived event. Here a played echo is published at once when none was
    published in the last ``interval_s`` and nothing is held; otherwise it replaces the held echo of its item,
    and the held echoes are published (in the order their items were first held) when ``interval_s`` has passed
    since the last publish. The echo that shows an item played to its end (:meth:`MarkBook.settled`: the item is
    complete and none of its marks is pending) goes out at once, so "the agent finished speaking" (barge-in,
    goodbye, disclosure) is never learnt late. A cleared echo, :meth:`flush` and :meth:`close` publish the held
    echoes first, so subscribers see the played position of an item before its cleared echo, as the carrier sent
    them.

    Args:
        book: the call's marks (:meth:`carrier_echo` applies echoes to it).
        publish: sends one echo (``call.<id>.carrier.mark``); awaited one at a time, in order.
        interval_s: least time between two publishes of played echoes (s); 0 publishes every echo.

    Raises:
        ValueError: ``interval_s`` is negative.
    """

    def __init__(self, book: MarkBook, publish: Callable[[CarrierMark], Awaitable[object]], *,
                 interval_s: float = 0.2) -> None:
        if interval_s < 0:
            raise ValueError("interval_s must be >= 0")
        self.book = book
        self._publish = publish
        self.interval_s = interval_s
        self._held: dict[str | None, CarrierMark] = {}
        self._last = -float("inf")
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.published = 0
        """Echoes published so far."""
        self.replaced = 0
        """Played echoes never published because a later echo of their item replaced them."""

    async def carrier_echo(self, name: str) -> bool:
        """Apply the carrier's echo of mark ``name`` to the book and publish or hold the resulting
        :class:`~shared.contracts.CarrierMark`; False (nothing published) for a name never sent or already echoed."""
        mark = self.book.echo(name)
        if mark is None:
            return False
        await self.echo(mark, now=self.book.settled(mark.item_id))
        return True

    async def echo(self, mark: CarrierMark, *, now: bool = False) -> None:
        """Take one echo: publish it at once (``now``: after the held ones) or hold it (see the class docstring)."""
        if mark.cleared or now:
            self._last = time.monotonic()
            await self._send([*self._take(), mark])
            return
        now_s = time.monotonic()
        if not self._held and now_s - self._last >= self.interval_s:
            self._last = now_s
            await self._send([mark])
            return
        if self._held.pop(mark.item_id, None) is not None:
            self.replaced += 1
        self._held[mark.item_id] = mark
        if self._timer is None:
            delay = max(0.0, self._last + self.interval_s - now_s)
            self._timer = asyncio.get_running_loop().call_later(delay, self._due)

    async def cleared(self, marks: list[CarrierMark]) -> None:
        """Publish ``marks`` (cleared echoes of chunks dropped before they were sent) after the held echoes."""
        await self._send([*self._take(), *marks])

    async def flush(self) -> None:
        """Publish the held echoes now (the call ends, or the carrier stream closes)."""
        await self._send(self._take())

    async def response_done(self, event: Any) -> None:
        """A ``response.done`` event (parsed JSON): no more audio comes for its items
        (:meth:`MarkBook.response_done`); a held echo may already show one played to its end (its echo came before
        the event): then the held echoes go out now. An event without ``response.id`` changes nothing."""
        response = event.get("response") if isinstance(event, Mapping) else None
        response_id = response.get("id") if isinstance(response, Mapping) else None
        if not isinstance(response_id, str):
            return
        self.book.response_done(response_id)
        if any(self.book.settled(item_id) for item_id in self._held):
            await self.flush()

    async def close(self) -> None:
        """Publish the held echoes and wait for any publish in flight; later echoes are still published."""
        await self.flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _take(self) -> list[CarrierMark]:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held = list(self._held.values())
        self._held.clear()
        return held

    def _due(self) -> None:
        self._timer = None
        held = self._take()
        if held:
            self._last = time.monotonic()
            task = asyncio.get_running_loop().create_task(self._send_logged(held))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send_logged(self, marks: list[CarrierMark]) -> None:
        try:
            await self._send(marks)
        except Exception:
            log.exception("could not publish %d held mark echo(es)", len(marks))

    async def _send(self, marks: list[CarrierMark]) -> None:
        async with self._lock:
            for mark in marks:
                await self._publish(mark)
                self.published += 1
