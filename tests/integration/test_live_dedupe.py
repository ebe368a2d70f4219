"""The live view opened mid-turn shows each turn once: an event that is both in the archived replay and
delivered on the live subscription (published between the subscription and the archive read) is dropped by
its ``Switchboard-Seq``; newer events still arrive. Real NATS, the recorder archiving to SQLite."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from services.recorder import live, queries
from services.recorder.db import open_database
from services.recorder.records import ArchivedEvent
from services.recorder.service import Recorder
from services.recorder.vault import Vault
from shared import subjects
from shared.bus import Bus
from shared.config import load_settings
from shared.contracts import CallEnded, CallStarted

DELTA = "response.output_audio_transcript.delta"


def frame(raw: bytes) -> tuple[str, dict[str, object]]:
    head, data = raw.decode().split("\n", 1)
    return head.removeprefix("event: "), json.loads(data.removeprefix("data: ").strip() or "{}")


async def test_a_page_opened_mid_turn_shows_each_delta_once(nats_url: str, tmp_path: Path, unique: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = await Bus.connect(nats_url, name="ld-gateway", source="gateway")
    session = await Bus.connect(nats_url, name="ld-session", source="session")
    await gateway.ensure_streams(load_settings(js_max_age=600))
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'ld.db'}")
    recorder = Recorder(gateway, engine, tmp_path, durable_prefix=f"ld{unique}", settle_s=0.2)
    await recorder.start()
    call_id = f"CAld{unique}"
    try:
        started = CallStarted(call_id=call_id, carrier="twilio", agent="receptionist", audio_format="audio/pcmu",
                              started_at="2026-12-07T05:30:00+00:00")
        await gateway.publish_event(subjects.call_started(call_id), started.encode(), call_id=call_id)
        for part in ("Hel", "lo"):
            await session.publish_event(subjects.rt_server(call_id, DELTA),
                                        {"type": DELTA, "item_id": "a1", "delta": part}, call_id=call_id)
        async with asyncio.timeout(30):
            while len(await queries.call_events(engine, call_id)) < 3:  # noqa: ASYNC110 - database poll
                await asyncio.sleep(0.05)
        archived_delta = [e for e in await queries.call_events(engine, call_id) if e.type == DELTA][-1]

        async def racing(_engine: object, cid: str, *, vault: Vault | None = None) -> list[ArchivedEvent]:
            # the race: an event already archived also reaches the live subscription
            await gateway.nc.publish(archived_delta.subject, archived_delta.body, headers=archived_delta.headers)
            await gateway.nc.flush()
            await asyncio.sleep(0.3)
            return await queries.call_events(engine, cid, vault=vault)

        monkeypatch.setattr(live, "call_events", racing)
        stream = live.live_stream(session, engine, call_id, heartbeat_s=1.0)
        seen: list[tuple[str, dict[str, object]]] = []
        async with asyncio.timeout(30):
            async for raw in stream:
                if raw.startswith(b":"):
                    continue
                seen.append(frame(raw))
                if seen[-1][0] == "live":
                    break
            await session.publish_event(subjects.rt_server(call_id, DELTA),
                                        {"type": DELTA, "item_id": "a1", "delta": " there"}, call_id=call_id)
            await gateway.publish_event(subjects.call_ended(call_id), CallEnded(reason="caller_hangup").encode(),
                                        call_id=call_id)
            async for raw in stream:
                if not raw.startswith(b":"):
                    seen.append(frame(raw))
        replayed = [d for e, d in seen if e == "turn"]
        assert replayed == [{"role": "assistant", "text": "Hello", "item_id": "a1", "archived": True}]
        live_deltas = [d["delta"] for e, d in seen[seen.index(("live", {"call_id": call_id})):] if e == "delta"]
        assert live_deltas == [" there"]  # not "lo" again
        assert seen[-1][0] == "ended"
    finally:
        await recorder.stop()
        await engine.dispose()
        await gateway.close()
        await session.close()
