"""The caller simulator: places a scenario's call through the gateway exactly as a carrier would.

:func:`run_scenario` (also ``switchboard call [--carrier twilio|telnyx|vonage|plivo]``):

1. follows ``call.*.started`` on the bus (``--carrier openai-sip``: dials the local model's SIP leg instead,
   :mod:`.sip`), then calls the carrier's webhook (``/<carrier>/voice``, signed as
   the carrier signs it when the simulator has the key, :mod:`.signing`) to learn the stream URL and
   parameters, opens the media WebSocket and sends the carrier's start with those parameters + ``run_id``
   (fresh) + ``caller``/``called`` (:mod:`.carriers`; Twilio without ``twiml`` connects to
   ``/twilio/media`` directly);
2. runs a 20 ms clock (``speed`` divides the period — tests only): each tick sends one μ-law frame (the
   current line's speech, else silence: real phones never stop sending), "plays" 20 ms of received agent
   audio and echoes the marks whose audio has played; a ``clear`` drops unplayed audio and echoes pending
   marks at once (Twilio, Telnyx) or confirms the clear (Vonage, Plivo); both directions go to a stereo WAV
   on that clock;
3. speaks each turn with espeak-ng (the scenario's voice) after the agent finished its turn (see
   :mod:`switchboard.caller.follower`), honouring ``barge_in_ms``, ``dtmf`` and ``hangup_after_ms``; when the
   agent answers a line by asking its previous question again word for word, or by asking the caller to say it
   again (:func:`~switchboard.caller.follower.asked_again`; it did not get the answer: audio lost to a reconnect
   or a crash, or misheard), says the line again, as a person would — at most
   :data:`MAX_REPEATS` times per line, each shown as ``(asked again: repeating)``;
4. when the gateway closes the stream and the TwiML had a ``<Redirect>``, requests it as Twilio does
   (https://www.twilio.com/docs/voice/twiml/connect: without an ``action``, Twilio moves on to the next verb when
   ``<Connect>`` ends): a ``<Connect><Stream>`` answer reconnects — a new WebSocket and ``start`` with the new
   parameters, the same ``CallSid`` — and anything else ends the call; caller frames due while no stream is
   open are lost, as on a real phone line;
5. after the call ended, checks ``expect`` against the log replayed from the RT and CALLS streams.

With ``answer`` the simulator is the callee of an outbound call instead: it does not call the gateway in step 1;
``answer(params)`` returns the line once the carrier connected the call (e.g. after ``POST /calls/outbound``),
with ``params`` (``run_id``) added to the stream's start.

``gateway_url`` may list several gateways, comma-separated: the simulator then plays the load balancer in front
of them too, sending each request (webhook, redirect, stream) to the first listed gateway whose ``/readyz``
answers 200 — so a redirect away from a draining gateway lands on another one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, WebSocketException

from shared.audio import PCMU
from shared.bus import Bus
from shared.carriers import twilio as tw
from shared.carriers.frames import CarrierProtocolError, PlayAudio, PlayMark
from shared.tasks import TaskSet
from shared.tts import synthesize_format_async
from switchboard.caller.carriers import CARRIERS, CallerLine, TwilioLine, dial
from switchboard.caller.client import TwilioCallerSocket, post_twiml, voice_form
from switchboard.caller.follower import CallFollower, asked_again
from switchboard.caller.playback import FRAME_BYTES, FRAME_MS, SILENCE_FRAME, PlaybackClock
from switchboard.caller.recording import StereoRecorder
from switchboard.caller.signing import CarrierKeys, twilio_signature
from switchboard.caller.sip import CARRIER as SIP_CARRIER
from switchboard.caller.sip import SipLine
from switchboard.scenario import Scenario, Turn, check_expectations, read_call_log

__all__ = ["CallResult", "CallerSimulator", "run_scenario"]

log = logging.getLogger("switchboard.caller")

MAX_REPEATS = 2
"""Times the caller says a line again when the agent asks its question again (module docstring, step 3)."""


@dataclass
class CallResult:
    """Outcome of one simulated call (from the log, except ``said`` which is what the simulator spoke)."""

    scenario: str
    call_id: str | None
    transcript: list[tuple[str, str]] = field(default_factory=list)
    """``(speaker, text)`` in log order: ``agent`` lines and what the model ``heard`` from the caller."""
    said: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    ended_by: str | None = None
    failures: list[str] = field(default_factory=list)
    wav: Path | None = None
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every expectation held (and the call could be placed)."""
        return not self.failures


