"""Per-call data keys over the ``call_keys`` table: created by the archive writer, opened by the readers,
destroyed by an erasure (:mod:`services.recorder.erasure`). Field sealing itself is :mod:`services.recorder.crypto`.

The writer keeps the unwrapped keys of recently active calls in memory (LRU); a key created inside a batch's
transaction enters that cache only after the commit (:meth:`Vault.committed`), so a failed batch never leaves a
key in memory that the database lacks. Readers do not cache: every read of a call unwraps its key afresh, so
an erasure takes effect on the next read.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.recorder import models
from services.recorder.crypto import (
    PREFIX,
    KeyUnavailable,
    Kms,
    LocalKms,
    forget_contexts,
    new_data_key,
    open_body,
)
from services.recorder.records import ArchivedEvent
from shared.config import get_settings

__all__ = ["CallKey", "MissingKms", "Vault", "configured_vault"]

log = logging.getLogger(__name__)


class MissingKms:
    """A :class:`~services.recorder.crypto.Kms` without a key: wrapping and unwrapping raise
    :class:`~services.recorder.crypto.KeyUnavailable` naming where the key was looked for."""

    def __init__(self, looked_at: Path) -> None:
        self._why = (f"no archive key: SWITCHBOARD_ARCHIVE_KEY is unset and {looked_at} does not exist")

    @property
    def key_id(self) -> str:
        """``none``."""
        return "none"

    async def wrap(self, call_id: str, data_key: bytes) -> bytes:
        """Raises :class:`~services.recorder.crypto.KeyUnavailable`."""
        raise KeyUnavailable(self._why)

    async def unwrap(self, call_id: str, wrapped: bytes, key_id: str) -> bytes:
        """Raises :class:`~services.recorder.crypto.KeyUnavailable`."""
        raise KeyUnavailable(f"cannot open the data key of call {call_id}: {self._why}")


@lru_cache(maxsize=4)
def _configured(archive_key: str | None, data_dir: Path) -> Vault:
    return Vault.from_settings(archive_key, data_dir)


def configured_vault() -> Vault:
    """The vault of the process's settings (``SWITCHBOARD_ARCHIVE_KEY``, else ``<data dir>/auth/archive_key``,
    created on first use); the readers' default."""
    settings = get_settings()
    return _configured(settings.archive_key, settings.data_dir)


@dataclass(frozen=True, slots=True)
class CallKey:
    """A call's data key as a reader finds it: ``key`` (None when there is none), ``erased_ns`` (None: not erased)."""

    call_id: str
    key: bytes | None
    erased_ns: int | None

    def open(self, event: ArchivedEvent) -> ArchivedEvent:
        """``event`` with its content fields opened (``[erased]`` once the call is erased).

        Raises:
            KeyUnavailable: the event holds sealed content and the call has no key and is not erased, or the
                content does not decrypt under the key.
        """
        if PREFIX.encode() not in event.body:
            return event
        if self.key is None and self.erased_ns is None:
            raise KeyUnavailable(f"call {self.call_id} has encrypted content but no data key in call_keys and no "
                                 "erasure record")
        body = open_body(self.key, event.call_id, event.stream, event.stream_seq, event.type, event.body)
        return replace(event, body=body, _parsed=None, _parsed_done=False)


