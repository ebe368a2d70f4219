"""Caller audio → ``input_audio_buffer.append``, batched, and buffered until the model session is ready.

Batching trade-off: the carrier sends 20 ms frames (μ-law: 160 bytes). Each append is a WebSocket frame, a
base64 + JSON encode and one logged JetStream event, so forwarding every frame doubles the per-frame overhead
for nothing; holding frames until at least ``min_ms`` (default 40 ms) is buffered halves the appends and log
events and adds at most ``min_ms - 20`` ms (= 20 ms) of latency before the model's VAD hears the audio — far
below the model's own ``silence_duration_ms`` (≈500 ms). Larger batches would save little more and delay
turn detection and barge-in.

Audio that arrives before ``session.updated`` (the model connection is opened while the carrier is still
setting up) or while a dropped model connection is being re-established is kept in order, up to
``max_buffer_ms`` (default 60 s); beyond that the oldest audio is dropped and counted in :attr:`dropped_bytes`.
"""

from __future__ import annotations

import base64
from collections import deque

__all__ = ["AudioBatcher", "append_event"]


def append_event(audio: bytes) -> bytes:
    """The exact JSON bytes of an ``input_audio_buffer.append`` client event carrying ``audio`` (base64).

    Built by hand (no ``json.dumps``): base64 needs no JSON escaping, and this runs 25 times a second per call.
    """
    return b'{"type":"input_audio_buffer.append","audio":"' + base64.b64encode(audio) + b'"}'


class AudioBatcher:
    """Accumulates raw carrier audio and hands out chunks of at least ``min_ms`` once :attr:`ready`.

    Args:
        bytes_per_ms: bytes of audio per millisecond in the session's input format (μ-law: 8).
        min_ms: smallest chunk handed out while streaming (ms).
        max_buffer_ms: most audio held while not ready (ms); older audio is dropped beyond it.
    """

    def __init__(self, bytes_per_ms: int, *, min_ms: int = 40, max_buffer_ms: int = 60_000) -> None:
        if bytes_per_ms <= 0 or min_ms <= 0:
            raise ValueError("bytes_per_ms and min_ms must be positive")
        self.min_bytes = bytes_per_ms * min_ms
        self.max_bytes = bytes_per_ms * max_buffer_ms
        self._parts: deque[bytes] = deque()
        self._size = 0
        self.ready = False
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
