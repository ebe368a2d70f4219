"""The recorder's single-writer lease: one recorder writes the archive at a time (issue 22 item 6).

The archive's hash chains and consumer positions need a single writer, and a rolling update (or a node partition
resolved by force-deleting a pod) can briefly run two recorders. The lease is a key in the NATS KV bucket
:data:`BUCKET` whose stream ``max_age`` is the lease's TTL; the key is the recorder's durable-consumer prefix
(``SWITCHBOARD_RECORDER_CONSUMER``, default ``recorder``: the recorders that would share consumers share the
lease) and the value ``{"holder", "since"}``:

- **acquire**: ``create`` (succeeds only when the key does not exist — never written, expired, or deleted), retried
  every ``ttl_s / 4`` s until it succeeds; a second recorder therefore waits, binding no consumer, while the
  first one holds the lease. A holder that was a process on this host which no longer exists (a recorder killed
  and restarted by ``switchboard up``) is replaced at once by compare-and-set on its revision.
- **renew**: every ``ttl_s / 4`` s, ``update`` with the revision last written (compare-and-set,
  https://docs.nats.io/nats-concepts/jetstream/key-value-store): a revision that moved means another holder
  took the key after ours expired — the lease is lost.
- :meth:`WriterLease.valid` is true only while the last successful renewal is younger than ``ttl_s`` minus one
  renewal interval, so a holder whose renewals stall (a paused process, a NATS outage) stops writing before the key
  can expire and another recorder can take it. The consumers check it before every batch they persist.
- **release** (SIGTERM, after the last batch is committed and acked): ``delete`` with the held revision, so the
  next recorder takes over at once instead of after the TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType

from shared import subjects

__all__ = ["BUCKET", "TTL_S", "WriterLease"]

log = logging.getLogger(__name__)

BUCKET = subjects.RECORDER_LEASE_BUCKET
"""KV bucket of the recorder's single-writer lease."""
TTL_S = 10.0
"""Seconds a lease lives without renewal (the bucket's ``max_age``)."""


