"""First-response latency by lookup (services/analytics/turns.py) against the fold over every event: a call's RT
events in random batches, with the output audio deltas never delivered and the stream seen by the lookups
growing between batches, give exactly the latencies (and their delta sequences) of ``kpis.apply`` over all;
a batch reports the calls that ended in it (metrics, webhook)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from services.analytics import models, store
from services.analytics.db import open_database
from services.analytics.kpis import CallFigures, KpiEvent, apply
from shared import subjects

CALL = "call_turns1"
TYPES = ("input_audio_buffer.speech_stopped", "response.output_audio.delta", "response.output_audio.delta",
         "response.created", "input_audio_buffer.speech_started", "response.done")


class FakeStream:
    """The RT stream as a lookup sees it: messages up to ``horizon`` (sequence) are stored."""

    def __init__(self, events: list[KpiEvent]) -> None:
        self.events = events
        self.horizon = 0

    async def first_after(self, subject: str, seq: int) -> tuple[int, int] | None:
        for ev in self.events:
            if seq < ev.stream_seq <= self.horizon and subjects.rt_server(CALL, ev.type) == subject:
                return ev.stream_seq, ev.ts_ns
        return None


def random_call(rng: random.Random, n: int) -> list[KpiEvent]:
    ts = 1_000_000_000
    out = []
    for seq in range(1, n + 1):
        ts += rng.randint(1, 400) * 1_000_000
        out.append(KpiEvent("RT", "server", rng.choice(TYPES), {}, ts, seq))
    return out


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[Any]:
    eng = await open_database(database_url)
    yield eng
    await eng.dispose()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_lookups_give_the_latencies_of_the_full_fold(engine: Any, seed: int) -> None:
    rng = random.Random(seed)
    events = random_call(rng, 80)
    fig = CallFigures(CALL)
    expected = {}
    for ev in events:
        latency = apply(fig, ev)
        if latency is not None:
            expected[ev.stream_seq] = latency
    assert len(expected) >= 3  # the scenario has turns to measure

    stream = FakeStream(events)
    delivered = [ev for ev in events if ev.type != "response.output_audio.delta"]
    i = 0
    while i < len(delivered):
        batch = delivered[i:i + rng.randint(1, 6)]
        i += len(batch)
        stream.horizon = max(stream.horizon, rng.randint(batch[-1].stream_seq, len(events)))
        outcome = await store.apply_batch(engine, "RT", [(CALL, ev) for ev in batch], stream)
        if rng.random() < 0.5:
            stream.horizon = max(stream.horizon, rng.randint(batch[-1].stream_seq, len(events)))
            await store.resolve_turns(engine, stream, outcome.open_turns, now_ns=0)
    stream.horizon = len(events)
    await store.resolve_turns(engine, stream, [CALL], now_ns=0)
    await store.apply_batch(engine, "RT", [(CALL, ev) for ev in delivered], stream)  # redelivered: no change

    async with engine.connect() as conn:
        rows = (await conn.execute(select(models.kpi_latencies.c.stream_seq, models.kpi_latencies.c.latency_ms)
                                   .where(models.kpi_latencies.c.call_id == CALL))).all()
    assert {r.stream_seq: pytest.approx(r.latency_ms) for r in rows} == expected


async def test_a_call_that_ends_in_a_later_batch_is_reported_once(engine: Any) -> None:
    started = KpiEvent("CALLS", None, "started", {}, 1_000, 1)
    ended = KpiEvent("CALLS", None, "ended", {"reason": "agent_hangup"}, 2_000, 2)
    first = await store.apply_batch(engine, "CALLS", [(CALL, started)])
    later = await store.apply_batch(engine, "CALLS", [(CALL, ended)])
    again = await store.apply_batch(engine, "CALLS", [(CALL, ended)])  # redelivered
    assert (first.ended, [f.call_id for f in later.ended], again.ended) == ([], [CALL], [])
