"""The recorder's public API for tools outside the service (the ``switchboard`` CLI): one small surface over
the archive, so callers never import the recorder's private modules.

Archive (SQLAlchemy async engine on ``SWITCHBOARD_DATABASE_URL``; SQLite or ``postgresql+asyncpg://``):

- :func:`open_archive` (url → engine; the caller disposes it), :func:`get_call`, :func:`call_ids`,
  :func:`archived_sequences`, :func:`chain_rows`, :func:`positions`, :func:`stream_gaps`;
- :func:`verify_call` → :class:`ChainReport` (hash chains and projections, docs/recorder.md "Audit").

Events and timelines: :class:`ArchivedEvent` (one archived event; ``from_dict`` reads the API's
``/calls/{id}/events`` lines), :func:`classify` (subject → call id, direction, type), :func:`timeline` and
:func:`summarize` (the ``replay`` view of events).

Cross-checks and checkpoints: :func:`crosscheck` (archive vs the JetStream streams), :func:`audit_public_key`
(the hex public key of an Ed25519 ``SWITCHBOARD_AUDIT_KEY``) and :func:`checked` (a call's chain rows vs its
latest signed checkpoint in the ``AUDIT`` stream).

Re-running a call (``replay --rerun``): :func:`logged_session_update`, :func:`logged_audio_format`,
:func:`agent_session_update`, :func:`rerun`, :func:`extract_run` and :func:`compare` (see
:mod:`services.recorder.rerun` for the rules).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.recorder import checkpoints, models
from services.recorder.chain import ChainReport
from services.recorder.checkpoints import checked
from services.recorder.crosscheck import crosscheck
from services.recorder.db import create_engine
from services.recorder.queries import call_ids, chain_rows, get_call, positions, stream_gaps, verify_call
from services.recorder.records import ArchivedEvent, classify
from services.recorder.replay import summarize, timeline
from services.recorder.rerun import (
    agent_session_update,
    compare,
    extract_run,
    logged_audio_format,
    logged_session_update,
    rerun,
)
from services.recorder.vault import Vault

__all__ = [
    "ArchivedEvent",
    "ChainReport",
    "Vault",
    "agent_session_update",
    "archived_sequences",
    "audit_public_key",
    "call_ids",
    "chain_rows",
    "checked",
    "classify",
    "compare",
    "crosscheck",
    "extract_run",
    "get_call",
    "logged_audio_format",
    "logged_session_update",
    "open_archive",
    "open_vault",
    "positions",
    "rerun",
    "stream_gaps",
    "summarize",
    "timeline",
    "verify_call",
]


def open_archive(url: str) -> AsyncEngine:
    """An engine on the archive database at ``url`` (no migration: the recorder owns the schema).

    The caller must ``await engine.dispose()``. Raises ``sqlalchemy.exc.ArgumentError`` for a malformed URL.
    """
    return create_engine(url)


def open_vault(archive_key: str | None, data_dir: Path) -> Vault:
    """The archive's key vault for reading (``SWITCHBOARD_ARCHIVE_KEY`` as ``archive_key``, else
    ``<data_dir>/auth/archive_key``); never creates a key: without one, opening a call's content raises
    :class:`services.recorder.crypto.KeyUnavailable` naming the missing key."""
    return Vault.from_settings(archive_key, data_dir, create=False)


async def archived_sequences(engine: AsyncEngine, call_id: str) -> dict[str, set[int]]:
    """Stream name (``CALLS``, ``RT``) → the stream sequences archived for ``call_id`` (empty: none)."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(models.events.c.stream, models.events.c.stream_seq)
                                   .where(models.events.c.call_id == call_id))).all()
    out: dict[str, set[int]] = {}
    for stream, seq in rows:
        out.setdefault(stream, set()).add(int(seq))
    return out


def audit_public_key(private_hex: str) -> str:
    """The hex Ed25519 public key of the private key ``private_hex`` (``SWITCHBOARD_AUDIT_KEY``).

    Raises:
        ValueError: not a 32-byte hex Ed25519 private key.
    """
    return checkpoints.public_hex(checkpoints.private_key(private_hex))