class CallerSimulator:
    """One simulated call (see the module docstring). Use :func:`run_scenario` unless you need the parts."""

    def __init__(self, scenario: Scenario, *, gateway_url: str, bus: Bus, speed: float = 1.0,
                 wav: str | Path | None = None, twiml: bool = True, turn_timeout: float = 60.0,
                 out: Callable[[str], None] | None = None, headers: dict[str, str] | None = None,
                 carrier: str = "twilio", keys: CarrierKeys | None = None,
                 answer: Callable[[dict[str, str]], Awaitable[CallerLine]] | None = None,
                 sip_url: str | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        if carrier not in (*CARRIERS, SIP_CARRIER):
            raise ValueError(f"unknown carrier {carrier!r}; one of {', '.join((*CARRIERS, SIP_CARRIER))}")
        if carrier == SIP_CARRIER and not sip_url:
            raise ValueError("an openai-sip call needs sip_url (the local model's SIP leg)")
        self.sip_url = sip_url
        self.carrier = carrier
        self.answer = answer
        self.keys = keys or CarrierKeys()
        self.scenario = scenario
        self.gateway_urls = [u.strip().rstrip("/") for u in gateway_url.split(",") if u.strip()]
        if not self.gateway_urls:
            raise ValueError("no gateway URL")
        self.gateway_url = self.gateway_urls[0]
        self.redirect: str | None = None
        """The current TwiML's ``<Redirect>`` URL (requested when the gateway closes the stream)."""
        self.reconnects = 0
        """Streams reopened by following a ``<Redirect>``."""
        self._call_sid = "CA" + secrets.token_hex(16)
        self._hung_up = False
        self.bus = bus
        self.speed = speed
        self.wav = Path(wav) if wav else None
        self.twiml = twiml
        self.turn_timeout = turn_timeout
        self.out = out or (lambda line: None)
        self.headers = headers or {}
        self.run_id = secrets.token_hex(8)
        self.follower = CallFollower(bus, self.run_id, self._on_line)
        self.playback = PlaybackClock()
        self.recorder = StereoRecorder()
        self.speech: deque[bytes] = deque()
        self.socket: CallerLine | None = None
        self.closed = asyncio.Event()
        self._tasks = TaskSet("caller simulator", log)
        self._said: list[str] = []
        self._agent_lines: list[str] = []

    def _on_line(self, speaker: str, text: str) -> None:
        if speaker == "agent":
            self._agent_lines.append(text)
        self.out(f"{speaker:>6}: {text}")

    # --- the call ------------------------------------------------------------------------------------------

    async def run(self) -> CallResult:
        """Place the call, play the turns, check the expectations; never raises for a failed expectation."""
        result = CallResult(self.scenario.name, None)
        started = time.monotonic()
        await self.follower.start()
        try:
            await self._connect()
            await asyncio.wait_for(self.follower.found.wait(), 15)
            result.call_id = self.follower.call_id
            self.out(f"  call: {result.call_id}")
            await self._first_turn()
            await self._turns()
            await self._finish()
        except (TimeoutError, OSError, WebSocketException, httpx.HTTPError, ValueError) as exc:
            result.failures.append(f"call failed: {type(exc).__name__}: {exc}")
        finally:
            await self._stop_tasks()
        result.duration_ms = (time.monotonic() - started) * 1000.0
        result.said = list(self._said)
        if self.wav is not None:
            result.wav = self.recorder.write(self.wav)
        try:
            if result.call_id is not None:
                await self._check(result)
        finally:
            await self.follower.stop()
        return result

    async def _connect(self) -> None:
        caller = self.scenario.caller
        if self.answer is not None:
            self.socket = await self.answer({"run_id": self.run_id})
        elif self.carrier == "twilio":
            if self.twiml:
                document = await self._post_twiml(await self._route(self.gateway_url + "/twilio/voice"),
                                                  {**self._form(), "CallStatus": "ringing"})
                url, params = tw.parse_twiml(document)
                self.redirect = tw.parse_redirect(document)
            else:
                scheme, rest = self.gateway_url.split("://", 1)
                url = f"{'wss' if scheme == 'https' else 'ws'}://{rest}/twilio/media"
                params = {"caller": caller.from_, "called": caller.to}
            await self._open_stream(url, params)
        elif self.carrier == SIP_CARRIER:
            assert self.sip_url is not None
            self.socket = await SipLine.dial(self.sip_url, from_=caller.from_, to=caller.to,
                                             params={"run_id": self.run_id})
        else:
            self.socket = await dial(self.carrier, self.gateway_url, from_=caller.from_, to=caller.to,
                                     params={"run_id": self.run_id}, keys=self.keys,
                                     ws_headers=self.headers or None)
        self._spawn(self._clock())
        self._spawn(self._reader())

    def _form(self) -> dict[str, str]:
        caller = self.scenario.caller
        return voice_form(from_=caller.from_, to=caller.to, call_sid=self._call_sid)

    async def _post_twiml(self, url: str, form: dict[str, str]) -> str:
        """POST a Twilio webhook (the voice URL or a ``<Redirect>``), signed when the simulator has the key."""
        token = self.keys.twilio_auth_token
        headers = {"X-Twilio-Signature": twilio_signature(token, url, form)} if token else {}
        return await post_twiml(url, form, headers=headers)

    async def _open_stream(self, url: str, params: dict[str, str]) -> None:
        """Open a Twilio media stream to ``url`` and send ``start`` with ``params`` (+ ``run_id``, numbers)."""
        caller = self.scenario.caller
        params = {**params, "run_id": self.run_id}
        params.setdefault("caller", caller.from_)
        params.setdefault("called", caller.to)
        url = await self._route(url)
        headers = self.headers
        if not headers and self.keys.twilio_auth_token:
            headers = {"X-Twilio-Signature": twilio_signature(self.keys.twilio_auth_token, url, {})}
        socket = await TwilioCallerSocket.connect(url, headers=headers)
        socket.call_sid = self._call_sid
        await socket.start(params)
        self.socket = TwilioLine(socket)

    async def _route(self, url: str) -> str:
        """``url`` with its gateway replaced by the first listed gateway that is ready (the load balancer's
        job; unchanged with one gateway or when the URL names none of them)."""
        if len(self.gateway_urls) < 2:
            return url
        bases = {u: u.replace("http", "ws", 1) for u in self.gateway_urls}
        for http_base, ws_base in bases.items():
            for base in (http_base, ws_base):
                if url.startswith(base + "/"):
                    path = url[len(base):]
                    async with httpx.AsyncClient(timeout=2.0) as client:
                        for candidate in self.gateway_urls:
                            with contextlib.suppress(httpx.HTTPError):
                                if (await client.get(candidate + "/readyz")).status_code == 200:
                                    target = candidate if base == http_base else bases[candidate]
                                    return target + path
                    return url
        return url

    async def _follow_redirect(self) -> bool:
        """The stream closed: request the ``<Redirect>`` as Twilio does; True when it reconnected the call."""
        if self.redirect is None or self._hung_up:
            return False
        try:
            document = await self._post_twiml(await self._route(self.redirect), self._form())
            url, params = tw.parse_twiml(document)
        except (httpx.HTTPError, ValueError) as exc:  # <Hangup/>, <Dial>, or no answer: the call is over
            log.info("redirect ends the call: %s", exc)
            return False
        self.redirect = tw.parse_redirect(document)
        for name in self.playback.clear():  # what the old stream had not played is gone with it
            log.debug("dropped mark %s with the old stream", name)
        await self._open_stream(url, params)
        self.reconnects += 1
        self.out("  (stream reconnected through <Redirect>)")
        return True

    def _spawn(self, coro: Any) -> None:
        self._tasks.spawn(coro)

    async def _stop_tasks(self) -> None:
        for task in self._tasks.cancel():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.socket is not None:
            with contextlib.suppress(Exception):
                await self.socket.ws.close()

    # --- clock and socket reader ----------------------------------------------------------------------------

    async def _clock(self) -> None:
        """Every 20 ms / speed: send one caller frame, play 20 ms of agent audio, echo the marks now due."""
        assert self.socket is not None
        period = FRAME_MS / 1000.0 / self.speed
        next_at = time.monotonic()
        while not self.closed.is_set():
            frame = self.speech.popleft() if self.speech else SILENCE_FRAME
            tick = self.playback.tick()
            self.recorder.add(frame, tick.played)
            try:
                await self.socket.media(frame)
                for name in tick.marks:
                    await self.socket.mark(name)
            except ConnectionClosed:
                if self.redirect is None or self._hung_up:
                    self.closed.set()
                    return
                # the reader follows the <Redirect>; frames due meanwhile are lost, as on a phone line
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:  # far behind (a stalled machine): do not burst to catch up
                next_at = time.monotonic()

    async def _reader(self) -> None:
        """Handle agent audio (buffer for playback), marks (echo when played) and clears; follow the TwiML
        ``<Redirect>`` when the gateway closes a Twilio stream."""
        assert self.socket is not None
        try:
            while True:
                with contextlib.suppress(ConnectionClosed):
                    await self._read_stream(self.socket)
                try:
                    if await self._follow_redirect():
                        continue
                except (OSError, WebSocketException) as exc:
                    log.warning("could not reconnect the stream: %s", exc)
                return
        except CarrierProtocolError as exc:
            log.error("gateway sent an invalid message: %s", exc)
        finally:
            self.closed.set()

    async def _read_stream(self, line: CallerLine) -> None:
        """Read one stream until the gateway closes it (``ConnectionClosed``)."""
        while True:
            message = await line.receive()
            if isinstance(message, PlayAudio):
                self.playback.add_audio(message.audio)
            elif isinstance(message, PlayMark):
                for name in self.playback.add_mark(message.name):
                    await line.mark(name)
            else:
                pending = self.playback.clear()
                if line.echoes_marks_on_clear:
                    for name in pending:
                        await line.mark(name)
                else:
                    await line.cleared()

    # --- turns -----------------------------------------------------------------------------------------------

    def _turn_over(self, baseline_done: int) -> bool:
        f = self.follower
        return f.responses_done > baseline_done and f.settled and self.playback.idle

    async def _wait(self, predicate: Callable[[], bool], what: str) -> None:
        """Poll ``predicate`` (bus events or the 20 ms clock change it) until true or the call ends."""
        deadline = time.monotonic() + self.turn_timeout
        while not predicate():
            if self.closed.is_set():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} within {self.turn_timeout:.0f}s")
            await self.follower.wait_changed(0.02)

    async def _first_turn(self) -> None:
        """Let the agent greet: wait for a greeting to start (up to 3 s after any audio the session played
        itself, such as the agent's disclosure, has finished playing) and to finish (or, when the first turn has
        ``barge_in_ms``, until that much of it has played)."""
        greet_deadline = time.monotonic() + 3.0
        while self.follower.activity == 0 and time.monotonic() < greet_deadline and not self.closed.is_set():
            if not self.playback.idle:  # the disclosure plays before the greeting is even requested
                greet_deadline = time.monotonic() + 3.0
            await self.follower.wait_changed(0.05)
        if not self.follower.activity:
            return
        first = self.scenario.turns[0] if self.scenario.turns else None
        if first is not None and first.barge_in_ms is not None:  # interrupt the greeting itself
            await self._wait(self._reply_played(0.0, first.barge_in_ms), "no greeting to barge in on")
        else:
            await self._wait(lambda: self._turn_over(0), "the agent did not finish its greeting")

    def _reply_played(self, since_ms: float, ms: float) -> Callable[[], bool]:
        """A predicate: at least ``ms`` of agent audio played on our clock since ``since_ms``."""
        return lambda: self.playback.played_ms_total - since_ms >= ms

    def _turn_finished(self, baseline_done: int) -> Callable[[], bool]:
        return lambda: self._turn_over(baseline_done)

    async def _turns(self) -> None:
        turns = self.scenario.turns
        index, repeats = 0, 0
        while index < len(turns):
            turn = turns[index]
            if self.closed.is_set():
                return
            baseline_done = self.follower.responses_done
            asked, since = (self._agent_lines[-1] if self._agent_lines else None), len(self._agent_lines)
            await self._act(turn)
            reply_start = self.playback.played_ms_total
            if turn.hangup_after_ms is not None:
                await self._wait(self._reply_played(reply_start, turn.hangup_after_ms), "no agent reply to hang up on")
                await self._hang_up()
                return
            following = turns[index + 1] if index + 1 < len(turns) else None
            if following is not None and following.barge_in_ms is not None:
                await self._wait(self._reply_played(reply_start, following.barge_in_ms),
                                 "no agent reply to barge in on")
            else:
                await self._wait(self._turn_finished(baseline_done), "the agent did not finish its turn")
                if turn.say is not None and repeats < MAX_REPEATS and asked_again(asked, self._agent_lines[since:]):
                    repeats += 1
                    self.out("caller: (asked again: repeating)")
                    continue
            index, repeats = index + 1, 0

    async def _act(self, turn: Turn) -> None:
        assert self.socket is not None
        if turn.dtmf is not None:
            self.out(f"caller: [dtmf {turn.dtmf}]")
            self._said.append(f"[dtmf {turn.dtmf}]")
            for digit in turn.dtmf:
                await self.socket.dtmf(digit)
            return
        if turn.say is None:
            return
        audio = await synthesize_format_async(turn.say, PCMU, voice=self.scenario.caller.voice)
        self.out(f"caller: {turn.say}")
        self._said.append(turn.say)
        frames = [audio[i:i + FRAME_BYTES] for i in range(0, len(audio), FRAME_BYTES)]
        if frames and len(frames[-1]) < FRAME_BYTES:
            frames[-1] = frames[-1] + SILENCE_FRAME[len(frames[-1]):]
        self.speech.extend(frames)
        await self._wait(lambda: not self.speech, "the caller's line could not be sent")

    async def _hang_up(self) -> None:
        self._hung_up = True
        if self.socket is not None and not self.closed.is_set():
            with contextlib.suppress(ConnectionClosed):
                await self.socket.stop()
        self.closed.set()

    async def _finish(self) -> None:
        """After the last turn: give the agent time to end the call, else hang up as the caller."""
        deadline = time.monotonic() + min(self.turn_timeout, 15.0)
        while not self.closed.is_set() and time.monotonic() < deadline:
            await self.follower.wait_changed(0.05)
        if not self.closed.is_set():
            await self._hang_up()

    async def _check(self, result: CallResult) -> None:
        """Wait (bounded) for ``call.<id>.ended`` to be logged, then check ``expect`` against the log."""
        assert result.call_id is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.follower.ended.wait(), 10)
        call_log = await read_call_log(self.bus, result.call_id)
        for _ in range(12):  # the session's summary (its last events) may still be in flight to the stream
            if call_log.ended() is not None and any(rest == "session.summary" for rest, _ in call_log.calls):
                break
            await asyncio.sleep(0.25)
            call_log = await read_call_log(self.bus, result.call_id)
        result.tool_calls = [{"name": c["name"], "args": c["args"]} for c in call_log.tool_calls()]
        result.transcript = [("agent", line) for line in call_log.agent_transcript()]
        result.transcript += [("heard", line) for line in call_log.caller_transcript()]
        result.ended_by = call_log.ended_by()
        result.failures.extend(check_expectations(self.scenario.expect, call_log))


