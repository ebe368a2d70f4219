"""What a carrier stream gives a call's bridge: the socket (:class:`CarrierSink`) and the start (:class:`CallStart`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["CallStart", "CarrierSink"]


class CarrierSink(Protocol):
    """The carrier socket, as the bridge sees it (one writer task calls these, never concurrently)."""

    async def send_audio(self, audio: bytes) -> None:
        """Send carrier-format audio."""

    async def send_mark(self, name: str) -> None:
        """Send a playback mark after the audio sent so far."""

    async def send_clear(self) -> None:
        """Flush the carrier's playback buffer."""

    async def close(self, code: int, reason: str) -> None:
        """Close the socket (``code`` per RFC 6455 §7.4)."""


@dataclass(frozen=True, slots=True)
class CallStart:
    """What the carrier told us when the stream started (becomes the ``call.<id>.started`` payload)."""

    carrier: str
    audio_format: str
    agent: str
    from_: str | None = None
    to: str | None = None
    carrier_call_id: str | None = None
    stream_id: str | None = None
    custom_parameters: dict[str, str] = field(default_factory=dict)
    agent_version: str | None = None
    """None: chosen at :meth:`CallBridge.open` by :func:`shared.rollout.choose` (sticky per caller)."""
