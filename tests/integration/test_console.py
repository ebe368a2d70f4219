"""The web console on the recorder (``/ui/``): calls list with filters and paging, the call page, the KPI
dashboard, bearer auth, and the live stream replaying tool calls once the call has ended. Real NATS and
SQLite/PostgreSQL; the recorder and the analytics consumer run in-process over the same database."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.analytics import store as kpi_store
from services.analytics.consumer import AnalyticsConsumer
from services.analytics.db import migrate as migrate_analytics
from services.recorder.api import create_app
from services.recorder.live import live_stream
from services.recorder.ui.routes import ASSETS
from shared.bus import Bus
from tests.integration.test_recorder_api import archived  # noqa: F401 - the archived-call fixture

Archived = tuple[AsyncEngine, Bus, str, str]


@pytest.fixture
async def console(archived: Archived, unique: str) -> AsyncIterator[Archived]:  # noqa: F811
    engine, bus, call_id, trace_id = archived
    await migrate_analytics(engine)
    consumer = AnalyticsConsumer(bus.js, engine, durable_prefix=f"ui{unique}")
    stopping = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopping))
    async with asyncio.timeout(60):
        while not ((row := await kpi_store.call_figures(engine, call_id)) and row["ended_ns"]):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    yield engine, bus, call_id, trace_id
    stopping.set()
    await task


def client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://recorder")  # type: ignore[arg-type]


async def test_calls_list_filters_and_paging(console: Archived) -> None:
    engine, bus, call_id, _ = console
    async with client(create_app(engine, api_token=None, bus=bus)) as c:
        root = await c.get("/", follow_redirects=False)
        assert root.status_code in (302, 307) and root.headers["location"] == "/ui/"
        page = (await c.get("/ui/")).text
        assert call_id in page and f'href="/ui/calls/{call_id}"' in page
        assert "<th>disclosure</th>" in page and '<td class="disclosure">completed</td>' in page
        assert call_id in (await c.get("/ui/", params={"status": "ended", "end_reason": "caller_hangup"})).text
        assert call_id not in (await c.get("/ui/", params={"carrier": "no-such-carrier"})).text
        assert call_id not in (await c.get("/ui/", params={"from": "2099-01-01"})).text
        assert call_id not in (await c.get("/ui/", params={"agent_version": "no-such-version"})).text
        assert "page 1 of" in page
        far = (await c.get("/ui/", params={"page": 999})).text
        assert call_id not in far and "← newer" in far
        for asset, media in ASSETS.items():
            response = await c.get(f"/ui/static/{asset}")
            assert response.status_code == 200 and response.headers["content-type"].startswith(media)
        assert (await c.get("/ui/static/../api.py")).status_code == 404
        # no external asset anywhere: the console works offline
        assert not re.search(r'(src|href)="(https?:)?//', page)


async def test_call_page(console: Archived) -> None:
    engine, bus, call_id, _ = console
    async with client(create_app(engine, api_token=None, bus=bus)) as c:
        page = (await c.get(f"/ui/calls/{call_id}")).text
        assert "I would like to book an appointment for tomorrow at ten" in page  # transcript
        assert "book_appointment(" in page and 'class="result' in page  # tool call with its result
        assert f'src="/calls/{call_id}/recording.wav"' in page and "<audio" in page
        assert 'class="span-row"' in page and "execute_tool" in page  # trace waterfall
        assert "hash chains intact" in page  # audit
        assert "<tr><th>disclosure</th><td>completed</td></tr>" in page
        assert "input_audio_buffer.append" not in page and "audio events filtered out" in page
        assert "response.function_call_arguments.done" in page  # timeline
        assert "interruptions" in page  # the call's KPIs
        assert 'data-start="' in page  # the player follows these
        assert (await c.get("/ui/calls/call_nope")).status_code == 404
        kpis = (await c.get("/ui/kpis")).text
        assert kpis.count("<svg") >= 6 and "Per agent version" in kpis and "Per day" in kpis


async def test_console_requires_the_token(console: Archived) -> None:
    engine, bus, call_id, _ = console
    async with client(create_app(engine, api_token="tok/en", bus=bus)) as c:
        assert (await c.get("/ui/")).status_code == 401
        assert (await c.get("/ui/static/console.css")).status_code == 401
        page = await c.get("/ui/", params={"access_token": "tok/en"})
        assert page.status_code == 200
        assert f'href="/ui/calls/{call_id}?access_token=tok%2Fen"' in page.text  # links carry the token
        assert (await c.get("/ui/static/console.css", params={"access_token": "tok/en"})).status_code == 200


async def test_live_stream_replays_tool_calls_after_the_end(console: Archived) -> None:
    engine, bus, call_id, _ = console
    frames = [f async for f in live_stream(bus, engine, call_id)]
    events = [f.split(b"\n", 1)[0].decode() for f in frames]
    assert events[-1] == "event: ended"
    assert "event: tool" in events  # the archived tool call, with its output
    tool = next(f for f in frames if f.startswith(b"event: tool"))
    assert b"book_appointment" in tool and b'"output"' in tool
    turns = [f for f in frames if f.startswith(b"event: turn")]
    assert len(turns) == len(set(turns))  # each turn once