async def run_scenario(scenario: Scenario, *, gateway_url: str, nats_url: str, speed: float = 1.0,
                       wav: str | Path | None = None, twiml: bool = True, turn_timeout: float = 60.0,
                       out: Callable[[str], None] | None = None,
                       headers: dict[str, str] | None = None, carrier: str = "twilio",
                       keys: CarrierKeys | None = None,
                       answer: Callable[[dict[str, str]], Awaitable[CallerLine]] | None = None,
                       sip_url: str | None = None) -> CallResult:
    """Place ``scenario``'s call through the gateway at ``gateway_url`` and follow it on NATS at ``nats_url``.

    ``speed`` > 1 paces audio faster than real time (tests only); ``wav`` writes the stereo recording;
    ``twiml`` fetches ``POST /twilio/voice`` first; ``out`` receives printable lines (what both sides said);
    ``headers`` are sent on the Twilio upgrade when ``twiml`` is off (e.g. ``X-Twilio-Signature``);
    ``carrier`` is the carrier to speak and ``keys`` what to sign its webhooks with; ``answer``: the simulator is
    the callee of an outbound call (module docstring); ``sip_url`` is the local model's SIP leg for
    ``carrier="openai-sip"`` (:mod:`switchboard.caller.sip`: the call reaches the gateway as OpenAI's webhook, not
    through ``gateway_url``).

    Returns:
        A :class:`CallResult`; ``ok`` is false when the call could not be placed or an expectation failed.

    Raises:
        shared.errors.BusError: NATS is unreachable.
    """
    bus = await Bus.connect(nats_url, name="switchboard-caller", source="caller", connect_timeout=10)
    try:
        return await CallerSimulator(scenario, gateway_url=gateway_url, bus=bus, speed=speed, wav=wav, twiml=twiml,
                                     turn_timeout=turn_timeout, out=out, headers=headers, carrier=carrier,
                                     keys=keys, answer=answer, sip_url=sip_url).run()
    finally:
        await bus.close()
