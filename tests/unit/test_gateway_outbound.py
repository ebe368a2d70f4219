"""The gateway's outbound queue, mark book and browser tokens (pure logic, no I/O)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.gateway.outbound import AudioChunk, Control, MarkBook, MarkPublisher, OutboundQueue, mark_name
from services.gateway.security import BrowserTokens, TokenError, TwilioSignatures, public_url_for
from shared.contracts import CarrierMark


def chunk(item: str, total: int) -> AudioChunk:
    return AudioChunk(b"\xff" * 160, item, total)


async def test_queue_bounds_audio_and_keeps_control_out_of_band() -> None:
    q = OutboundQueue(max_chunks=3)
    assert [q.put_audio(chunk("a", 160 * i)) for i in range(1, 6)] == [True, True, True, False, False]
    assert q.dropped == 2
    q.put_close("agent_hangup")
    dropped = q.put_clear()
    assert [c.cumulative_bytes for c in dropped] == [160, 320, 480]
    assert await q.get() == Control("clear")
    assert q.put_audio(chunk("b", 160))  # the bound applies to queued audio only
    assert await q.get() == Control("close", "agent_hangup")
    assert await q.get() == chunk("b", 160)


async def test_queue_get_waits() -> None:
    q = OutboundQueue()
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not getter.done()
    q.put_audio(chunk("a", 1))
    assert await asyncio.wait_for(getter, 5) == chunk("a", 1)
    with pytest.raises(ValueError):
        OutboundQueue(0)


def test_mark_book_played_and_cleared() -> None:
    book = MarkBook()
    chunks = [chunk("item_a", 160 * i) for i in range(1, 5)]
    for c in chunks:
        book.sent(c)
    assert chunks[0].mark == mark_name("item_a", 160) == "item_a:160"
    first = book.echo("item_a:160")
    assert first is not None and first.encode() == {
        "name": "item_a:160", "item_id": "item_a", "played_bytes": 160, "cleared": False}
    assert book.clear() == 3
    rest = [book.echo(c.mark) for c in chunks[1:]]
    assert [(e.played_bytes, e.cleared) for e in rest if e] == [(160, True)] * 3
    assert book.echo("item_a:160") is None  # echoed already
    assert book.echo("never:sent") is None
    assert [e.encode() for e in book.unsent([chunk("item_a", 800), chunk("item_a", 960), chunk("item_b", 5)])] == [
        {"name": "item_a:960", "item_id": "item_a", "played_bytes": 160, "cleared": True},
        {"name": "item_b:5", "item_id": "item_b", "played_bytes": 0, "cleared": True}]


@given(st.lists(st.sampled_from(["send", "echo", "clear"]), max_size=60))
def test_mark_book_played_is_monotonic(ops: list[str]) -> None:
    book = MarkBook()
    sent: list[str] = []
    total = 0
    last = 0
    for op in ops:
        if op == "send":
            total += 160
            c = chunk("x", total)
            book.sent(c)
            sent.append(c.mark)
        elif op == "echo" and sent:
            echo = book.echo(sent.pop(0))
            assert echo is not None
            assert echo.played_bytes >= last
            last = echo.played_bytes
        elif op == "clear":
            book.clear()
    assert book.played("x") <= total


def played(item: str, total: int, *, cleared: bool = False) -> CarrierMark:
    return CarrierMark(name=mark_name(item, total), item_id=item, played_bytes=total, cleared=cleared)


async def test_mark_publisher_holds_played_echoes_and_flushes_them_before_cleared_ones() -> None:
    sent: list[CarrierMark] = []

    async def publish(mark: CarrierMark) -> None:
        sent.append(mark)

    marks = MarkPublisher(MarkBook(), publish, interval_s=3600.0)
    await marks.echo(played("a", 160))  # nothing published lately: at once
    for echo in (played("a", 320), played("b", 80), played("a", 480)):
        await marks.echo(echo)  # within the interval: held, the latest per item
    assert sent == [played("a", 160)]
    await marks.echo(played("a", 480, cleared=True))  # a clear: what played goes out first, then the cleared echo
    assert sent == [played("a", 160), played("b", 80), played("a", 480), played("a", 480, cleared=True)]
    assert (marks.published, marks.replaced) == (4, 1)
    await marks.echo(played("b", 160))
    await marks.cleared([played("c", 0, cleared=True)])
    await marks.close()
    assert sent[4:] == [played("b", 160), played("c", 0, cleared=True)]
    with pytest.raises(ValueError):
        MarkPublisher(MarkBook(), publish, interval_s=-1)


async def test_the_echo_that_ends_an_items_audio_is_published_at_once() -> None:
    sent: list[CarrierMark] = []

    async def publish(mark: CarrierMark) -> None:
        sent.append(mark)

    book = MarkBook()
    marks = MarkPublisher(book, publish, interval_s=3600.0)
    assert book.item_of({"response_id": "r1", "item_id": "a", "delta": ""}) == "a"
    for total in (160, 320, 480):
        book.sent(chunk("a", total))
    assert await marks.carrier_echo("a:160") and await marks.carrier_echo("a:320")  # the second is held
    assert not await marks.carrier_echo("a:320") and not await marks.carrier_echo("never:sent")
    assert sent == [played("a", 160)] and not book.settled("a")
    await marks.response_done({"type": "response.done", "response": {"id": "r1"}})  # a:480 still plays
    assert sent == [played("a", 160)] and not book.settled("a")
    assert await marks.carrier_echo("a:480")  # played to its end: out at once, after the held one
    assert sent == [played("a", 160), played("a", 320), played("a", 480)] and book.settled("a")
    # the echo came before response.done was handled: held, then out with it
    book.sent(chunk("b", 160))
    assert await marks.carrier_echo("b:160") and sent[-1] == played("a", 480)
    await marks.response_done({"response": {"id": "r2"}})  # not b's response (nor malformed events below)
    bad_events: list[object] = [{}, [], {"response": {"id": 5}}]
    for bad in bad_events:
        await marks.response_done(bad)
    assert sent[-1] == played("a", 480)
    assert book.item_of({"response_id": "r3", "item_id": "b"}) == "b"  # its delta handled after response.done
    await marks.response_done({"response": {"id": "r3"}})
    assert sent[-1] == played("b", 160)
    book.complete(["play"])  # a clip queued whole
    book.sent(chunk("play", 160))
    assert await marks.carrier_echo("play:160") and sent[-1] == played("play", 160)
    assert book.item_of({"response_id": "r4"}) == "r4" and book.item_of({}) == "item"


async def test_mark_publisher_publishes_the_held_echo_when_the_interval_has_passed() -> None:
    sent: list[CarrierMark] = []
    published = asyncio.Event()

    async def publish(mark: CarrierMark) -> None:
        sent.append(mark)
        published.set()

    marks = MarkPublisher(MarkBook(), publish, interval_s=0.01)
    for total in (160, 320, 480):
        await marks.echo(played("a", total))
    while played("a", 480) not in sent:  # no flush: the timer publishes the latest held echo
        published.clear()
        await asyncio.wait_for(published.wait(), 5)
    assert sent[0] == played("a", 160) and sent[-1] == played("a", 480)
    assert sorted(sent, key=lambda m: m.played_bytes) == sent and marks.published + marks.replaced == 3
    every = MarkPublisher(MarkBook(), publish, interval_s=0)
    for total in (640, 800):
        await every.echo(played("a", total))
    assert sent[-2:] == [played("a", 640), played("a", 800)]


async def test_browser_tokens() -> None:
    tokens = BrowserTokens("secret", ttl_s=60)
    token, expiry = tokens.mint(now=1000.0)
    assert expiry == 1060
    await tokens.check(token, now=1001.0)
    with pytest.raises(TokenError, match="already used"):
        await tokens.check(token, now=1002.0)
    late, _ = tokens.mint(now=1000.0)
    with pytest.raises(TokenError, match="expired"):
        await tokens.check(late, now=1061.0)
    other, _ = BrowserTokens("another secret").mint(now=1000.0)
    with pytest.raises(TokenError, match="signature"):
        await tokens.check(other, now=1001.0)
    for bad in (None, "", "a.b", "x" * 300):
        with pytest.raises(TokenError):
            await tokens.check(bad, now=1001.0)
    # replicas sharing SWITCHBOARD_TOKEN_SECRET accept each other's tokens
    shared, _ = BrowserTokens("secret").mint(now=1000.0)
    await tokens.check(shared, now=1001.0)


def test_public_url_and_disabled_signatures() -> None:
    assert public_url_for("https://a.example/x", "ws", "127.0.0.1:1", "/twilio/media") == "wss://a.example/x/twilio/media"
    assert public_url_for("http://a.example", "http", "h", "/twilio/voice", "q=1") == "http://a.example/twilio/voice?q=1"
    assert public_url_for(None, "ws", "127.0.0.1:9", "/twilio/media") == "ws://127.0.0.1:9/twilio/media"
    assert not TwilioSignatures(None).valid("https://x", {}, None)  # fails closed without an auth token
    assert not TwilioSignatures(None).valid("https://x", {}, "anything")
    assert TwilioSignatures(None, insecure_dev=True).valid("https://x", {}, None)
    assert not TwilioSignatures("token").valid("https://x", {}, None)