class WriterLease:
    """A single-writer lease in NATS KV (module docstring) under ``key`` (``[A-Za-z0-9_-]+``). ``holder`` names
    this process in the value (default ``<hostname>:<pid>``); ``ttl_s`` > 0 is the lease's lifetime without
    renewal (s).

    Raises:
        ValueError: a bad ``key`` or ``ttl_s``.
    """

    def __init__(self, js: JetStreamContext, key: str = "recorder", *, holder: str | None = None,
                 ttl_s: float = TTL_S, replicas: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", key):
            raise ValueError(f"invalid lease key {key!r}")
        self.js = js
        self.key = key
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.ttl_s = ttl_s
        self.interval_s = ttl_s / 4
        self.replicas = replicas
        self.lost = asyncio.Event()
        """Set when a held lease could not be renewed in time or another holder took it."""
        self._clock = clock
        self._kv: Any = None
        self._revision: int | None = None
        self._renewed_at: float | None = None

    @property
    def held(self) -> bool:
        """True between a successful :meth:`acquire` and :meth:`release` (or the loss of the lease)."""
        return self._revision is not None and not self.lost.is_set()

    def valid(self) -> bool:
        """True while writing is safe: held, and renewed recently enough that it cannot have expired."""
        return (self.held and self._renewed_at is not None
                and self._clock() - self._renewed_at < self.ttl_s - self.interval_s)

    async def _bucket(self) -> Any:
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(BUCKET)
            except nats.js.errors.BucketNotFoundError:
                self._kv = await self.js.create_key_value(KeyValueConfig(
                    bucket=BUCKET, history=1, ttl=self.ttl_s, storage=StorageType.FILE, replicas=self.replicas,
                    description="Switchboard recorder single-writer lease"))
        return self._kv

    def _value(self) -> bytes:
        return json.dumps({"holder": self.holder, "since": datetime.now(UTC).isoformat()}).encode()

    async def current_holder(self) -> str | None:
        """Who holds the lease now (None: nobody)."""
        kv = await self._bucket()
        try:
            entry = await kv.get(self.key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if not entry.value:
            return None
        holder: str | None = json.loads(entry.value).get("holder")
        return holder

    async def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; True when this process holds it now."""
        kv = await self._bucket()
        before = self._clock()
        try:
            self._revision = int(await kv.create(self.key, self._value()))
        except nats.js.errors.KeyWrongLastSequenceError:
            if not await self._take_from_dead_local_holder(kv):
                return False
        self._renewed_at = before
        self.lost.clear()
        log.info("recorder lease acquired by %s", self.holder)
        return True

    async def _take_from_dead_local_holder(self, kv: Any) -> bool:
        """The holder is a process on this host that no longer exists (killed and restarted under a supervisor,
        e.g. ``switchboard up``): take the lease by compare-and-set instead of waiting for the TTL."""
        try:
            entry = await kv.get(self.key)
            holder = str(json.loads(entry.value or b"{}").get("holder") or "")
        except Exception:
            return False
        host, _, pid = holder.rpartition(":")
        if host != socket.gethostname() or not pid.isdigit() or _alive(int(pid)):
            return False
        try:
            self._revision = int(await kv.update(self.key, self._value(), last=entry.revision))
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        log.info("recorder lease of exited process %s taken over", holder)
        return True

    async def acquire(self, stopping: asyncio.Event) -> bool:
        """Wait until this process holds the lease (True) or ``stopping`` is set (False)."""
        waited = False
        while not stopping.is_set():
            try:
                if await self.try_acquire():
                    return True
            except Exception as exc:  # NATS unreachable for a moment: keep trying
                log.warning("recorder lease: %s", exc)
            if not waited:
                log.info("another recorder (%s) holds the writer lease; waiting", await self._holder_or_unknown())
                waited = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.interval_s)
        return False

    async def _holder_or_unknown(self) -> str:
        try:
            return await self.current_holder() or "unknown"
        except Exception:
            return "unknown"

    async def renew(self) -> bool:
        """One compare-and-set renewal; False (and :attr:`lost` set) when another holder has the key.

        Raises:
            Exception: a transient NATS error (the lease is still ours until :meth:`valid` says otherwise).
        """
        if self._revision is None:
            return False
        kv = await self._bucket()
        before = self._clock()
        try:
            self._revision = int(await kv.update(self.key, self._value(), last=self._revision))
        except nats.js.errors.KeyWrongLastSequenceError:
            self._lose("another recorder took the writer lease")
            return False
        self._renewed_at = before
        return True

    def _lose(self, why: str) -> None:
        if not self.lost.is_set():
            log.error("recorder lease lost: %s; this recorder stops writing", why)
        self.lost.set()

    async def keep(self) -> None:
        """Renew every ``ttl_s / 4`` s while held: until :meth:`release` (so the last batch of a stopping
        recorder is still written under the lease) or the loss of the lease (:attr:`lost`)."""
        while self.held:
            await asyncio.sleep(self.interval_s)
            if not self.held:
                return
            try:
                await self.renew()
            except Exception as exc:
                log.warning("recorder lease renewal failed: %s", exc)
            if not self.lost.is_set() and not self.valid():
                self._lose(f"not renewed for {self.ttl_s - self.interval_s:g} s")

    async def release(self) -> None:
        """Give the lease up (delete with the held revision) so the next recorder starts at once."""
        revision, self._revision = self._revision, None
        if revision is None or self.lost.is_set():
            return
        try:
            kv = await self._bucket()
            await kv.delete(self.key, last=revision)
            log.info("recorder lease released by %s", self.holder)
        except Exception as exc:  # it expires after ttl_s anyway
            log.warning("recorder lease release failed (it expires in %g s): %s", self.ttl_s, exc)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
