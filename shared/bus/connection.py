"""Opening the NATS connection a :class:`shared.bus.Bus` wraps: retries with backoff, reconnects forever.

nats-py's ``connect`` retries a refused initial connection forever (and logs each failure); this bounds the
first connection by a deadline, refuses to retry bad credentials, and keeps nats-py's reconnect loop for
drops afterwards (https://docs.nats.io/using-nats/developer/connecting/reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS

from shared.bus.wire import SwitchboardClient
from shared.errors import BusError

__all__ = ["open_connection"]

log = logging.getLogger("shared.bus")


async def open_connection(url: str, *, name: str, identity: str, connect_timeout: float = 30.0,
                          options: Mapping[str, Any] | None = None) -> NATS:
    """A connected client for ``url`` (comma-separated for a cluster), named ``name`` on the server.

    Waits up to ``connect_timeout`` seconds for the server to accept (backoff 50 ms doubling to 1 s), then
    keeps reconnecting forever if the connection later drops. ``options`` are extra ``nats.connect``
    arguments (credentials, TLS, inbox prefix); by default those of the environment's settings
    (``SWITCHBOARD_NATS_CREDS`` / ``SWITCHBOARD_NATS_NKEY_SEED`` / ``SWITCHBOARD_NATS_TLS_*``, see
    :mod:`shared.natsauth`) for ``identity``. An authorization error (bad or missing credentials) is not
    retried.

    Raises:
        BusError: no server accepted within ``connect_timeout``, or the server refused the credentials.
    """
    if options is None:
        from shared.config import load_settings

        options = load_settings().nats_options(identity=identity)
    deadline = time.monotonic() + connect_timeout
    delay = 0.05
    last_error: Exception | None = None
    conn: list[NATS] = []

    async def on_disconnect() -> None:  # a drain/close we asked for is not worth a warning
        if conn and (conn[0].is_draining or conn[0].is_closed):
            log.debug("nats connection closed")
        else:
            log.warning("nats disconnected")

    refused: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        if "authorization violation" in str(exc).lower() and not conn:
            refused.append(exc)  # during the first connect: nats-py would retry it forever
        await _log_error(exc)

    while time.monotonic() < deadline:
        nc = SwitchboardClient()
        attempt = asyncio.ensure_future(nc.connect(
            servers=url.split(","),
            name=name,
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]  # seconds; nats-py sleeps on it (annotated int)
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=_log_reconnect,
            **options,
        ))
        try:
            while not attempt.done() and not refused and time.monotonic() < deadline:
                await asyncio.wait({attempt}, timeout=0.05)
            if not attempt.done():
                attempt.cancel()
                with contextlib.suppress(BaseException):
                    await attempt
                with contextlib.suppress(Exception):
                    await nc.close()
                if refused:
                    raise BusError(f"NATS at {url} refused the credentials: {refused[0]}")
                last_error = TimeoutError("connect timed out")
                continue
            attempt.result()
            conn.append(nc)
            return nc
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            if "authorization" in str(exc).lower():
                raise BusError(f"NATS at {url} refused the credentials: {exc}") from exc
            last_error = exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
    raise BusError(f"could not connect to NATS at {url} within {connect_timeout:.0f}s: {last_error}")


async def _log_error(exc: Exception) -> None:
    log.warning("nats error: %s", exc)


async def _log_reconnect() -> None:
    log.info("nats reconnected")
