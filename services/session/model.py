"""The Realtime WebSocket client: connect (with auth), send JSON text frames, receive raw frames.

Endpoint (design.md, "Realtime model endpoint"): ``settings.effective_realtime_url`` — OpenAI
``wss://api.openai.com/v1/realtime?model=<model>`` with ``Authorization: Bearer <OPENAI_API_KEY>`` when a key is
set, else the local model; ``SWITCHBOARD_REALTIME_URL`` overrides either. No ``OpenAI-Beta`` header (GA;
protocols.md §1.1). All frames are JSON text frames; received frames are returned as the exact bytes received
so the log can store them unchanged.

Reconnecting is the caller's job (:mod:`services.session.call`), with :func:`backoff_delays`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import websockets
from websockets.asyncio.client import ClientConnection

__all__ = ["ModelClosedError", "ModelSocket", "backoff_delays"]


class ModelClosedError(ConnectionError):
    """The model WebSocket is closed (dropped by the peer or the network, or closed by us)."""


def backoff_delays(initial: float = 0.2, maximum: float = 5.0) -> Iterator[float]:
    """Reconnect delays in seconds: ``initial`` doubling up to ``maximum``, forever."""
    for attempt in itertools.count():
        yield min(maximum, initial * (2 ** min(attempt, 16)))


class ModelSocket:
    """One open Realtime WebSocket connection."""

    def __init__(self, ws: ClientConnection, url: str) -> None:
        self.ws = ws
        self.url = url

    @classmethod
    async def connect(cls, url: str, *, api_key: str | None, open_timeout: float = 10.0) -> ModelSocket:
        """Open the WebSocket at ``url``; sends ``Authorization: Bearer <api_key>`` when a key is given.

        Raises:
            OSError / websockets.exceptions.InvalidHandshake / TimeoutError: the server could not be reached
                or refused the upgrade.
        """
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        ws = await websockets.connect(url, additional_headers=headers, open_timeout=open_timeout,
                                      max_size=16 * 1024 * 1024, compression=None, ping_interval=20,
                                      ping_timeout=20, close_timeout=2)
        return cls(ws, url)

    async def send(self, frame: bytes) -> None:
        """Send one client event (JSON bytes) as a text frame.

        Raises:
            ModelClosedError: the connection is closed.
        """
        try:
            await self.ws.send(frame, text=True)
        except websockets.ConnectionClosed as exc:
            raise ModelClosedError(str(exc)) from None

    async def recv(self) -> bytes:
        """The next frame's bytes, exactly as received.

        Raises:
            ModelClosedError: the connection is closed.
        """
        try:
            data = await self.ws.recv(decode=False)
        except websockets.ConnectionClosed as exc:
            raise ModelClosedError(str(exc)) from None
        return data if isinstance(data, bytes) else data.encode()

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        await self.ws.close()
