"""The Realtime WebSocket client: connect (with auth), send JSON text frames, receive raw frames.

Endpoint (README.md, "Using OpenAI and PostgreSQL instead"): ``settings.effective_realtime_url`` — OpenAI
``wss://api.openai.com/v1/realtime?model=<model>`` with ``Authorization: Bearer <OPENAI_API_KEY>`` when a key is
set, else the local model; ``SWITCHBOARD_REALTIME_URL`` overrides either. No ``OpenAI-Beta`` header (GA;
https://platform.openai.com/docs/guides/realtime-websocket). All frames are JSON text frames; received frames are
returned as the exact bytes received (``decode_text=False``: no UTF-8 decode and re-encode) so the log can store
them unchanged.

The client is aiohttp's (``ClientSession.ws_connect``; https://docs.aiohttp.org/en/stable/client_reference.html
#clientwebsocketresponse), not ``websockets``: aiohttp's ``send_frame`` costs a fraction of ``websockets``'
``send`` (its send lock and context manager, and a pure-Python frame serializer), paid 25 times a second per
call. Frames are read by aiohttp's C reader.
The RFC 6455 §5.3 masking key of client frames comes from aiohttp's ``random.Random``; the mask exists to stop
cache poisoning of plaintext intermediaries (§10.3), which TLS (``wss://`` to OpenAI) rules out anyway.

Reconnecting is the caller's job (:mod:`services.session.call`), with :func:`backoff_delays`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import Iterator

import aiohttp
from aiohttp import WSMsgType

__all__ = ["ModelClosedError", "ModelSocket", "backoff_delays"]

MAX_FRAME_BYTES = 16 * 1024 * 1024
"""Largest server frame accepted (bytes); a ``session.updated`` with long instructions stays far below."""
HEARTBEAT_S = 20.0
"""WebSocket ping interval (s); no pong within half of it closes the connection (a dead peer is noticed)."""
CLOSE_TIMEOUT_S = 0.5
"""How long :meth:`ModelSocket.close` waits for the peer's close frame (s); the whole close (the reader task
letting go, our close frame, the peer's) is bounded by twice this, after which the TCP connection is dropped."""


class ModelClosedError(ConnectionError):
    """The model WebSocket is closed (dropped by the peer or the network, or closed by us)."""


def backoff_delays(initial: float = 0.2, maximum: float = 5.0) -> Iterator[float]:
    """Reconnect delays in seconds: ``initial`` doubling up to ``maximum``, forever."""
    for attempt in itertools.count():
        yield min(maximum, initial * (2 ** min(attempt, 16)))


class ModelSocket:
    """One open Realtime WebSocket connection (with its own aiohttp session: calls share no connection state)."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse[bool],
                 url: str) -> None:
        self._session = session
        self._ws = ws
        self.url = url

    @classmethod
    async def connect(cls, url: str, *, api_key: str | None, open_timeout: float = 10.0) -> ModelSocket:
        """Open the WebSocket at ``url`` (``ws://`` or ``wss://``); sends ``Authorization: Bearer <api_key>``
        when a key is given. Proxies are taken from the environment (``HTTPS_PROXY``, ``NO_PROXY``).

        Raises:
            OSError (incl. aiohttp.ClientConnectorError) / aiohttp.WSServerHandshakeError / aiohttp.ClientError
                / TimeoutError: the server could not be reached within ``open_timeout`` s or refused the upgrade.
        """
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        session = aiohttp.ClientSession(trust_env=True)
        try:
            async with asyncio.timeout(open_timeout):
                ws = await session.ws_connect(
                    url, headers=headers, compress=0, max_msg_size=MAX_FRAME_BYTES, heartbeat=HEARTBEAT_S,
                    autoping=True, timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT_S),
                    decode_text=False)
        except BaseException:
            await session.close()
            raise
        return cls(session, ws, url)

    async def send(self, frame: bytes) -> None:
        """Send one client event (UTF-8 JSON bytes) as a text frame.

        Raises:
            ModelClosedError: the connection is closed or closing.
        """
        if self._ws.closed:
            raise ModelClosedError("model connection closed")
        try:
            await self._ws.send_frame(frame, WSMsgType.TEXT)
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise ModelClosedError(str(exc) or type(exc).__name__) from None

    async def recv(self) -> bytes:
        """The next data frame's bytes, exactly as received (pings are answered by aiohttp).

        Raises:
            ModelClosedError: the connection closed (close frame, dropped socket, heartbeat timeout, protocol
                error); the message says which, with the close code.
        """
        msg = await self._ws.receive()
        if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
            data = msg.data
            return data if isinstance(data, bytes) else str(data).encode()
        if msg.type is WSMsgType.ERROR:
            raise ModelClosedError(f"connection error: {msg.data}")
        code = self._ws.close_code
        reason = f" {msg.extra}" if msg.type is WSMsgType.CLOSE and msg.extra else ""
        raise ModelClosedError(f"closed (code {code}){reason}")

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code (RFC 6455 §7.4) once the connection closed; None while open or unknown."""
        return self._ws.close_code

    async def close(self) -> None:
        """Close the connection and its session (idempotent). The close handshake gets at most
        2 × :data:`CLOSE_TIMEOUT_S` s (RFC 6455 §7.1.1 lets the client drop the TCP connection when the server
        does not answer); then the connection is dropped, so the socket is gone within 1 s in every case."""
        try:
            async with asyncio.timeout(2 * CLOSE_TIMEOUT_S):
                await self._ws.close()
        except TimeoutError:
            self.abort()
        finally:
            await self._session.close()

    def abort(self) -> None:
        """Drop the connection at once, without a close handshake (as a network failure would): the peer and
        :meth:`recv` see the TCP connection end."""
        sock = self._ws.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
