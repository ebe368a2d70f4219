"""The signed-checkpoint part of ``switchboard audit verify``.

For each call: its chain records (from the recorder API's ``/calls/{id}/chain`` or the database), the latest
checkpoint in the ``AUDIT`` stream, verified with the public key of ``SWITCHBOARD_AUDIT_KEY`` (else
``<data dir>/auth/audit_key``), and :func:`services.recorder.public.checked` — the recorder's public API only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from shared.config import Settings

__all__ = ["check_calls"]

Connect = Callable[[str], Awaitable[Any]]


def _public_key(settings: Settings) -> str | None:
    from services.recorder.public import audit_public_key

    key = settings.audit_key
    key_file = settings.data_dir / "auth" / "audit_key"
    if not key and key_file.is_file():
        key = key_file.read_text().strip()
    return audit_public_key(key) if key else None


async def _rows_direct(url: str, call_ids: list[str]) -> dict[str, tuple[list[dict[str, Any]], int | None]]:
    from services.recorder import public as recorder

    engine = recorder.open_archive(url)
    try:
        out = {}
        for call_id in call_ids:
            call = await recorder.get_call(engine, call_id) or {}
            out[call_id] = (await recorder.chain_rows(engine, call_id), call.get("ended_ns"))
        return out
    finally:
        await engine.dispose()


def _rows_api(client: httpx.Client, call_ids: list[str]) -> dict[str, tuple[list[dict[str, Any]], int | None]]:
    out = {}
    for call_id in call_ids:
        response = client.get(f"/calls/{call_id}/chain")
        response.raise_for_status()
        chain = response.json()
        out[call_id] = (chain["rows"], chain["ended_ns"])
    return out


def check_calls(settings: Settings, nats_url: str, call_ids: list[str], connect: Connect, *,
                database: str | None = None, client: httpx.Client | None = None) -> dict[str, dict[str, Any]]:
    """call id → ``{ok, present, final, signed_ns, problems}`` (or ``{ok: True, skipped: why}`` for every call
    when there is no audit key or NATS is unreachable). Rows come from ``database`` or the API ``client``."""
    public = _public_key(settings)
    if public is None:
        return {c: {"ok": True, "skipped": "no SWITCHBOARD_AUDIT_KEY", "problems": []} for c in call_ids}
    rows = asyncio.run(_rows_direct(database, call_ids)) if database else _rows_api(client or httpx.Client(),
                                                                                     call_ids)
    return asyncio.run(_check(nats_url, rows, public, connect))


async def _check(nats_url: str, rows: dict[str, tuple[list[dict[str, Any]], int | None]], public: str,
                 connect: Connect) -> dict[str, dict[str, Any]]:
    from services.recorder.public import checked

    nc = await connect(nats_url)
    if isinstance(nc, Exception):
        return {c: {"ok": True, "skipped": f"NATS not reachable ({nc})", "problems": []} for c in rows}
    try:
        js = nc.jetstream()
        return {c: await checked(js, c, r, public, ended_ns=ended) for c, (r, ended) in rows.items()}
    finally:
        await nc.close()
