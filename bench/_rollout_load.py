"""The rollout drill's echo callers: Twilio Media Streams calls that follow ``<Redirect>`` as Twilio does and
measure, from the caller's side, the longest stretch of silence in the agent's audio.

Each call posts the voice webhook, opens the ``<Connect><Stream>`` and sends a 20 ms μ-law frame every 20 ms
(``agent`` ``echo``: the local model repeats the caller's audio, so agent audio flows all call long). When the
gateway closes the stream before the caller hangs up, the caller requests the TwiML's ``<Redirect>`` — Twilio
moves on to the next verb when ``<Connect>`` ends (https://www.twilio.com/docs/voice/twiml/connect) — and a
``<Connect><Stream>`` answer reconnects the same ``CallSid`` on a new stream; frames due meanwhile are lost, as on
a phone line. Several gateways may be given: :class:`Balancer` plays the load balancer in front of them.

The gap (:class:`PlayoutGaps`): agent audio is played out as it arrives, in real time; a frame arriving after
everything received so far has played ends a silence of ``arrival − end of playout``. The longest such silence
between the first agent audio and the caller's hang-up (a silence still running then included) is the call's
caller-audible gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass, field

import httpx
from websockets.exceptions import ConnectionClosed

from shared.carriers import twilio as tw
from switchboard.caller.client import TwilioCallerSocket, post_twiml, voice_form

__all__ = ["Balancer", "EchoCall", "PlayoutGaps", "place_echo_calls"]

FRAME_S = 0.020
"""One Twilio media frame: 20 ms of μ-law 8 kHz."""
FRAME_BYTES = 160


@dataclass
class PlayoutGaps:
    """Silences in the agent audio as the caller hears it (monotonic seconds; 8 kHz μ-law, 1 byte a sample)."""

    played_until: float | None = None
    """When the audio received so far has finished playing (None: no agent audio yet)."""
    max_gap_s: float = 0.0
    max_gap_at: float | None = None
    """When (monotonic s) the longest silence ended."""

    def audio(self, now: float, nbytes: int) -> None:
        """``nbytes`` of agent audio arrived at ``now``."""
        if self.played_until is not None and now > self.played_until:
            gap = now - self.played_until
            if gap > self.max_gap_s:
                self.max_gap_s, self.max_gap_at = gap, now
        self.played_until = max(self.played_until or now, now) + nbytes / 8000.0

    def end(self, now: float) -> None:
        """The caller hangs up at ``now``: a silence still running counts too (agent audio that never came back)."""
        self.audio(now, 0)


@dataclass
class EchoCall:
    """One echo call as its caller saw it."""

    run_id: str = field(default_factory=lambda: secrets.token_hex(8))
    call_sid: str = field(default_factory=lambda: "CA" + secrets.token_hex(16))
    frames_sent: int = 0
    frames_lost: int = 0
    """Frames due while no stream was open (between a close and the reconnect)."""
    agent_bytes: int = 0
    reconnects: int = 0
    reconnect_s: list[float] = field(default_factory=list)
    """Per reconnect: from the stream's close to ``start`` sent on the new one (s)."""
    hung_up: bool = False
    """The caller sent ``stop`` after the whole call: it was not cut off."""
    error: str | None = None
    started: float = 0.0
    ended: float = 0.0
    gaps: PlayoutGaps = field(default_factory=PlayoutGaps)

    @property
    def seconds(self) -> float:
        """Call length as placed (s)."""
        return max(0.0, self.ended - self.started)


PROBE_TIMEOUT_S = 2.0
"""A health probe not answered this long fails (a load balancer's health-check timeout)."""


