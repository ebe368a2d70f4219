"""Live-call ownership with fencing (issue 22 item 1): which session instance serves each call.

A NATS KV bucket (:data:`shared.subjects.CALL_OWNERS_BUCKET`, https://docs.nats.io/nats-concepts/jetstream/
key-value-store): key = call id, value ``{"owner", "epoch", "since", "mark"}`` (:class:`Owner`). An ownership lives
:data:`TTL_S` (2 s) unless renewed; the owner renews each of its calls every :data:`HEARTBEAT_S` from one task per
instance (never per audio frame). The TTL is judged by the readers, each on its own clock, from the renewals they
see (so no clocks are compared); the bucket itself keeps an entry :data:`KEEP_S` after its last write, so an
instance that starts after an owner died — a restarted pod — still finds the lapsed entry and takes the call over.

- **claim** (a new call): ``create`` — only when the key does not exist — with epoch 1.
- **take over** (handover or lapse): ``update`` with the revision last seen (compare-and-set), or ``create`` when
  the entry already expired, with epoch = previous + 1. Of two instances trying at once exactly one succeeds.
- **renew**: ``update`` with the revision this instance wrote last; a moved revision means another instance took
  the call — this instance is *fenced* for that call (:meth:`Ownership.on_lost` callbacks).
- **release** (the call ended): ``delete`` with the held revision.
- **leave** (stopping with the call live, no peer took it over): ``update`` to ``"released": true``, same epoch;
  a watcher takes a released entry over at once instead of after :data:`TTL_S` (a restarted instance, seconds
  sooner).

Each write also carries where the owner's log of the call stood (:class:`LogMark`, when known): its last
``Switchboard-Seq`` and the caller audio it had appended to the model. Whatever it logged afterwards has a higher
seq and was stored after the mark was read, so an instance taking the call over after a crash reads only the
log's tail for the seq to continue from and the audio appended since (``services/session/prepare.py``).

Peers learn of lapses by watching the bucket (one ordered consumer per instance): a key not updated for
:data:`TTL_S` is reported to :meth:`Ownership.on_lapsed` callbacks, each call's in its own task (so a peer can take
the calls of a crashed owner over at once, not one after the other). The owner's epoch travels as the
``Switchboard-Epoch`` header on everything it publishes for the call (:meth:`shared.bus.Bus.set_epoch`); receivers
ignore commands and audio of a lower epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType

from shared import subjects

__all__ = ["HEARTBEAT_S", "KEEP_S", "TAIL_MARGIN_S", "TTL_S", "LogMark", "Owner", "Ownership", "Takeover",
           "owners_bucket", "tail_start"]

log = logging.getLogger(__name__)

Takeover = Literal["handover", "lapse"]
"""How an instance came to own a call it did not start: the owner handed it over (SIGTERM), or its ownership
lapsed (the owner crashed)."""
TTL_S = 2.0
"""Seconds an ownership lives without renewal (judged by the watchers)."""
KEEP_S = 300.0
"""The bucket's ``max_age``: an entry not written for this long is removed (abandoned calls)."""
HEARTBEAT_S = 0.5
"""Seconds between an owner's renewals of each of its calls."""
LAPSE_CHECK_S = 0.1
"""Seconds between a watcher's checks for lapsed entries (a lapse is seen at most this long after the TTL)."""

TAIL_MARGIN_S = 1.0
"""Seconds before a lapsed owner's mark (the earlier of its own time and the bucket's store time) from which a
peer reads the log's tail: covers a slow write in the server and clock differences between the owner and the
servers of a cluster."""

LostCallback = Callable[[str, "Owner | None"], Awaitable[None]]
"""``async callback(call_id, new_owner)``: this instance no longer owns the call (``None``: unknown)."""
LapsedCallback = Callable[[str, "Owner", int], Awaitable[None]]
"""``async callback(call_id, last_owner, last_revision)``: the call's owner stopped renewing (``last_owner.written``
set: when the bucket stored the entry)."""
MarkOf = Callable[[str], "LogMark | None"]
"""``mark_of(call_id)``: where this instance's log of the call stands now (None: not known yet)."""


