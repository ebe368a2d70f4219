"""Run the gateway app in-process on a free port (tests, benchmarks, the demo): :func:`running_gateway`;
:func:`serving_app` serves any ASGI app the same way (test fakes)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

import uvicorn
from starlette.types import ASGIApp

from services.gateway.app import Gateway, create_app
from services.gateway.twilio import START_TIMEOUT_S
from shared.bus import Bus
from shared.config import Settings

__all__ = ["WS_MAX_SIZE", "RunningGateway", "running_gateway", "serving_app"]

WS_MAX_SIZE = 1 << 20
"""Largest WebSocket message the gateway accepts (bytes); a larger one is closed with 1009 by uvicorn."""


@dataclass
class RunningGateway:
    """A gateway served by uvicorn: its state and base URLs (``http://127.0.0.1:<port>``, ``ws://…``)."""

    gateway: Gateway
    port: int

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:<port>``."""
        return f"ws://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def running_gateway(bus: Bus, settings: Settings, *, port: int = 0, max_outbound_chunks: int = 1000,
                          start_timeout_s: float = START_TIMEOUT_S) -> AsyncIterator[RunningGateway]:
    """Serve a :class:`Gateway` on 127.0.0.1 (``port`` 0 = a free port chosen by the OS) until exit; the
    WebSocket max size is :data:`WS_MAX_SIZE` as in the service (``shared.runtime.serve_http``).

    Raises:
        OSError: the port cannot be bound.
    """
    gateway = Gateway(bus, settings, max_outbound_chunks=max_outbound_chunks, start_timeout_s=start_timeout_s)
    async with serving_app(create_app(gateway), port=port, lifespan="on", ws_max_size=WS_MAX_SIZE) as bound:
        yield RunningGateway(gateway, bound)


@contextlib.asynccontextmanager
async def serving_app(app: ASGIApp, *, port: int = 0, lifespan: Literal["on", "off"] = "on",
                      ws_max_size: int = WS_MAX_SIZE) -> AsyncIterator[int]:
    """Serve an ASGI ``app`` with uvicorn on 127.0.0.1:``port`` (0 = a free port) until exit; yields the port.

    Raises:
        OSError: the port cannot be bound.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(app, log_level="warning", lifespan=lifespan, access_log=False,
                            ws_max_size=ws_max_size, ws_ping_interval=None)
    server = uvicorn.Server(config)
    setattr(server, "capture_signals", contextlib.nullcontext)  # noqa: B010 - the caller owns signals
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        sock.close()