class Balancer:
    """The load balancer in front of the gateways: probes each ``/readyz`` every ``interval`` s (as a load
    balancer's health check does) and routes each request to the first gateway that answered 200 last time, so a
    redirect away from a draining gateway lands on another one without waiting for a probe. Use as
    ``async with``."""

    def __init__(self, gateways: list[str], interval: float = 0.5) -> None:
        if not gateways:
            raise ValueError("no gateway")
        self.gateways = gateways
        self.interval = interval
        self.healthy = list(gateways)
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Balancer:
        self._client = httpx.AsyncClient(timeout=PROBE_TIMEOUT_S)
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    async def _probe(self, base: str) -> bool:
        assert self._client is not None
        try:
            return (await self._client.get(base + "/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def _run(self) -> None:
        while True:
            up = await asyncio.gather(*(self._probe(g) for g in self.gateways))
            self.healthy = [g for g, ok in zip(self.gateways, up, strict=True) if ok]
            await asyncio.sleep(self.interval)

    async def post_twiml(self, url: str, form: dict[str, str]) -> str:
        """POST a TwiML webhook through the balancer: to the healthy gateways first, then the others. A gateway that
        refuses the connection (it died since the last probe) is taken out of rotation and the next one is tried,
        as a load balancer's passive health check does (e.g. nginx ``proxy_next_upstream error``); one that answers
        is put back in rotation.

        Raises:
            httpx.HTTPError: every gateway refused the connection, or an HTTP error.
        """
        error: httpx.ConnectError | None = None
        for gateway in self.healthy + [g for g in self.gateways if g not in self.healthy]:
            try:
                document = await post_twiml(self._to(url, gateway), form)
            except httpx.ConnectError as exc:
                self.healthy = [g for g in self.healthy if g != gateway]
                error = exc
                continue
            if gateway not in self.healthy:
                self.healthy = [gateway, *self.healthy]
            return document
        assert error is not None
        raise error

    def route(self, url: str) -> str:
        """``url`` (http or ws) with its gateway replaced by the first healthy one (unchanged when it names none of
        the gateways or none is healthy)."""
        return self._to(url, self.healthy[0]) if self.healthy else url

    def _to(self, url: str, target: str) -> str:
        """``url`` with its gateway (http or ws) replaced by ``target``; unchanged when it names none."""
        for base in self.gateways:
            for scheme_base, to in ((base, target), (base.replace("http", "ws", 1), target.replace("http", "ws", 1))):
                if url.startswith(scheme_base + "/"):
                    return to + url[len(scheme_base):]
        return url


class _Caller:
    def __init__(self, call: EchoCall, balancer: Balancer, seconds: float, frames: list[bytes]) -> None:
        self.call = call
        self.balancer = balancer
        self.ticks = int(seconds / FRAME_S)
        self.frames = frames
        self.tick = 0
        self.reconnected_from: float | None = None

    def _form(self) -> dict[str, str]:
        return voice_form(from_="+15550100" + self.call.run_id[:4].translate(str.maketrans("abcdef", "012345")),
                          to="+15550199999", call_sid=self.call.call_sid)

    async def _read(self, sock: TwilioCallerSocket) -> None:
        while True:
            msg = await sock.receive()
            if isinstance(msg, tw.OutboundMedia):
                audio = tw.decode_payload(msg.media.payload)
                self.call.agent_bytes += len(audio)
                if not self.call.hung_up:
                    self.call.gaps.audio(time.monotonic(), len(audio))
            elif isinstance(msg, tw.Mark):
                await sock.mark(msg.mark.name)

    async def _stream(self, url: str, params: dict[str, str]) -> bool:
        """One stream until the caller hangs up (True) or the gateway closes it (False)."""
        sock = await TwilioCallerSocket.connect(self.balancer.route(url))
        sock.call_sid = self.call.call_sid
        await sock.start({**params, "agent": "echo", "run_id": self.call.run_id})
        if self.reconnected_from is not None:
            self.call.reconnect_s.append(time.monotonic() - self.reconnected_from)
            self.reconnected_from = None
        reader = asyncio.create_task(self._read(sock))
        try:
            while self.tick < self.ticks:
                if reader.done():
                    failure = reader.exception()
                    if failure is not None and not isinstance(failure, ConnectionClosed):
                        # what Twilio would not accept either: the call is not followed further
                        self.call.error = f"the gateway sent an invalid frame: {type(failure).__name__}: {failure}"
                        raise failure
                    return False
                try:
                    await sock.media(self.frames[self.tick % len(self.frames)])
                except ConnectionClosed:
                    return False
                self.call.frames_sent += 1
                self.tick += 1
                await asyncio.sleep(max(0.0, self.call.started + self.tick * FRAME_S - time.monotonic()))
            self.call.gaps.end(time.monotonic())
            self.call.hung_up = True
            with contextlib.suppress(ConnectionClosed):
                await sock.stop()
            return True
        finally:
            with contextlib.suppress(TimeoutError, ConnectionClosed, tw.TwilioProtocolError):
                await asyncio.wait_for(asyncio.shield(reader), 2)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, tw.TwilioProtocolError):
                await reader
            with contextlib.suppress(Exception):
                await sock.ws.close()

    async def run(self) -> None:
        call = self.call
        voice = self.balancer.route(self.balancer.gateways[0] + "/twilio/voice")
        document = await self.balancer.post_twiml(voice, {**self._form(), "CallStatus": "ringing"})
        url, params = tw.parse_twiml(document)
        redirect = tw.parse_redirect(document)
        call.started = time.monotonic()
        while not await self._stream(url, params):
            closed = time.monotonic()
            if redirect is None:
                call.error = "the gateway closed the stream and the TwiML has no <Redirect>"
                return
            try:
                document = await self.balancer.post_twiml(redirect, self._form())
                url, params = tw.parse_twiml(document)
            except (httpx.HTTPError, ValueError) as exc:
                call.error = f"the <Redirect> ended the call: {type(exc).__name__}: {exc}"[:200]
                return
            redirect = tw.parse_redirect(document)
            call.reconnects += 1
            self.reconnected_from = closed
            due = int((time.monotonic() - call.started) / FRAME_S)
            if due > self.tick:
                call.frames_lost += due - self.tick
                self.tick = due


async def place_echo_calls(balancer: Balancer, calls: list[EchoCall], seconds: float, frames: list[bytes], *,
                           stagger: float = 0.05) -> list[EchoCall]:
    """Place ``calls`` (``stagger`` s apart), each ``seconds`` long, through ``balancer``; returns when all ended.

    A call that could not be placed or was cut off has :attr:`EchoCall.error` set; none raises.
    """

    async def one(call: EchoCall, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await _Caller(call, balancer, seconds, frames).run()
        except Exception as exc:  # recorded: one call's failure is a figure, not the end of the drill
            call.error = call.error or f"{type(exc).__name__}: {exc}"[:200]
        finally:
            call.ended = time.monotonic()

    await asyncio.gather(*(one(c, i * stagger) for i, c in enumerate(calls)))
    return calls
