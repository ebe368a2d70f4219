"""Keep one call's model WebSocket open: connect, serve, and reconnect with backoff when it drops.

Policy (docs/session.md, "Guarantees when things go wrong"): a failed connect or a dropped socket is retried with
doubling delays (:func:`~services.session.model.backoff_delays`), reset after a connection that lived 30 s; after
``error_after`` failed connects in a row the caller of :func:`keep_connected` is told once (the session publishes
``call.<id>.session.error`` ``model_unavailable``) and retries go on. Every socket a connect opened is closed on
every path, cancellation included.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .model import ModelClosedError, ModelSocket, backoff_delays
from .options import ModelEndpoint
from .telemetry import SessionHooks

__all__ = ["keep_connected"]

log = logging.getLogger(__name__)

FRESH_AFTER_S = 30.0
"""A connection that lived this long (seconds) resets the backoff."""


async def keep_connected(call_id: str, endpoint: ModelEndpoint, hooks: SessionHooks, *, error_after: int,
                         closing: Callable[[], bool], connections: Callable[[], int],
                         serve: Callable[[ModelSocket], Awaitable[None]],
                         unavailable: Callable[[Exception], Awaitable[None]], lost: Callable[[], None]) -> None:
    """Connect to ``endpoint`` and ``serve`` each socket until ``closing()``.

    Args:
        serve: runs one connection; returns or raises :class:`~services.session.model.ModelClosedError` (its
            message is the reason logged) when the socket is done. Other exceptions propagate.
        unavailable: awaited once when ``error_after`` connects in a row failed.
        connections: how many connections the call has had (for the span of the next attempt).
        lost: called when a served connection dropped and a reconnect follows.
    """
    delays = backoff_delays()
    failures = 0
    while not closing():
        hooks.model_connecting(endpoint.url, connections(), endpoint.model)
        try:
            sock = await ModelSocket.connect(endpoint.url, api_key=endpoint.api_key)
        except Exception as exc:  # refused, DNS, TLS, handshake status, timeout
            hooks.model_disconnected(f"connect failed: {exc}")
            log.warning("call %s: model connect failed: %s", call_id, exc)
            failures += 1
            if failures == error_after:
                await unavailable(exc)
            await asyncio.sleep(next(delays))
            continue
        failures = 0
        connected_at = time.monotonic()
        reason = "closed"
        try:
            await serve(sock)
        except ModelClosedError as exc:
            reason = str(exc) or "closed"
        finally:
            await sock.close()  # also when cancelled before or while reading: never left open
        if closing():
            break
        hooks.model_disconnected(reason)
        lost()
        log.warning("call %s: model connection lost (%s); reconnecting", call_id, reason)
        if time.monotonic() - connected_at > FRESH_AFTER_S:
            delays = backoff_delays()
        await asyncio.sleep(next(delays))
