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

from shared.audio_batch import AudioBatcher

__all__ = ["AudioBatcher", "append_event"]


def append_event(audio: bytes) -> bytes:
    """The exact JSON bytes of an ``input_audio_buffer.append`` client event carrying ``audio`` (base64).

    Built by hand (no ``json.dumps``): base64 needs no JSON escaping, and this runs 25 times a second per call.
    """
    return b'{"type":"input_audio_buffer.append","audio":"' + base64.b64encode(audio) + b'"}'
