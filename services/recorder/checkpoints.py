"""Signed checkpoints of the archive's chain heads, published to the ``AUDIT`` stream; and their verification.

A checkpoint states, for one call, each chain's head as the archive committed it: ``{"call_id", "final",
"signed_ns", "key", "heads": {stream: {"chain_index", "last_stream_seq", "hash"}}}`` (``key``: the Ed25519 public
key, hex). The message body is ``{"checkpoint": <that>, "signature": <hex>}``, the signature an Ed25519
signature (RFC 8032, ``cryptography``) over the checkpoint's RFC 8785 canonical JSON
(:func:`services.recorder.chain.canonical_json`). The signing key is ``SWITCHBOARD_AUDIT_KEY`` (32 bytes, hex;
``switchboard up`` generates ``<data dir>/auth/audit_key``).

The recorder publishes one to ``audit.<call id>`` (:func:`shared.subjects.audit_checkpoint`) every
:data:`INTERVAL_S` seconds for each open call whose heads moved, and a ``final`` one once a call has been
finalized (polled every :data:`POLL_S` s). The ``AUDIT`` stream is created with ``deny_delete`` and
``deny_purge`` (https://docs.nats.io/nats-concepts/jetstream/streams, "DenyDelete", "DenyPurge") and no age
limit, and only the operator NATS identity could delete the stream itself. So whoever rewrites the database
afterwards — all rows with recomputed hashes and heads, the last rows truncated and the head moved back, or a
forged row appended with a new head — leaves chains that no longer match the last signed checkpoint
(:func:`compare`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.recorder import models
from services.recorder.chain import canonical_json
from shared import subjects

__all__ = ["INTERVAL_S", "POLL_S", "CheckpointError", "Checkpointer", "compare", "ensure_audit_stream",
           "latest_checkpoint", "private_key", "public_hex", "sign", "verify"]

log = logging.getLogger(__name__)

INTERVAL_S = 60.0
"""Seconds between checkpoints of open calls."""
POLL_S = 2.0
"""Seconds between looks for newly finalized calls (their final checkpoint)."""


class CheckpointError(ValueError):
    """A checkpoint message that is malformed or whose signature does not verify."""


def private_key(hex_key: str) -> Ed25519PrivateKey:
    """The Ed25519 key of ``SWITCHBOARD_AUDIT_KEY`` (64 hex characters = the 32-byte private key).

    Raises:
        ValueError: not 32 bytes of hex.
    """
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(hex_key.strip()))


def public_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw 32-byte public key, hex."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def sign(key: Ed25519PrivateKey, call_id: str, heads: Mapping[str, Mapping[str, Any]], *, final: bool,
         signed_ns: int | None = None) -> bytes:
    """The message body of a checkpoint of ``call_id``'s ``heads`` (stream → chain_index, last_stream_seq,
    hash), signed with ``key``."""
    checkpoint = {"call_id": call_id, "final": final, "signed_ns": signed_ns or time.time_ns(),
                  "key": public_hex(key), "heads": {s: dict(h) for s, h in heads.items()}}
    signature = key.sign(canonical_json(checkpoint)).hex()
    return json.dumps({"checkpoint": checkpoint, "signature": signature}).encode()


def verify(body: bytes, public_key: str) -> dict[str, Any]:
    """The checkpoint in ``body`` once its Ed25519 signature verifies under ``public_key`` (hex).

    Raises:
        CheckpointError: malformed, signed by another key, or the signature does not verify.
    """
    try:
        message = json.loads(body)
        checkpoint: dict[str, Any] = message["checkpoint"]
        signature = bytes.fromhex(message["signature"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"malformed checkpoint: {exc}") from None
    if checkpoint.get("key") != public_key:
        raise CheckpointError("checkpoint signed with another key")
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key)).verify(signature, canonical_json(checkpoint))
    except (InvalidSignature, ValueError):
        raise CheckpointError("checkpoint signature does not verify") from None
    return checkpoint


async def ensure_audit_stream(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create the ``AUDIT`` stream (file storage, no age limit, deny delete, deny purge) unless it exists."""
    config = StreamConfig(name=subjects.AUDIT_STREAM.name, subjects=list(subjects.AUDIT_STREAM.subjects),
                          retention=RetentionPolicy.LIMITS, storage=StorageType.FILE, discard=DiscardPolicy.OLD,
                          num_replicas=replicas, deny_delete=True, deny_purge=True)
    try:
        await js.stream_info(config.name or "AUDIT")
    except nats.js.errors.NotFoundError:
        await js.add_stream(config)


async def latest_checkpoint(js: JetStreamContext, call_id: str) -> bytes | None:
    """The body of the last checkpoint of ``call_id`` in the ``AUDIT`` stream (None: none, or no stream)."""
    try:
        msg = await js.get_last_msg(subjects.AUDIT_STREAM.name, subjects.audit_checkpoint(call_id))
    except nats.js.errors.NotFoundError:
        return None
    return msg.data or b""


@dataclass(frozen=True, slots=True)
class Finding:
    """One disagreement between the archive and a signed checkpoint."""

    stream: str
    detail: str


