"""The disclosure record (``call.<id>.session.disclosure``) and the runner's status decisions, without I/O:
the playback tracker is fed mark echoes by hand and commands/publishes are captured."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from services.session.agent import DisclosureSpec
from services.session.bargein import PlaybackTracker
from services.session.disclosure import Disclosure, DisclosureRecord
from shared.contracts import Contract


class _NoBus:
    async def last_message(self, *_: Any) -> None:
        return None


class Harness:
    def __init__(self, spec: DisclosureSpec | None, grace: float = 5.0) -> None:
        self.playback = PlaybackTracker(8)
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.sent = asyncio.Event()
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.disclosure = Disclosure(spec, bus=_NoBus(), call_id="call_t", audio_format="audio/pcmu",  # type: ignore[arg-type]
                                     playback=self.playback, command=self._command, publish=self._publish,
                                     chunk_ms=200, confirm_grace_s=grace)

    async def _command(self, verb: str, command: Contract) -> None:
        self.commands.append((verb, command.encode()))
        self.sent.set()

    async def _publish(self, subject: str, event: Contract) -> None:
        self.published.append((subject, event.encode()))

    async def played(self) -> int:
        await asyncio.wait_for(self.sent.wait(), 10)
        await asyncio.sleep(0.05)  # the chunks are published back to back
        return sum(len(base64.b64decode(p["audio"])) for _, p in self.commands)


SPEC = DisclosureSpec(text="This call is recorded.")


async def test_without_a_disclosure_the_call_listens_at_once() -> None:
    h = Harness(None)
    h.disclosure.start()
    assert h.disclosure.done.is_set() and await h.disclosure.close() is None and not h.published


async def test_completed_only_when_every_byte_is_confirmed() -> None:
    h = Harness(SPEC)
    h.disclosure.start()
    total = await h.played()
    assert [v for v, _ in h.commands] == ["play"] * len(h.commands) and len(h.commands) > 1
    assert {p["item_id"] for _, p in h.commands} == {"disclosure_call_t"}
    assert all(len(base64.b64decode(p["audio"])) <= 1600 for _, p in h.commands)  # 200 ms of μ-law
    await h.playback.on_mark("disclosure_call_t", total - 1, False)
    assert not h.disclosure.done.is_set()
    await h.playback.on_mark("disclosure_call_t", total, False)
    await asyncio.wait_for(h.disclosure.done.wait(), 5)
    [(subject, payload)] = h.published
    assert subject == "call.call_t.session.disclosure"
    record = DisclosureRecord.from_dict(payload)
    assert (record.status, record.played_bytes, record.audio_bytes) == ("completed", total, total)
    assert record.played_ms == total // 8 and record.text == SPEC.text
    assert await h.disclosure.close() == record and len(h.published) == 1


async def test_a_hangup_midway_is_interrupted_with_the_span_heard() -> None:
    h = Harness(SPEC)
    h.disclosure.start()
    await h.played()
    await h.playback.on_mark("disclosure_call_t", 1600, False)
    record = await h.disclosure.close()
    assert record is not None and record.status == "interrupted"
    assert (record.played_bytes, record.played_ms) == (1600, 200)
    assert h.disclosure.done.is_set() and len(h.published) == 1


async def test_a_clear_or_silent_carrier_is_unconfirmed() -> None:
    h = Harness(SPEC, grace=0.0)
    h.disclosure.start()
    await h.played()
    await h.playback.on_mark("disclosure_call_t", 800, True)  # flushed, not played
    await asyncio.wait_for(h.disclosure.done.wait(), 10)
    assert h.published[0][1]["status"] == "unconfirmed" and h.published[0][1]["played_bytes"] == 0


def test_record_parsing_rejects_what_is_not_a_record() -> None:
    with pytest.raises(ValueError, match="status"):
        DisclosureRecord.from_dict({"status": "maybe"})
    with pytest.raises(ValueError, match="missing"):
        DisclosureRecord.from_dict({"status": "completed"})
    with pytest.raises(ValueError, match="object"):
        DisclosureRecord.from_dict([])