class Vault:
    """The data keys of the archive, wrapped by ``kms`` (:class:`~services.recorder.crypto.Kms`)."""

    def __init__(self, kms: Kms, *, cache_size: int = 20_000) -> None:
        self.kms = kms
        self.cache_size = cache_size
        self._keys: OrderedDict[str, bytes] = OrderedDict()

    @classmethod
    def from_settings(cls, archive_key: str | None, data_dir: Path, *, create: bool = True) -> Vault:
        """With :class:`~services.recorder.crypto.LocalKms` under ``SWITCHBOARD_ARCHIVE_KEY`` (``archive_key``),
        else under ``<data_dir>/auth/archive_key`` — created on first use when ``create``, else a vault whose
        every unwrap fails naming the missing key (:class:`MissingKms`; e.g. auditing a copied database).

        Raises:
            ValueError: the key setting or file is malformed.
        """
        if archive_key:
            return cls(LocalKms.from_setting(archive_key))
        path = data_dir / "auth" / "archive_key"
        if not create and not path.exists():
            return cls(MissingKms(path))
        return cls(LocalKms.from_file(path))

    async def writer_keys(self, conn: AsyncConnection, call_ids: Iterable[str]) -> tuple[dict[str, bytes],
                                                                                       dict[str, bytes]]:
        """The data keys the archive writer seals ``call_ids``' content with, inside the batch's transaction
        ``conn``: ``(keys, created)``. Calls without a key get one (inserted into ``call_keys`` through ``conn``;
        returned in ``created`` for :meth:`committed`). An erased call gets a random key that is never stored,
        so content arriving after its erasure is unreadable from the start."""
        keys: dict[str, bytes] = {}
        missing = []
        for call_id in call_ids:
            key = self._keys.get(call_id)
            if key is None:
                missing.append(call_id)
            else:
                keys[call_id] = key
        created: dict[str, bytes] = {}
        if not missing:
            return keys, created
        stored: dict[str, tuple[str, bytes]] = {}
        erased: set[str] = set()
        k, c = models.call_keys, models.calls
        for start in range(0, len(missing), 500):
            chunk = missing[start:start + 500]
            for row in (await conn.execute(select(k.c.call_id, k.c.key_id, k.c.wrapped_key)
                                           .where(k.c.call_id.in_(chunk)))).all():
                stored[row[0]] = (row[1], bytes(row[2]))
            erased |= set((await conn.execute(select(c.c.call_id).where(
                c.c.call_id.in_(chunk), c.c.erased_ns.is_not(None)))).scalars())
        now = time.time_ns()
        rows = []
        for call_id in missing:
            if call_id in stored:
                key_id, wrapped = stored[call_id]
                keys[call_id] = await self.kms.unwrap(call_id, wrapped, key_id)
                created[call_id] = keys[call_id]  # cache after commit like a new one
            elif call_id in erased:
                keys[call_id] = new_data_key()
            else:
                key = new_data_key()
                rows.append({"call_id": call_id, "key_id": self.kms.key_id,
                             "wrapped_key": await self.kms.wrap(call_id, key), "created_ns": now})
                keys[call_id] = created[call_id] = key
        if rows:
            await conn.execute(models.call_keys.insert(), rows)
        return keys, created

    def committed(self, created: dict[str, bytes]) -> None:
        """Cache the keys :meth:`writer_keys` created or loaded, once their transaction has committed."""
        for call_id, key in created.items():
            self._keys[call_id] = key
            self._keys.move_to_end(call_id)
        while len(self._keys) > self.cache_size:
            self._keys.popitem(last=False)

    def forget(self, call_id: str) -> None:
        """Drop ``call_id``'s key from the writer's cache and every cached AES-GCM context (called when the call
        is erased)."""
        self._keys.pop(call_id, None)
        forget_contexts()

    async def reader_key(self, source: AsyncEngine | AsyncConnection, call_id: str) -> CallKey:
        """``call_id``'s data key and erasure time, read from the database and unwrapped.

        Raises:
            KeyUnavailable: the stored key is wrapped under another key-encryption key or does not authenticate.
        """
        k, c = models.call_keys, models.calls

        async def read(conn: AsyncConnection) -> tuple[tuple[str, bytes] | None, int | None]:
            row = (await conn.execute(select(k.c.key_id, k.c.wrapped_key).where(k.c.call_id == call_id))).first()
            erased = (await conn.execute(select(c.c.erased_ns).where(c.c.call_id == call_id))).scalar()
            return ((row[0], bytes(row[1])) if row is not None else None), erased

        if isinstance(source, AsyncConnection):
            stored, erased_ns = await read(source)
        else:
            async with source.connect() as conn:
                stored, erased_ns = await read(conn)
        key = await self.kms.unwrap(call_id, stored[1], stored[0]) if stored is not None else None
        return CallKey(call_id, key, int(erased_ns) if erased_ns is not None else None)

    async def opener(self, engine: AsyncEngine, call_id: str) -> Callable[[ArchivedEvent], ArchivedEvent]:
        """A function opening the content of ``call_id``'s events (:meth:`CallKey.open`)."""
        return (await self.reader_key(engine, call_id)).open
