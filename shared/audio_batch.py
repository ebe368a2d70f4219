"""Hold raw audio until at least N ms are buffered, then hand it on as one chunk.

Used where per-frame messages would cost more than they buy: the gateway publishes ``call.<id>.audio.in``
``SWITCHBOARD_GATEWAY_AUDIO_IN_MS`` at a time, and the session appends at least ``audio_batch_ms`` to the
model (it also keeps audio in order while its model connection is not ready; see
:mod:`services.session.audio`).
"""

from __future__ import annotations

from collections import deque

__all__ = ["AudioBatcher"]


class AudioBatcher:
    """Accumulates raw carrier audio and hands out chunks of at least ``min_ms`` once :attr:`ready`.

    Args:
        bytes_per_ms: bytes of audio per millisecond in the session's input format (μ-law: 8).
        min_ms: smallest chunk handed out while streaming (ms).
        max_buffer_ms: most audio held while not ready (ms); older audio is dropped beyond it.
        ready: start handing out chunks at once (else only after :attr:`ready` is set).
    """

    def __init__(self, bytes_per_ms: int, *, min_ms: int = 40, max_buffer_ms: int = 60_000,
                 ready: bool = False) -> None:
        if bytes_per_ms <= 0 or min_ms <= 0:
            raise ValueError("bytes_per_ms and min_ms must be positive")
        self.min_bytes = bytes_per_ms * min_ms
        self.max_bytes = bytes_per_ms * max_buffer_ms
        self._parts: deque[bytes] = deque()
        self._size = 0
        self.ready = ready
        self.dropped_bytes = 0

    @property
    def buffered(self) -> int:
        """Bytes held right now."""
        return self._size

    def push(self, audio: bytes) -> bytes | None:
        """Add a frame; returns a chunk to send now (≥ ``min_ms``, when ready) or None."""
        self._parts.append(audio)
        self._size += len(audio)
        if not self.ready:
            while self._size > self.max_bytes and len(self._parts) > 1:
                old = self._parts.popleft()
                self._size -= len(old)
                self.dropped_bytes += len(old)
            return None
        if self._size < self.min_bytes:
            return None
        return self.take()

    def requeue(self, chunk: bytes) -> None:
        """Put back a chunk that could not be sent (the model connection dropped), ahead of newer audio."""
        self._parts.appendleft(chunk)
        self._size += len(chunk)

    def take(self) -> bytes:
        """Everything buffered, as one chunk (empty when nothing is held)."""
        chunk = b"".join(self._parts) if len(self._parts) != 1 else self._parts[0]
        self._parts.clear()
        self._size = 0
        return chunk

    def drain(self, max_chunk_bytes: int = 8 * 1024 * 1024) -> list[bytes]:
        """Everything buffered while not ready, split into chunks of at most ``max_chunk_bytes``."""
        data = self.take()
        return [data[i:i + max_chunk_bytes] for i in range(0, len(data), max_chunk_bytes)]