def compare(checkpoint: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[Finding]:
    """Check the archived ``rows`` of one call (``stream``, ``chain_index``, ``hash``) against ``checkpoint``.

    Every signed head must still be in the archive with the same hash (a rewrite or a truncation fails this);
    after a ``final`` checkpoint no chain may hold records beyond the signed head (an appended row fails this).
    """
    findings: list[Finding] = []
    by_stream: dict[str, dict[int, str]] = {}
    for row in rows:
        by_stream.setdefault(str(row["stream"]), {})[int(row["chain_index"])] = str(row["hash"])
    for stream, head in sorted(checkpoint.get("heads", {}).items()):
        index, want = int(head["chain_index"]), str(head["hash"])
        chain = by_stream.get(stream, {})
        top = max(chain, default=0)
        if index not in chain:
            findings.append(Finding(stream, f"the signed checkpoint covers {index} record(s); the archive holds "
                                            f"{top}: records were removed"))
        elif chain[index] != want:
            findings.append(Finding(stream, f"record #{index} differs from the signed checkpoint (hash "
                                            f"{chain[index][:12]}… vs signed {want[:12]}…): the chain was rewritten"))
        if checkpoint.get("final") and top > index:
            findings.append(Finding(stream, f"{top - index} record(s) after the final signed checkpoint (#{index}): "
                                            f"appended after the call was closed"))
    for stream in sorted(set(by_stream) - set(checkpoint.get("heads", {}))):
        if checkpoint.get("final"):
            findings.append(Finding(stream, "a chain the final signed checkpoint does not know"))
    return findings


class Checkpointer:
    """Publishes signed checkpoints of open calls every ``interval_s`` and of finalized calls within ``poll_s``."""

    def __init__(self, engine: AsyncEngine, js: JetStreamContext, key: Ed25519PrivateKey, *,
                 interval_s: float = INTERVAL_S, poll_s: float = POLL_S) -> None:
        self.engine = engine
        self.js = js
        self.key = key
        self.interval_s = interval_s
        self.poll_s = poll_s
        self._published: dict[str, tuple[tuple[str, int, str], ...]] = {}
        self._projected_since = time.time_ns() - 3600 * 10**9
        self._open_due = 0.0

    async def run(self, stopping: asyncio.Event) -> None:
        """Loop until ``stopping`` is set; a failed round is logged and retried at the next tick."""
        while not stopping.is_set():
            try:
                await self.tick()
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                log.warning("checkpoint round failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.poll_s)

    async def tick(self) -> int:
        """One round: final checkpoints of calls finalized since the last round, and (every ``interval_s``)
        checkpoints of open calls whose heads moved. Returns the number published."""
        now = time.monotonic()
        include_open = now >= self._open_due
        if include_open:
            self._open_due = now + self.interval_s
        c, h = models.calls, models.chain_heads
        since = self._projected_since
        conditions = [c.c.projected_ns >= since]
        if include_open:
            conditions.append(c.c.projected_ns.is_(None))
        query = (select(h.c.call_id, h.c.stream, h.c.chain_index, h.c.last_stream_seq, h.c.hash, c.c.projected_ns)
                 .join(c, c.c.call_id == h.c.call_id).where(or_(*conditions)))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        calls: dict[str, dict[str, dict[str, Any]]] = {}
        final: dict[str, bool] = {}
        newest = since
        for row in rows:
            calls.setdefault(row.call_id, {})[row.stream] = {
                "chain_index": int(row.chain_index), "last_stream_seq": int(row.last_stream_seq), "hash": row.hash}
            final[row.call_id] = row.projected_ns is not None
            if row.projected_ns is not None:
                newest = max(newest, int(row.projected_ns) + 1)
        published = 0
        for call_id, heads in calls.items():
            if await self.publish(call_id, heads, final=final[call_id]):
                published += 1
        self._projected_since = newest
        return published

    async def publish(self, call_id: str, heads: Mapping[str, Mapping[str, Any]], *, final: bool) -> bool:
        """Sign and publish ``heads`` of ``call_id`` unless exactly these were published last; True if sent."""
        state = (*tuple(sorted((s, int(v["chain_index"]), str(v["hash"])) for s, v in heads.items())),
                 ("final", int(final), ""))
        if self._published.get(call_id) == state:
            return False
        await self.js.publish(subjects.audit_checkpoint(call_id), sign(self.key, call_id, heads, final=final))
        self._published[call_id] = state
        return True


async def checked(js: JetStreamContext, call_id: str, rows: Sequence[Mapping[str, Any]], public_key: str,
                  *, ended_ns: int | None, grace_s: float = 120.0) -> dict[str, Any]:
    """The checkpoint part of ``audit verify`` for one call as a JSON-able dict: ``ok``, ``final``,
    ``signed_ns``, ``problems`` (lines). A call that ended more than ``grace_s`` ago must have a checkpoint."""
    body = await latest_checkpoint(js, call_id)
    if body is None:
        late = ended_ns is not None and time.time_ns() - ended_ns > grace_s * 1e9
        problem = ["no signed checkpoint for this call in the AUDIT stream"] if late else []
        return {"ok": not late, "present": False, "problems": problem}
    try:
        checkpoint = verify(body, public_key)
    except CheckpointError as exc:
        return {"ok": False, "present": True, "problems": [str(exc)]}
    if checkpoint.get("call_id") != call_id:
        return {"ok": False, "present": True, "problems": ["the checkpoint names another call"]}
    findings = compare(checkpoint, rows)
    return {"ok": not findings, "present": True, "final": bool(checkpoint.get("final")),
            "signed_ns": checkpoint.get("signed_ns"),
            "problems": [f"{f.stream}: {f.detail}" for f in findings]}
