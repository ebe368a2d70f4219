"""JetStream asynchronous publish with the acks tracked off the publisher's path (used by ``Bus.publish_event``).

How JetStream acknowledges a publish (https://docs.nats.io/using-nats/developer/develop_jetstream/model_deep_dive,
"Publish acknowledgements"): the message is published on core NATS with a reply subject; the stream's leader
answers on that subject with ``{"stream": ..., "seq": ...}`` (``"duplicate": true`` when the ``Nats-Msg-Id``
was already in the duplicate window), with ``{"error": {"code", "err_code", "description"}}`` when it refused
the message, or the server answers with a ``503`` status and no body when no stream listens on the subject.

nats-py's ``JetStreamContext.publish_async`` does the same job with an ``asyncio.Future`` per message, a
semaphore acquired through ``asyncio.wait_for``, a random token read from ``os.urandom`` and a ``PubAck``
dataclass built per ack — about twice the CPU of one dict entry (``bench/bus.py``'s JetStream row compares
the two), and the session logs every Realtime event this way. :class:`AckTracker` keeps one dict entry per
unacknowledged message instead:

- the reply subject is ``<inbox prefix>.<counter>``, one wildcard subscription per connection (nats-py's public
  callback subscription) receives every ack, and an ack removes its entry;
- one sweeper task sleeps until the oldest entry's deadline (entries are kept in publish order and every
  deadline is ``ack_timeout`` after its publish, so the oldest is the first);
- an entry that timed out, was refused or could not be sent is retried with the SAME ``Nats-Msg-Id`` (the
  stream's duplicate window drops a copy that did land) by a synchronous ``js.publish``, up to
  ``max_attempts``; if every attempt fails it is surfaced — logged, counted in
  ``switchboard.bus.publish.failures``, kept in :attr:`AckTracker.failed` and passed to the failure
  callbacks — never dropped silently;
- at most ``max_pending`` messages wait for an ack: a publisher beyond that waits (the backpressure
  nats-py's ``publish_async_max_pending`` gives, 4000 by default).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import Header as JetStreamHeader

from shared import metrics
from shared.bus.envelope import Headers, destination_template
from shared.errors import PublishFailedError

__all__ = ["DEFAULT_MAX_PENDING", "AckTracker", "FailureCallback", "ack_failure"]

log = logging.getLogger("shared.bus")

DEFAULT_MAX_PENDING = 4000
"""Unacknowledged publishes allowed before a publisher waits (nats-py's ``publish_async_max_pending``)."""
FAILED_KEPT = 1000
"""Finally failed publishes kept in :attr:`AckTracker.failed` for inspection (the newest)."""
NO_RESPONDERS_STATUS = "503"

FailureCallback = Callable[[PublishFailedError, str | None], Awaitable[None]]


@dataclass(slots=True)
class PendingAck:
    """A JetStream publish sent and not yet acknowledged (or being retried)."""

    subject: str
    data: bytes
    headers: dict[str, str]
    call_id: str | None
    deadline: float
    """``time.monotonic()`` after which the first attempt counts as failed."""
    cause: str = "not sent"


def ack_failure(data: bytes, status: str | None = None) -> str | None:
    """Why a JetStream ack refuses the publish, or None when it acknowledges it.

    ``data`` is the ack's body, ``status`` the NATS status code of its header block (``"503"`` when no stream
    listens on the subject), if any. Never raises: an ack that is not JSON counts as a failure (the publish is
    retried, not assumed stored).
    """
    if status == NO_RESPONDERS_STATUS:
        return "no stream listens on the subject (503 no responders)"
    if status is not None and not data:
        return f"JetStream answered with status {status}"
    if b'"error"' not in data:
        return None if data.startswith(b"{") else f"unexpected ack {data[:200]!r}"
    try:
        resp = json.loads(data)
    except ValueError:
        return f"unexpected ack {data[:200]!r}"
    error = resp.get("error") if isinstance(resp, dict) else None
    if error is None:
        return None
    if isinstance(error, dict):
        return f"JetStream error {error.get('code')} ({error.get('err_code')}): {error.get('description')}"
    return f"JetStream error: {error!r}"


class AckTracker:
    """Publishes to JetStream and checks each ack in the background (see the module docstring).

    Create one per connection; :meth:`publish` is called from the event loop that owns ``nc``.
    """

    def __init__(self, nc: NATS, js: JetStreamContext, *, ack_timeout: float = 5.0, max_attempts: int = 5,
                 max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.nc = nc
        self.js = js
        self.ack_timeout = ack_timeout
        """Seconds to wait for each attempt's ack."""
        self.max_attempts = max_attempts
        """Attempts per message, the first included, before it is surfaced as failed."""
        self.max_pending = max_pending
        self.failed: list[PublishFailedError] = []
        """Publishes that failed after every attempt (the newest :data:`FAILED_KEPT`)."""
        self._callbacks: list[FailureCallback] = []
        self._pending: dict[str, PendingAck] = {}
        """Reply token → message, in publish order (so the first entry has the earliest deadline)."""
        self._tokens = itertools.count(1)
        self._prefix = ""
        self._sub: Subscription | None = None
        self._subscribing: asyncio.Lock | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._retries: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._progress = asyncio.Event()
        """Set whenever a message settles (:meth:`wait_settled` re-checks its barrier)."""
        self._issued = 0
        """The newest reply token handed out."""
        self._room = asyncio.Event()
        self._room.set()

    @property
    def pending(self) -> int:
        """Messages sent and not yet acknowledged, plus those being retried."""
        return len(self._pending) + len(self._retries)

    def on_failure(self, callback: FailureCallback) -> None:
        """Register ``async callback(error, call_id)``, run when a publish finally fails."""
        self._callbacks.append(callback)

    async def publish(self, subject: str, data: bytes, headers: dict[str, str], call_id: str | None) -> None:
        """Send ``data`` to JetStream on ``subject`` now (in order with this connection's other publishes).

        Returns once the message is handed to the connection; its ack is checked later. A message that cannot
        be sent (connection closed, reconnect buffer full) is retried like one whose ack failed. Waits while
        :attr:`max_pending` messages are unacknowledged. ``headers`` must carry ``Nats-Msg-Id``.
        """
        if self._sub is None:
            await self._subscribe()
        while len(self._pending) >= self.max_pending:
            self._room.clear()
            await self._room.wait()
        self._issued = next(self._tokens)
        token = str(self._issued)
        item = PendingAck(subject, data, headers, call_id, time.monotonic() + self.ack_timeout)
        self._pending[token] = item
        self._idle.clear()
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name="bus-ack-sweeper")
        try:
            await self.nc.publish(subject, data, reply=self._prefix + token, headers=headers)
        except Exception as exc:  # connection closed or buffer full: retried, not lost
            log.warning("jetstream publish to %s not sent at first attempt: %s", subject, exc)
            if self._pending.pop(token, None) is not None:
                item.cause = f"{type(exc).__name__}: {exc}"
                self._retry(item)

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every message is acknowledged or surfaced as failed; False if ``timeout`` s passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def wait_settled(self, timeout: float | None = None) -> bool:
        """Wait until every message handed over before this call is acknowledged or surfaced as failed; later
        ones are not waited for (a connection publishing for many calls is seldom idle). A retry in progress
        holds it too. False if ``timeout`` s passed first."""
        upto = self._issued

        async def settled() -> None:
            while self._retries or (self._pending and int(next(iter(self._pending))) <= upto):
                self._progress.clear()
                await self._progress.wait()

        try:
            await asyncio.wait_for(settled(), timeout)
        except TimeoutError:
            return False
        return True

    def stop(self) -> None:
        """Stop the sweeper (on close, after :meth:`wait_idle`); retries already running carry on."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    # --- internals -------------------------------------------------------------------------------------

    async def _subscribe(self) -> None:
        if self._subscribing is None:
            self._subscribing = asyncio.Lock()
        async with self._subscribing:
            if self._sub is not None:
                return
            prefix = self.nc.new_inbox() + "."
            self._prefix = prefix
            self._sub = await self.nc.subscribe(prefix + "*", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        status = msg.headers.get(JetStreamHeader.STATUS) if msg.headers else None
        self._settle(msg.subject[len(self._prefix):], msg.data, status)

    def _settle(self, token: str, data: bytes, status: str | None) -> None:
        item = self._pending.pop(token, None)
        if item is None:
            return  # an ack after its deadline: the retry (same Nats-Msg-Id) is already under way
        cause = ack_failure(data, status)
        if cause is not None:
            item.cause = cause
            self._retry(item)
        self._settled()

    def _settled(self) -> None:
        self._progress.set()
        if len(self._pending) < self.max_pending:
            self._room.set()
        if not self._pending and not self._retries:
            self._idle.set()

    async def _sweep(self) -> None:
        """Fail every entry whose deadline passed; sleep until the oldest one's deadline; end when empty."""
        try:
            while self._pending:
                token, item = next(iter(self._pending.items()))
                delay = item.deadline - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue
                del self._pending[token]
                item.cause = f"no ack within {self.ack_timeout:g} s"
                self._retry(item)
                self._settled()
        finally:
            if self._sweeper is asyncio.current_task():
                self._sweeper = None

    def _retry(self, item: PendingAck) -> None:
        task = asyncio.create_task(self._confirm(item), name="bus-ack-retry")
        self._retries.add(task)
        task.add_done_callback(self._retry_done)

    def _retry_done(self, task: asyncio.Task[None]) -> None:
        self._retries.discard(task)
        self._settled()

    async def _confirm(self, item: PendingAck) -> None:
        """Retry one unacknowledged publish with the same ``Nats-Msg-Id``; surface it if all attempts fail."""
        subject, msg_id = item.subject, item.headers[Headers.MSG_ID]
        template = {"messaging.destination.template": destination_template(subject)}
        cause = item.cause
        delay = 0.1
        for attempt in range(2, self.max_attempts + 1):
            metrics.PUBLISH_RETRIES.add(1, template)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            try:
                await self.js.publish(subject, item.data, timeout=self.ack_timeout, headers=dict(item.headers))
                log.info("jetstream publish to %s (msg id %s) succeeded at attempt %d", subject, msg_id, attempt)
                return
            except Exception as exc:
                cause = f"{type(exc).__name__}: {exc}"
        error = PublishFailedError(subject, msg_id, self.max_attempts, cause)
        metrics.PUBLISH_FAILURES.add(1, template)
        log.error("%s", error, extra={"call_id": item.call_id})
        self.failed.append(error)
        del self.failed[:-FAILED_KEPT]
        for callback in self._callbacks:
            try:
                await callback(error, item.call_id)
            except Exception:
                log.exception("publish-failure callback failed")