@dataclass(frozen=True, slots=True)
class LogMark:
    """Where an owner's log of a call stood when it wrote its ownership entry (read before the write was sent)."""

    seq: int
    """Its last ``Switchboard-Seq`` for the call: everything it logged later has a higher one."""
    at: datetime
    """When the mark was read (the owner's clock, timezone-aware)."""
    appended: tuple[int, int] | None = None
    """(seq of the last ``input_audio_buffer.append`` counted, caller audio bytes appended to the model up to and
    including it over the whole call); None: not known."""

    def encode(self) -> dict[str, object]:
        """The ``mark`` member of the KV value."""
        body: dict[str, object] = {"seq": self.seq, "at": self.at.isoformat()}
        if self.appended is not None:
            body["appended"] = list(self.appended)
        return body

    @classmethod
    def decode(cls, body: object) -> LogMark | None:
        """The mark in ``body`` (a decoded ``mark`` member), or None when it is absent or malformed."""
        if not isinstance(body, dict):
            return None
        try:
            seq, at, appended = body["seq"], datetime.fromisoformat(str(body["at"])), body.get("appended")
            if not isinstance(seq, int) or seq < 0 or at.tzinfo is None:
                return None
            pair = None
            if isinstance(appended, list) and len(appended) == 2 and all(isinstance(v, int) for v in appended):
                pair = (int(appended[0]), int(appended[1]))
            return cls(seq, at, pair)
        except (KeyError, ValueError, TypeError):
            return None


@dataclass(frozen=True, slots=True)
class Owner:
    """One ownership entry: ``owner`` (instance id), ``epoch`` (≥ 1, +1 per takeover), ``since`` (ISO 8601),
    ``released`` (the owner stopped serving the live call: take it over without waiting for the TTL), ``mark``
    (where its log of the call stood; None: not known) and ``written`` (when the bucket stored the entry, server
    time; set by readers, not part of the value)."""

    owner: str
    epoch: int
    since: str
    released: bool = False
    mark: LogMark | None = None
    written: datetime | None = field(default=None, compare=False)

    def encode(self) -> bytes:
        """The KV value (JSON; ``released`` only when true, ``mark`` only when known)."""
        body: dict[str, object] = {"owner": self.owner, "epoch": self.epoch, "since": self.since}
        if self.released:
            body["released"] = True
        if self.mark is not None:
            body["mark"] = self.mark.encode()
        return json.dumps(body).encode()

    @classmethod
    def decode(cls, data: bytes | None, written: datetime | None = None) -> Owner | None:
        """The entry in ``data`` (stored at ``written``), or None when it is empty or malformed."""
        try:
            body = json.loads(data or b"")
            return cls(str(body["owner"]), int(body["epoch"]), str(body.get("since", "")),
                       body.get("released") is True, LogMark.decode(body.get("mark")), written)
        except (ValueError, KeyError, TypeError):
            return None


def tail_start(previous: Owner | None) -> datetime | None:
    """Where a peer may start reading the log of a call whose owner ``previous`` lapsed: :data:`TAIL_MARGIN_S`
    before the earlier of its mark's time and the entry's store time (None: no mark; read the whole log).

    Everything the owner logged after its mark was sent after the mark was read: no later than the entry was
    stored (server clock), and at the mark's time on the owner's clock; the earlier of the two, less the margin,
    is before it unless both the write took longer and the clocks differ by more than the margin."""
    if previous is None or previous.mark is None or previous.written is None:
        return None
    return min(previous.written, previous.mark.at) - timedelta(seconds=TAIL_MARGIN_S)


