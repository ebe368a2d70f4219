"""PCI-safe keypad capture (docs/compliance.md, "Keypad capture"): the payments agent's card state, driven with real
digits through a real nats-server, the real local model, the session service and the real ``take_payment`` tool on
a tool worker.

The card number must appear nowhere: not in any message on any subject (a ``>`` subscription sees everything,
including core NATS), not in any stored stream message, not in any row of an archive built from the streams, not
in any log line and not in any event to or from the model. The model only gets the tool's result.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from services.recorder import models
from services.recorder.archive import Archive
from services.recorder.db import open_database
from services.recorder.records import Incoming
from services.session.call import CallOptions, ModelEndpoint
from services.session.service import SessionService
from services.tools import payments
from services.tools.db import Database
from services.tools.framework import tools_in_module
from services.tools.settings import ToolsSettings
from services.tools.worker import ToolWorker
from shared import subjects
from shared.bus import Bus
from shared.config import load_settings
from tests.integration.session_support import ROOT, SimGateway, read_log, speech
from tests.integration.sessionbus_support import buses_fixture, model_url_fixture  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(240)

CARD = "4111111111111111"
BAD_CARD = "4111111111111112"  # fails the Luhn check
KEY = secrets.token_hex(32)


@pytest.fixture
async def worker(buses: tuple[Bus, Bus, Bus], tmp_path: Path) -> AsyncIterator[None]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'tools.db'}")
    await db.migrate()
    tools = [*tools_in_module(payments)]
    service = await buses[2].add_service("switchboard-test-payments")
    await ToolWorker(tools, database=db, settings=ToolsSettings(capture_key=KEY)).register(buses[2], service)
    yield
    await service.stop()
    await db.dispose()


@pytest.fixture
async def service(buses: tuple[Bus, Bus, Bus], model_url: str, nats_url: str, worker: None,
                  tmp_path: Path) -> AsyncIterator[SessionService]:
    agents = tmp_path / "agents"
    agents.mkdir()
    for name in ("receptionist.yaml", "payments.yaml"):
        (agents / name).write_text((ROOT / "agents" / name).read_text())
    settings = load_settings(nats_url=nats_url, agent=agents / "receptionist.yaml", js_max_age=600,
                             capture_key=KEY)
    svc = SessionService(buses[0], settings, endpoint=ModelEndpoint(model_url, None, "gpt-realtime"),
                         options=CallOptions(disclosure_chunk_ms=200))
    await svc.start()
    yield svc
    await svc.stop()


async def archive_rows(entries: list[Any], database: str) -> list[bytes]:
    """Archive the call's stored messages as the recorder does and return every column of every row, as bytes."""
    engine = await open_database(database)
    archive = Archive(engine)
    for stream in ("CALLS", "RT"):
        batch = [Incoming(stream, i + 1, 1_800_000_000_000_000_000 + i, e.subject, dict(e.headers), e.data)
                 for i, e in enumerate(x for x in entries if x.stream == stream)]
        for start in range(0, len(batch), 200):
            await archive.persist(stream, batch[start:start + 200])
    async with engine.connect() as conn:
        rows = []
        for table in (models.events, models.calls):
            rows += [repr(tuple(r)).encode() + b"".join(v for v in r if isinstance(v, bytes))
                     for r in (await conn.execute(select(table))).all()]
    await engine.dispose()
    return rows


