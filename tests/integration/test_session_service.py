"""The session service on a real nats-server: each ``call.<id>.started`` is taken exactly once across
instances, bad ``started`` payloads are rejected without harm, an unreachable model is surfaced as
``session.error`` and a call still ends with its summary."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from services.session.call import CallOptions, ModelEndpoint
from services.session.service import SessionService
from shared import subjects
from shared.bus import Bus, Envelope
from shared.config import load_settings
from shared.contracts import CallEnded, CallStarted
from switchboard import natsserver
from tests.integration.session_support import ROOT

pytestmark = pytest.mark.timeout(120)


def unreachable() -> ModelEndpoint:
    """A Realtime URL nothing listens on (connects are refused at once)."""
    return ModelEndpoint(f"ws://127.0.0.1:{natsserver.free_port()}/v1/realtime", None, None)


async def make_service(nats_url: str, agent: Path | None = None, **options: object) -> tuple[Bus, SessionService]:
    session_bus = await Bus.connect(nats_url, name="test-session", source="session")
    settings = load_settings(nats_url=nats_url, agent=agent or ROOT / "agents" / "receptionist.yaml", js_max_age=600)
    service = SessionService(session_bus, settings, endpoint=unreachable(),
                             options=CallOptions(**options))  # type: ignore[arg-type]
    await service.start()
    return session_bus, service


def started(call_id: str) -> dict[str, object]:
    return CallStarted(call_id=call_id, carrier="twilio", agent="receptionist", audio_format="audio/pcmu",
                       from_="+15551230001", to="+15559870000", started_at=datetime.now(UTC).isoformat()).encode()


async def wait_until(predicate: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} not met within {timeout} s")


async def test_each_call_is_taken_by_exactly_one_instance(gateway_bus: Bus, nats_url: str) -> None:
    instances = [await make_service(nats_url) for _ in range(3)]
    calls = [subjects.new_call_id() for _ in range(12)]
    try:
        for cid in calls:
            await gateway_bus.publish_event(subjects.call_started(cid), started(cid), call_id=cid)
        await wait_until(lambda: sum(cid in s.calls for _, s in instances for cid in calls) == len(calls))
        await asyncio.sleep(0.3)  # a second taker would show up here
        taken = [cid for _, s in instances for cid in s.calls if cid in calls]  # not another test's leftovers
        assert sorted(taken) == sorted(calls)  # every call once, none twice
        assert sum(1 for _, s in instances if s.calls) >= 2  # the queue group spreads calls
    finally:  # the calls end: left live, a later test's instance would take them over (their owners stopped)
        for cid in calls:
            await gateway_bus.publish_event(subjects.call_ended(cid), CallEnded(reason="caller_hangup").encode(),
                                            call_id=cid)
        with contextlib.suppress(AssertionError):  # the instances stop in any case
            await wait_until(lambda: not any(cid in s.calls for _, s in instances for cid in calls))
        for session_bus, service in instances:
            await service.stop()
            await session_bus.close()


async def test_bad_started_payloads_are_rejected_and_the_service_carries_on(gateway_bus: Bus, nats_url: str) -> None:
    session_bus, service = await make_service(nats_url, model_error_after=2)
    good = subjects.new_call_id()
    events: list[tuple[str, dict[str, object]]] = []

    async def collect(env: Envelope) -> None:
        events.append((env.subject.rsplit(".", 1)[1], env.json()))

    await gateway_bus.subscribe(subjects.session_events(good), collect)
    try:
        bad = subjects.new_call_id()
        await gateway_bus.publish(subjects.call_started(bad), b"not json", call_id=bad)
        await gateway_bus.publish(subjects.call_started(bad), {"call_id": "bad id!", "audio_format": "audio/pcmu"})
        await gateway_bus.publish(subjects.call_started(bad), {"call_id": bad, "audio_format": "audio/mp3"})
        await gateway_bus.publish_event(subjects.call_started(good), started(good), call_id=good)
        await wait_until(lambda: good in service.calls)
        assert bad not in service.calls and "bad id!" not in service.calls  # the bad payloads made no call
        # the model cannot be reached: surfaced once as session.error, the call keeps trying
        await wait_until(lambda: any(n == "error" for n, _ in events))
        error = next(e for n, e in events if n == "error")
        assert error["code"] == "model_unavailable" and error["message"]
        # the carrier hangs up: the session ends and publishes its summary anyway
        await gateway_bus.publish_event(subjects.call_ended(good), CallEnded(reason="caller_hangup").encode(),
                                        call_id=good)
        await wait_until(lambda: any(n == "summary" for n, _ in events))
        summary = next(e for n, e in events if n == "summary")
        assert summary["ended_reason"] == "caller_hangup" and summary["call_id"] == good
        await wait_until(lambda: good not in service.calls, what="call ended")
        assert service.failed_calls == []
    finally:
        await service.stop()
        await session_bus.close()


def without_disclosure(tmp_path: Path) -> Path:
    """The receptionist without its disclosure (whose gate would drop early audio instead of buffering it)."""
    spec = yaml.safe_load((ROOT / "agents" / "receptionist.yaml").read_text())
    spec.pop("disclosure")
    (tmp_path / "receptionist.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "receptionist.yaml"


async def test_early_audio_is_buffered_while_the_model_is_away(gateway_bus: Bus, nats_url: str,
                                                               tmp_path: Path) -> None:
    session_bus, service = await make_service(nats_url, without_disclosure(tmp_path))
    cid = subjects.new_call_id()
    try:
        await gateway_bus.publish_event(subjects.call_started(cid), started(cid), call_id=cid)
        await wait_until(lambda: cid in service.calls, what="call taken")
        call = service.calls[cid]
        await wait_until(call.subscribed.is_set, what="subscribed")
        for _ in range(25):
            await gateway_bus.publish(subjects.call_audio_in(cid), b"\xff" * 160, call_id=cid)
        await wait_until(lambda: call.audio.buffered == 25 * 160,
                         what=f"all audio buffered (have {call.audio.buffered} bytes)")
        assert call.log.counts == {"client": 0, "server": 0}  # nothing sent or logged without a model
        await gateway_bus.publish_event(subjects.call_ended(cid), CallEnded(reason="caller_hangup").encode(),
                                        call_id=cid)
        await wait_until(lambda: cid not in service.calls, what="call ended")
    finally:
        await service.stop()
        await session_bus.close()


async def test_audio_while_a_gated_disclosure_plays_is_dropped_not_buffered(gateway_bus: Bus,
                                                                            nats_url: str) -> None:
    session_bus, service = await make_service(nats_url)  # the receptionist: gate_recording true
    cid = subjects.new_call_id()
    try:
        await gateway_bus.publish_event(subjects.call_started(cid), started(cid), call_id=cid)
        await wait_until(lambda: cid in service.calls, what="call taken")
        call = service.calls[cid]
        await wait_until(call.subscribed.is_set, what="subscribed")
        for _ in range(25):
            await gateway_bus.publish(subjects.call_audio_in(cid), b"\xff" * 160, call_id=cid)
        await wait_until(lambda: call.disclosure.withheld_bytes == 25 * 160, what="all audio withheld")
        assert call.audio.buffered == 0 and call.log.counts == {"client": 0, "server": 0}
        await gateway_bus.publish_event(subjects.call_ended(cid), CallEnded(reason="caller_hangup").encode(),
                                        call_id=cid)
        await wait_until(lambda: cid not in service.calls, what="call ended")
        assert call.disclosure.record is not None and call.disclosure.record.status == "interrupted"
    finally:
        await service.stop()
        await session_bus.close()
