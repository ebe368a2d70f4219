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
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Any, Literal

from shared.contracts import CarrierMark

__all__ = ["AudioChunk", "Control", "MarkBook", "OutboundQueue", "mark_name"]


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
        self._played: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._max_items = max_items

    def sent(self, chunk: AudioChunk) -> str:
        """Record that ``chunk.mark`` is sent after its audio; returns that mark name."""
        name = chunk.mark
        self._pending[name] = (chunk.item_id, chunk.cumulative_bytes, False)
        return name

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