async def test_card_digits_reach_only_the_tool_sealed_and_nothing_else(
        buses: tuple[Bus, Bus, Bus], service: SessionService, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[tuple[str, bytes]] = []

    async def tap(msg: Any) -> None:
        seen.append((msg.subject, bytes(msg.data) + repr(msg.headers).encode()))

    wiretap = await buses[1].nc.subscribe(">", cb=tap)
    gw = SimGateway(buses[1])
    await gw.start(agent="payments")
    await gw.wait_for(lambda: gw.keypad_capture, 30, "command.capture active")
    await gw.wait_for(lambda: gw.count("server.response.done") > 0, 60, "the greeting")
    # reading the number aloud: the model hears nothing while capturing
    appends = gw.count("client.input_audio_buffer.append")
    await gw.send_audio(await speech("four one one one one one one one"), pace=0.1)

    def captures() -> list[dict[str, Any]]:
        return [body for name, body in gw.session_events if name == "capture"]

    for digit in BAD_CARD:
        await gw.send_dtmf(digit)
    await gw.wait_for(lambda: len(captures()) == 1, 30, "the refused entry")
    assert captures()[0]["ok"] is False and captures()[0]["error_code"] == 400
    assert gw.keypad_capture  # still capturing: the caller may type it again
    for digit in "99*" + CARD[:12] + "#":  # start over with *, then submit early with # → refused
        await gw.send_dtmf(digit)
    await gw.wait_for(lambda: len(captures()) == 2, 30, "the short entry")
    for digit in CARD:
        await gw.send_dtmf(digit)
    await gw.wait_for(lambda: len(captures()) == 3, 30, "the accepted entry")
    record = captures()[2]
    assert record["ok"] is True and record["masked"] == "••••••••••••1111" and record["digits"] == 16
    await gw.wait_for(lambda: any(n == "state_changed" and b["to"] == "paid" for n, b in gw.session_events), 30,
                      "the transition on the tool's result")
    await gw.wait_for(lambda: not gw.keypad_capture, 30, "command.capture inactive")
    assert gw.count("client.input_audio_buffer.append") == appends  # the spoken digits never left the session
    await gw.end()
    await gw.wait_for(lambda: any(n == "summary" for n, _ in gw.session_events), 30, "summary")
    await wiretap.unsubscribe()

    # the model got only the results, with the masked form
    told = [e for e in gw.of("client.conversation.item.create") if e["item"].get("role") == "system"]
    assert len(told) == 3 and "••••••••••••1111" in str(told[2]) and "approved" in str(told[2])
    # the tool was called over the bus with a sealed value
    requests = [data for subject, data in seen if subject == subjects.tool("take_payment")]
    assert len(requests) == 3 and all(b'"sealed"' in r for r in requests)
    keypad = [data for subject, data in seen if subject == subjects.call_keypad(gw.call_id)]
    assert len(keypad) == len(BAD_CARD) + 16 + 16  # every digit took the core subject, none the stream
    assert not [s for s, _ in seen if s == subjects.carrier_dtmf(gw.call_id)]

    entries = await read_log(buses[0], gw.call_id)
    rows = await archive_rows(entries, f"sqlite+aiosqlite:///{tmp_path / 'archive.db'}")
    assert len(rows) > len(entries) // 2
    for number in (CARD, BAD_CARD, CARD[:12]):
        needle = number.encode()
        assert not [s for s, data in seen if needle in data], "on a subject"
        assert not [e.subject for e in entries if needle in e.data], "in a stream"
        assert not [r for r in rows if needle in r], "in the archive"
        assert number not in caplog.text, "in a log line"
        assert not [t for t, e in gw.events if number in str(e)], "in a model event"
        assert number not in str(gw.session_events) and number not in str(gw.commands)
    await gw.close()


async def test_without_a_capture_key_entries_are_refused_and_the_model_is_told(
        buses: tuple[Bus, Bus, Bus], service: SessionService) -> None:
    service.options = CallOptions(disclosure_chunk_ms=200)  # this call's session has no key
    gw = SimGateway(buses[1])
    await gw.start(agent="payments")
    await gw.wait_for(lambda: gw.keypad_capture, 30, "command.capture active")
    await gw.wait_for(lambda: gw.count("server.response.done") > 0, 60, "the greeting (the disclosure is over)")
    for digit in CARD:
        await gw.send_dtmf(digit)
    await gw.wait_for(lambda: any(n == "capture" for n, _ in gw.session_events), 30, "the refused entry")
    record = next(b for n, b in gw.session_events if n == "capture")
    assert record["ok"] is False and record["error_code"] == 503
    await gw.wait_for(lambda: any(e["item"].get("role") == "system"
                                  for e in gw.of("client.conversation.item.create")), 30, "the model told")
    await gw.end()
    await gw.close()
