"""Playback tracking from carrier mark echoes, for barge-in truncation and "goodbye played" checks.

The gateway sends a carrier mark after each chunk of model audio it plays and publishes each echo on
``call.<id>.carrier.mark`` as ``{name, item_id, played_bytes, cleared}`` where ``played_bytes`` is cumulative
for that item and ``cleared`` is true when the echo came from a ``clear`` (the audio was flushed, not played;
https://www.twilio.com/docs/voice/media-streams/websocket-messages: Twilio echoes pending marks at once after a clear).

So the audio confirmed played for an item is the largest ``played_bytes`` of its non-cleared echoes — not a
wall-clock estimate. Barge-in truncates the current assistant item at that point
(``conversation.item.truncate.audio_end_ms`` = confirmed bytes / bytes-per-ms, capped at the audio received
for the item so far; https://platform.openai.com/docs/guides/realtime-conversations and https://www.twilio.com/docs/voice/media-streams/websocket-messages).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from shared.contracts import CommandClear

__all__ = ["BargeIn", "ItemPlayback", "PlaybackTracker", "b64_decoded_len"]


def b64_decoded_len(b64: str) -> int:
    """Bytes a base64 string decodes to, without decoding it (padding-aware)."""
    n = len(b64)
    if n == 0:
        return 0
    pad = 2 if b64.endswith("==") else 1 if b64.endswith("=") else 0
    return n // 4 * 3 - pad


@dataclass
class ItemPlayback:
    """Audio of one assistant item: bytes received from the model and bytes confirmed played."""

    item_id: str
    response_id: str | None
    received: int = 0
    played: int = 0
    cleared: bool = False
    """A cleared echo arrived: nothing after ``played`` will ever play."""


class PlaybackTracker:
    """Per-call playback state, updated from output audio deltas and mark echoes.

    Args:
        bytes_per_ms: bytes per ms of the session's output format (μ-law: 8; PCM16 24 kHz: 48).
    """

    def __init__(self, bytes_per_ms: int) -> None:
        self.bytes_per_ms = bytes_per_ms
        self.items: dict[str, ItemPlayback] = {}
        self.current: ItemPlayback | None = None
        """The assistant item whose audio arrived last."""
        self._changed = asyncio.Condition()

    def on_audio_delta(self, item_id: str, response_id: str | None, b64_audio: str) -> None:
        """Count a ``response.output_audio.delta`` (its base64 ``delta``) for ``item_id``."""
        item = self.items.get(item_id)
        if item is None:
            item = self.items[item_id] = ItemPlayback(item_id, response_id)
        item.received += b64_decoded_len(b64_audio)
        self.current = item

    def expect(self, item_id: str, total_bytes: int) -> None:
        """Track audio the session plays itself (``command.play``, e.g. the disclosure): ``total_bytes`` are
        queued at the carrier for ``item_id``. It never becomes :attr:`current`, so barge-in never clears it."""
        self.items[item_id] = ItemPlayback(item_id, None, received=total_bytes)

    async def on_mark(self, item_id: str, played_bytes: int, cleared: bool) -> None:
        """Apply a mark echo; wakes tasks waiting in :meth:`wait_played` / :meth:`wait_settled`."""
        item = self.items.get(item_id)
        if item is None:
            return  # an echo for audio we did not log (another session's item): nothing to track
        if cleared:
            item.cleared = True
        elif played_bytes > item.played:
            item.played = played_bytes
        async with self._changed:
            self._changed.notify_all()

    def played_ms(self, item_id: str) -> int:
        """Audio of ``item_id`` confirmed played (ms), capped at the audio received for it."""
        item = self.items.get(item_id)
        if item is None:
            return 0
        return min(item.played, item.received) // self.bytes_per_ms

    def unplayed_ms(self, item_ids: list[str]) -> int:
        """Audio received but not yet confirmed played (nor cleared) across ``item_ids`` (ms)."""
        total = 0
        for item_id in item_ids:
            item = self.items.get(item_id)
            if item is not None and not item.cleared:
                total += max(0, item.received - item.played)
        return total // self.bytes_per_ms

    def response_items(self, response_id: str) -> list[str]:
        """Ids of the items that carried audio in ``response_id``."""
        return [i.item_id for i in self.items.values() if i.response_id == response_id]

    async def wait_settled(self, item_id: str, timeout: float) -> bool:
        """Wait until ``item_id`` is fully played or a cleared echo arrived for it; False on timeout.

        After a ``clear`` the gateway echoes every pending mark (cleared) after any echo of audio that did
        play, so once a cleared echo is seen the confirmed-played figure is final.
        """
        return await self._wait(lambda: self._settled(item_id), timeout)

    async def wait_played(self, item_ids: list[str], timeout: float) -> bool:
        """Wait until every item in ``item_ids`` is played or cleared; False on timeout."""
        return await self._wait(lambda: all(self._settled(i) for i in item_ids), timeout)

    def _settled(self, item_id: str) -> bool:
        item = self.items.get(item_id)
        return item is None or item.cleared or item.played >= item.received

    async def _wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(predicate)
            return True
        except TimeoutError:
            return False


class BargeIn:
    """Caller speech while agent audio is still pending at the carrier: ``command.clear`` at once (the gateway
    flushes the carrier's buffer), then ``conversation.item.truncate`` at the audio confirmed played.

    Args:
        playback: the call's tracker.
        clear: publishes the ``clear`` command (:class:`~shared.contracts.CommandClear`).
        deliver: sends a client event once the model session is ready.
        spawn: runs a coroutine as one of the call's tasks.
        settle_s: how long (seconds) a truncation waits for the mark echoes that follow a ``clear``.
        on_barge_in: told after each clear (metrics, summary counts).
    """

    def __init__(self, playback: PlaybackTracker, *, clear: Callable[[CommandClear], Awaitable[None]],
                 deliver: Callable[[dict[str, Any]], Awaitable[None]],
                 spawn: Callable[[Awaitable[None]], asyncio.Task[Any]], settle_s: float,
                 on_barge_in: Callable[[], None]) -> None:
        self.playback = playback
        self._clear = clear
        self._deliver = deliver
        self._spawn = spawn
        self.settle_s = settle_s
        self._on_barge_in = on_barge_in

    async def speech_started(self) -> None:
        """``input_audio_buffer.speech_started``: clear and truncate when agent audio is still unplayed."""
        item = self.playback.current
        if item is None or item.cleared or item.played >= item.received:
            return
        await self._clear(CommandClear(reason="barge_in", item_id=item.item_id, response_id=item.response_id))
        self._on_barge_in()
        self._spawn(self._truncate(item.item_id))

    async def _truncate(self, item_id: str) -> None:
        # the gateway echoes marks of played audio before the cleared ones: wait for them to settle
        await self.playback.wait_settled(item_id, timeout=self.settle_s)
        await self._deliver({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                             "audio_end_ms": self.playback.played_ms(item_id)})
