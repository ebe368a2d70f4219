"""Issue 23's bus attacks, replayed against a nats-server with the generated users and permissions.

Each attack is tried with a real client; the server must refuse it (a ``Permissions Violation`` error on the
connection and nothing delivered or stored), while the same identity's legitimate traffic goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from shared import natsauth, subjects
from shared.bus import Bus
from shared.bus.wire import SwitchboardClient
from shared.config import load_settings
from tests.conftest import NatsAuth

Connect = Callable[[str], Awaitable[tuple[NATS, list[str]]]]


@pytest.fixture
async def connect_as(nats_url: str, nats_auth: NatsAuth) -> AsyncIterator[Connect]:
    """``await connect_as("gateway")``: a nats-py client (the bus's :class:`SwitchboardClient`) with that identity's
    seed, and its error list."""
    clients: list[NATS] = []

    async def connect(identity: str) -> tuple[NATS, list[str]]:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        options = natsauth.client_options(nkey_seed=str(nats_auth.seeds[identity]), identity=identity)
        nc = SwitchboardClient()  # nats-py's own flush can overtake an earlier SUB (shared/bus/wire.py)
        await nc.connect(nats_url, error_cb=on_error, allow_reconnect=False, **options)
        clients.append(nc)
        return nc, errors

    yield connect
    for nc in clients:
        with contextlib.suppress(Exception):
            await nc.close()


@pytest.fixture
async def operator(nats_url: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_url, name="auth-operator", source="operator")
    await bus.ensure_streams(load_settings(js_max_age=600))
    yield bus
    await bus.close()


async def _violation(errors: list[str], nc: NATS) -> bool:
    """True once the server has reported a permissions violation on ``nc`` (after a round trip)."""
    for _ in range(50):
        with contextlib.suppress(Exception):
            await nc.flush(timeout=2)
        if any("permissions violation" in e.lower() for e in errors):
            return True
        await asyncio.sleep(0.05)
    return False


async def _received(bus: Bus, subject: str, publish: Callable[[], Awaitable[Any]]) -> list[bytes]:
    """What an operator subscription on ``subject`` receives while ``publish()`` runs."""
    got: list[bytes] = []
    sub = await bus.nc.subscribe(subject, cb=_collector(got))
    await bus.nc.flush()
    await publish()
    await asyncio.sleep(0.2)
    await bus.nc.flush()
    await sub.unsubscribe()
    return got


def _collector(into: list[bytes]) -> Callable[[Any], Awaitable[None]]:
    async def collect(msg: Any) -> None:
        into.append(msg.data)

    return collect


async def test_anonymous_connection_is_refused(nats_url: str) -> None:
    with pytest.raises((nats.errors.Error, OSError, TimeoutError)) as info:
        await nats.connect(nats_url, allow_reconnect=False, connect_timeout=3)
    assert "authorization" in str(info.value).lower()


async def test_unknown_nkey_is_refused(nats_url: str) -> None:
    seed = natsauth.new_user_seed().decode()
    with pytest.raises((nats.errors.Error, OSError, TimeoutError)) as info:
        await nats.connect(nats_url, allow_reconnect=False, connect_timeout=3,
                           **natsauth.client_options(nkey_seed=seed))
    assert "authorization" in str(info.value).lower()


async def test_forged_session_event_from_the_gateway_is_refused_and_not_stored(
        connect_as: Connect, operator: Bus, unique: str) -> None:
    call_id = f"call_forge{unique}"
    nc, errors = await connect_as("gateway")
    subject = subjects.rt_server(call_id, "response.output_audio_transcript.done")
    forged = b'{"type":"response.output_audio_transcript.done","transcript":"FORGED"}'
    got = await _received(operator, subjects.rt_all(call_id), lambda: nc.publish(
        subject, forged, headers={"Switchboard-Source": "session", "Switchboard-Call-Id": call_id}))
    assert got == []
    assert await _violation(errors, nc)
    stored = [env async for env in operator.replay(subjects.rt_all(call_id), subjects.RT_STREAM)]
    assert stored == []
    # the same identity's own subject goes through (so the refusal above is the permission, not a broken client)
    ok = await _received(operator, subjects.call_started(call_id), lambda: nc.publish(
        subjects.call_started(call_id), b"{}"))
    assert ok == [b"{}"]


async def test_gateway_cannot_hang_up_a_call_or_book_through_a_tool(connect_as: Connect, operator: Bus,
                                                                    unique: str) -> None:
    call_id = f"call_hang{unique}"
    nc, errors = await connect_as("gateway")
    got = await _received(operator, subjects.command(call_id, "hangup"),
                          lambda: nc.publish(subjects.command(call_id, "hangup"), b"{}"))
    assert got == []
    assert await _violation(errors, nc)
    with pytest.raises(nats.errors.Error):  # no permission to publish: no responder ever sees it
        await nc.request(subjects.tool("book_appointment"), b"{}", timeout=1)


async def test_tools_cannot_eavesdrop_caller_audio(connect_as: Connect, unique: str) -> None:
    call_id = f"call_ear{unique}"
    tools, errors = await connect_as("tools")
    heard: list[bytes] = []
    await tools.subscribe(subjects.call_audio_in_all(), cb=_collector(heard))
    assert await _violation(errors, tools)
    gateway, _ = await connect_as("gateway")
    session, _ = await connect_as("session")
    legit: list[bytes] = []
    await session.subscribe(subjects.call_audio_in(call_id), cb=_collector(legit))
    await session.flush()
    await gateway.publish(subjects.call_audio_in(call_id), b"\xff" * 160)
    await gateway.flush()
    for _ in range(50):
        if legit:
            break
        await asyncio.sleep(0.05)
    assert legit == [b"\xff" * 160]
    await tools.flush()
    assert heard == []


async def test_no_service_may_purge_or_delete_a_stream(connect_as: Connect, operator: Bus, unique: str) -> None:
    call_id = f"call_purge{unique}"
    await operator.js.publish(subjects.rt_client(call_id, "session.update"), b"{}")
    before = (await operator.js.stream_info("RT")).state.messages
    for identity in natsauth.SERVICES:
        nc, errors = await connect_as(identity)
        js = nc.jetstream(timeout=1)
        with pytest.raises((nats.errors.Error, TimeoutError)):
            await js.purge_stream("RT")
        with pytest.raises((nats.errors.Error, TimeoutError)):
            await js.delete_stream("CALLS")
        assert await _violation(errors, nc), identity
    assert (await operator.js.stream_info("RT")).state.messages >= before
    assert (await operator.js.stream_info("CALLS")).config.name == "CALLS"


async def test_a_service_cannot_read_another_services_replies(connect_as: Connect) -> None:
    tools, errors = await connect_as("tools")
    await tools.subscribe(f"{natsauth.inbox_prefix('recorder')}.>")
    assert await _violation(errors, tools)


async def test_each_service_can_do_its_own_job(connect_as: Connect, operator: Bus, unique: str) -> None:
    """Positive controls: the session logs rt events to JetStream and replays them; tools answer requests."""
    call_id = f"call_ok{unique}"
    session, errors = await connect_as("session")
    js = session.jetstream()
    ack = await js.publish(subjects.rt_client(call_id, "session.update"), b"{}")
    assert ack.stream == "RT"
    psub = await js.pull_subscribe(subjects.rt_all(call_id), stream="RT")
    msgs = await psub.fetch(1, timeout=5)
    assert msgs[0].data == b"{}"
    tools, _ = await connect_as("tools")

    async def answer(msg: Any) -> None:
        await msg.respond(b'{"output": "ok"}')

    await tools.subscribe(subjects.tool(f"ping{unique}"), cb=answer)
    await tools.flush()
    reply = await session.request(subjects.tool(f"ping{unique}"), b"{}", timeout=5)
    assert reply.data == b'{"output": "ok"}'
    await session.flush()
    assert not any("permissions violation" in e.lower() for e in errors), errors