async def owners_bucket(js: JetStreamContext, *, replicas: int = 1) -> Any:
    """The ownership KV bucket, created (``max_age`` = :data:`KEEP_S`, history 1) when missing."""
    try:
        return await js.key_value(subjects.CALL_OWNERS_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(KeyValueConfig(
            bucket=subjects.CALL_OWNERS_BUCKET, history=1, ttl=KEEP_S, storage=StorageType.FILE,
            replicas=replicas, description="Switchboard live-call ownership"))


class Ownership:
    """This instance's view of call ownership (module docstring). :meth:`start` before use, :meth:`stop` after.

    ``mark_of`` stamps each renewal with where this instance's log of the call stands (default: no mark)."""

    def __init__(self, js: JetStreamContext, *, instance: str | None = None, replicas: int = 1,
                 heartbeat_s: float = HEARTBEAT_S, ttl_s: float = TTL_S, mark_of: MarkOf | None = None) -> None:
        self.js = js
        self.mark_of = mark_of
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.replicas = replicas
        self.heartbeat_s = heartbeat_s
        self.ttl_s = ttl_s
        self.held: dict[str, tuple[Owner, int]] = {}
        """Calls this instance owns: call id → (entry, revision written last)."""
        self.seen: dict[str, tuple[Owner, int, float]] = {}
        """Every live entry seen in the bucket: call id → (entry, revision, monotonic time seen)."""
        self._lost: list[LostCallback] = []
        self._lapsed: list[LapsedCallback] = []
        self._kv: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reports: set[asyncio.Task[None]] = set()
        """Lapse callbacks running (one task per lapsed call)."""
        self._watcher: Any = None

    def on_lost(self, callback: LostCallback) -> None:
        """Register ``callback`` for calls this instance was fenced out of."""
        self._lost.append(callback)

    def on_lapsed(self, callback: LapsedCallback) -> None:
        """Register ``callback`` for calls whose owner stopped renewing (another instance's or none)."""
        self._lapsed.append(callback)

    async def start(self, *, watch: bool = True) -> None:
        """Open the bucket, start the heartbeat and (``watch``) the bucket watcher."""
        self._kv = await owners_bucket(self.js, replicas=self.replicas)
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="ownership-heartbeat"))
        if watch:
            self._watcher = await self._kv.watchall()
            self._tasks.append(asyncio.create_task(self._watch(), name="ownership-watch"))
            self._tasks.append(asyncio.create_task(self._lapses(), name="ownership-lapses"))

    async def stop(self) -> None:
        """Stop heartbeats and watching (entries still held lapse after :data:`TTL_S`)."""
        tasks = [*self._tasks, *self._reports]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._reports.clear()
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
            self._watcher = None

    def _entry(self, epoch: int) -> Owner:
        return Owner(self.instance, epoch, datetime.now(UTC).isoformat())

    def _stamped(self, call_id: str, entry: Owner, *, released: bool = False) -> Owner:
        """``entry`` with this instance's log mark for the call now (read before the write is sent)."""
        mark = self.mark_of(call_id) if self.mark_of is not None else None
        return Owner(entry.owner, entry.epoch, entry.since, released or entry.released, mark)

    async def current(self, call_id: str) -> tuple[Owner | None, int]:
        """The call's entry in the bucket and its revision (``(None, 0)`` when there is none)."""
        try:
            entry = await self._kv.get(call_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None, 0
        return Owner.decode(entry.value), int(entry.revision or 0)

    async def claim(self, call_id: str) -> int | None:
        """Own a new call (epoch 1); None when another instance already owns it."""
        entry = self._entry(1)
        try:
            revision = int(await self._kv.create(call_id, entry.encode()))
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        self.held[call_id] = (entry, revision)
        return entry.epoch

    async def take_over(self, call_id: str, *, previous: Owner | None = None,
                        revision: int | None = None) -> int | None:
        """Take the call from its current (or lapsed) owner with epoch = previous + 1, by compare-and-set on
        ``revision`` (default: the bucket's current entry); None when another instance won."""
        if previous is None or revision is None:
            previous, revision = await self.current(call_id)
        epoch = (previous.epoch if previous is not None else 0) + 1
        entry = self._entry(epoch)
        try:
            if previous is not None and revision:
                new_revision = int(await self._kv.update(call_id, entry.encode(), last=revision))
            else:
                new_revision = int(await self._kv.create(call_id, entry.encode()))
        except nats.js.errors.KeyWrongLastSequenceError:
            if previous is not None:  # expired meanwhile: the key is gone, create it
                try:
                    new_revision = int(await self._kv.create(call_id, entry.encode()))
                except nats.js.errors.KeyWrongLastSequenceError:
                    return None
            else:
                return None
        self.held[call_id] = (entry, new_revision)
        log.info("call %s: taken over at epoch %d (from %s)", call_id, epoch, previous.owner if previous else "-")
        return epoch

    async def release(self, call_id: str) -> None:
        """Give the call up (it ended): delete the entry this instance holds (no effect if fenced)."""
        held = self.held.pop(call_id, None)
        if held is None:
            return
        with contextlib.suppress(Exception):
            await self._kv.delete(call_id, last=held[1])

    async def leave(self, call_id: str) -> None:
        """Stop serving a live call this instance holds (it is stopping; no peer took the call over): mark the
        entry released (compare-and-set on the held revision) so a watching instance takes it over at once. On
        failure (fenced, NATS down) the entry just lapses after :data:`TTL_S`."""
        held = self.held.pop(call_id, None)
        if held is None:
            return
        entry, revision = held
        try:
            await self._kv.update(call_id, self._stamped(call_id, entry, released=True).encode(), last=revision)
        except Exception as exc:
            log.warning("call %s: could not mark the ownership released (%s); it lapses", call_id, exc)

    def forget(self, call_id: str) -> None:
        """Stop renewing ``call_id`` without deleting it (handed over: the new owner's entry stays)."""
        self.held.pop(call_id, None)

    async def _renew(self, call_id: str, entry: Owner, revision: int) -> None:
        entry = self._stamped(call_id, entry)
        try:
            new_revision = int(await self._kv.update(call_id, entry.encode(), last=revision))
        except nats.js.errors.KeyWrongLastSequenceError:
            if self.held.get(call_id, (None, 0))[1] != revision:
                return  # released or re-claimed meanwhile
            self.held.pop(call_id, None)
            owner, _ = await self.current(call_id)
            log.warning("call %s: ownership lost (now %s)", call_id, owner.owner if owner else "nobody")
            for callback in self._lost:
                with contextlib.suppress(Exception):
                    await callback(call_id, owner)
            return
        if call_id in self.held:
            self.held[call_id] = (entry, new_revision)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            for call_id, (entry, revision) in list(self.held.items()):
                try:
                    await self._renew(call_id, entry, revision)
                except Exception as exc:  # NATS blip: retried next beat (the entry lives TTL_S)
                    log.warning("call %s: ownership renewal failed: %s", call_id, exc)

    async def _watch(self) -> None:
        while True:
            try:
                update = await self._watcher.updates(timeout=None)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            if update is None:
                continue
            if update.operation in ("DEL", "PURGE") or not update.value:
                self.seen.pop(update.key, None)
                continue
            owner = Owner.decode(update.value, update.created if isinstance(update.created, datetime) else None)
            if owner is not None:
                self.seen[update.key] = (owner, int(update.revision or 0), time.monotonic())

    async def _lapses(self) -> None:
        """Every :data:`LAPSE_CHECK_S`: report entries of other instances not renewed for ``ttl_s``, and released
        ones — each call in its own task, so the calls of one crashed owner are taken over side by side."""
        while True:
            await asyncio.sleep(LAPSE_CHECK_S)
            now = time.monotonic()
            for call_id, (owner, revision, at) in list(self.seen.items()):
                if (now - at < self.ttl_s and not owner.released) or call_id in self.held:
                    continue
                self.seen.pop(call_id, None)
                task = asyncio.create_task(self._report(call_id, owner, revision), name=f"lapsed-{call_id}")
                self._reports.add(task)
                task.add_done_callback(self._reports.discard)

    async def _report(self, call_id: str, owner: Owner, revision: int) -> None:
        for callback in self._lapsed:
            try:
                await callback(call_id, owner, revision)
            except Exception:
                log.exception("call %s: handling its lapsed ownership failed", call_id)
