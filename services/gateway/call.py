"""One call's bridge between a carrier socket and the bus (docs/architecture.md; docs/events.asyncapi.yaml).

Inbound: caller audio → ``call.<id>.audio.in`` (:mod:`.caller_audio`: batched, held until the session listens, kept
for replay); keypad digits → ``call.<id>.carrier.dtmf``; mark echoes → ``call.<id>.carrier.mark`` (played ones at a
bounded rate: :class:`~services.gateway.outbound.MarkPublisher`). Outbound: ``rt.<id>.server.response.output_audio
.delta`` (a core subscription on the logged Realtime event; duplicates dropped by seq in the bus) → carrier audio +
a mark per chunk, converted only when the model's output format (from ``session.updated``) differs from the
carrier's; commands ``call.<id>.command.{clear,hangup,transfer,play,replay,dtmf}``. Lifecycle:
``call.<id>.started`` when the carrier's start arrives, ``call.<id>.ended`` exactly once; the first reason wins.
With ``idle_s`` set, a watchdog ends the call with ``carrier_silent`` (and closes the socket, 1000) once no inbound
media frame arrived for ``idle_s`` seconds (``SWITCHBOARD_CARRIER_IDLE_S``): it samples a frame counter every
``min(5, idle_s / 4)`` s, so nothing is paid per frame and the call ends at most ``idle_s + 5`` s after the last.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from nats.aio.subscription import Subscription
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.gateway.caller_audio import CallerAudio
from services.gateway.callstart import CallStart, CarrierSink
from services.gateway.handoff import CallerLevel
from services.gateway.outbound import MAX_CHUNK_BYTES, AudioChunk, Control, MarkBook, MarkPublisher, OutboundQueue
from services.gateway.resume import KEEP_MS, SESSION_LOST_LINE, owner_lost, resume_seq
from shared import metrics, rollout, subjects
from shared.audio import AudioFormat, Converter, convert, ms_for_bytes, parse_format
from shared.bus import Bus, Envelope, Headers
from shared.config import get_settings
from shared.contracts import (
    CallEnded,
    CallStarted,
    CarrierDetached,
    CarrierDtmf,
    CarrierError,
    CarrierResumed,
    CommandCapture,
    CommandClear,
    CommandDtmf,
    CommandHangup,
    CommandPlay,
    CommandReplay,
    CommandTransfer,
    ContractError,
    KeypadDigit,
    parse_command,
)
from shared.endreasons import EndReason
from shared.telemetry import get_tracer
from shared.tts import synthesize_format_async

__all__ = ["KEEP_MS", "SESSION_LOST_LINE", "CallBridge", "CallStart", "CarrierSink"]

log = logging.getLogger("services.gateway.call")

_CLOSE_NORMAL = 1000



class CallBridge:
    """The bus side of one call. Create, :meth:`open`, feed carrier events, :meth:`end` exactly once.

    ``max_outbound_chunks`` bounds the queue toward the carrier socket (see :mod:`.outbound`);
    ``audio_in_ms`` is the caller audio per ``call.<id>.audio.in`` message (ms, ``SWITCHBOARD_GATEWAY_AUDIO_IN_MS``);
    ``idle_s`` (s, None = no watchdog) ends a call whose carrier sends no media (see the module docstring).
    """

    def __init__(self, bus: Bus, sink: CarrierSink, start: CallStart, *, max_outbound_chunks: int = 1000,
                 audio_in_ms: int = 40, idle_s: float | None = None, session_hold_s: float = 2.0,
                 on_control: Callable[[object], Awaitable[object]] | None = None,
                 call_id: str | None = None, resumed: bool = False, session_lost_s: float | None = None) -> None:
        parse_format(start.audio_format)
        self.on_control = on_control
        """Called with ``command.transfer`` before the stream closes, ``command.hangup`` after ``ended`` and
        ``command.dtmf`` at once (:mod:`services.gateway.call_control`); None: the stream just closes."""
        self.bus = bus
        self.sink = sink
        self.start = start
        self.call_id = subjects.validate_call_id(call_id) if call_id else subjects.new_call_id()
        self.resumed = resumed
        """The carrier reconnected a call already running (another gateway's stream closed with a resume
        marker): :meth:`open` publishes ``call.<id>.carrier.resumed`` instead of ``started``."""
        if resumed:
            session_hold_s = 0.0  # the session already listens
        self.queue = OutboundQueue(max_outbound_chunks)
        self.marks = MarkBook()
        self.echoes = MarkPublisher(self.marks, lambda m: self.bus.publish_event(self._mark_subject, m.encode(),
                                                                                 call_id=self.call_id))
        self.ended = asyncio.Event()
        self.end_reason: str | None = None
        self._carrier_fmt = start.audio_format
        self._converter: Converter | None = None
        self._item_bytes: dict[str, int] = {}
        self._media_frames = 0
        self.idle_s = idle_s
        self._watchdog: asyncio.Task[None] | None = None
        self._audio_out_bytes = 0
        self._started_mono = time.monotonic()
        self._subs: list[Subscription] = []
        self._writer: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._span: trace.Span | None = None
        self._ctx_token: object | None = None
        self._mark_subject = subjects.carrier_mark(self.call_id)
        self.caller_audio = CallerAudio(bus, self.call_id, start.audio_format, audio_in_ms=audio_in_ms,
                                        session_hold_s=session_hold_s)
        self._keypad_capture = False
        """``command.capture``: keypad digits go to ``call.<id>.keypad`` (core NATS) instead of the stream."""
        self._epoch = 0
        """The highest owner epoch seen on the call's commands and audio."""
        self.session_lost_s = session_lost_s
        self._owner_watch: asyncio.Task[None] | None = None
        self.level: CallerLevel | None = None
        """Set while a drain looks for a quiet moment to detach (:mod:`.handoff`)."""

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Start the call's root span, subscribe to its outbound subjects, publish ``call.<id>.started``.

        The span context is attached to the calling task, so everything that task publishes for the call
        (audio, dtmf, marks, ended) joins the call's trace.
        """
        cid = self.call_id
        self._span = get_tracer("switchboard.gateway").start_span(
            f"{self.start.carrier} call", kind=SpanKind.SERVER,
            attributes={"switchboard.call_id": cid, "switchboard.carrier": self.start.carrier,
                        "switchboard.agent": self.start.agent, "switchboard.audio_format": self.start.audio_format})
        self._ctx_token = otel_context.attach(trace.set_span_in_context(self._span))
        self._subs = [
            await self.bus.subscribe(subjects.rt_server(cid, "response.output_audio.delta"), self._on_delta),
            await self.bus.subscribe(subjects.rt_server(cid, "response.done"),
                                     lambda env: self.echoes.response_done(env.json())),
            await self.bus.subscribe(subjects.rt_server(cid, "session.updated"), self._on_session_updated),
            await self.bus.subscribe(subjects.command(cid, "*"), self._on_command),
        ]
        self._writer = asyncio.create_task(self._write_loop(), name=f"gateway-writer-{cid}")
        if self.idle_s is not None:
            self._watchdog = asyncio.create_task(self._watch_media(self.idle_s), name=f"gateway-idle-{cid}")
        if self.session_lost_s:
            self._owner_watch = asyncio.create_task(self._watch_owner(self.session_lost_s),
                                                    name=f"gateway-owner-{cid}")
        s = self.start
        if self.resumed:
            gap_ms = await resume_seq(self.bus, cid)
            resumed = CarrierResumed(carrier=s.carrier, carrier_call_id=s.carrier_call_id, stream_id=s.stream_id,
                                     gap_ms=gap_ms)
            await self.bus.publish_event(subjects.carrier_resumed(cid), resumed.encode(), call_id=cid)
            log.info("call %s resumed (%s %s)", cid, s.carrier, s.carrier_call_id)
            return
        version = s.agent_version or rollout.choose(get_settings().agent.parent, s.agent, s.from_ or cid).version
        started = CallStarted(
            call_id=cid, carrier=s.carrier, agent=s.agent, agent_version=version, audio_format=s.audio_format,
            from_=s.from_, to=s.to, carrier_call_id=s.carrier_call_id, stream_id=s.stream_id,
            custom_parameters=s.custom_parameters, started_at=datetime.now(UTC).isoformat())
        await self.bus.publish_event(subjects.call_started(cid), started.encode(), call_id=cid)
        log.info("call %s started (%s %s)", cid, s.carrier, s.carrier_call_id)

    @property
    def resumable(self) -> bool:
        """True when the carrier will reconnect this call elsewhere if its stream closes: a Twilio stream
        opened by our TwiML, which carries the call id and a ``<Redirect>`` (``services.gateway.twilio``)."""
        return self.start.carrier == "twilio" and self.start.custom_parameters.get("call_id") == self.call_id

    async def end(self, reason: str, **detail: Any) -> None:
        """Publish ``call.<id>.ended`` once (later calls do nothing), unsubscribe and stop the writer.

        ``reason`` is one of :class:`shared.endreasons.EndReason`. ``detail`` holds the optional fields of
        :class:`~shared.contracts.CallEnded` (``error``, ``close_code``, ``transfer_to``, ``idle_s``); another key
        raises ``ValueError`` before anything is published. A ``protocol_error`` first publishes
        ``call.<id>.carrier.error`` (``code``: the close code when the WebSocket layer refused a frame, else
        ``invalid_frame``; ``reason``: the error).
        """
        if self.ended.is_set():
            return
        ended = CallEnded(reason=reason, carrier=self.start.carrier, carrier_call_id=self.start.carrier_call_id,
                          stream_id=self.start.stream_id, **detail)
        self.end_reason = reason
        await self._stop()
        ended = dataclasses.replace(
            ended, duration_ms=round((time.monotonic() - self._started_mono) * 1000.0, 1),
            audio_in_ms=round(ms_for_bytes(self._carrier_fmt, self.caller_audio.bytes_in), 1),
            audio_out_ms=round(ms_for_bytes(self._carrier_fmt, self._audio_out_bytes), 1),
            outbound_dropped=self.queue.dropped)
        if reason == "protocol_error":
            error = CarrierError(code=ended.close_code or "invalid_frame", reason=ended.error or reason)
            await self._publish_last(subjects.carrier_error(self.call_id), error.encode())
        await self._publish_last(subjects.call_ended(self.call_id), ended.encode())
        self._close_span(reason, ended.error)
        log.info("call %s ended: %s", self.call_id, reason)

    async def detach(self, reason: str) -> None:
        """Leave the call running without this gateway (it is stopping): publish ``call.<id>.carrier.detached``
        (``reason``, ``stream_id``) instead of ``ended``, then close the carrier socket with 1000 and reason
        ``resume`` — the resume marker; Twilio then requests the TwiML ``<Redirect>`` and reconnects the same call
        id through another gateway. Only for :attr:`resumable` calls; does nothing once the call ended here."""
        if self.ended.is_set():
            return
        self.end_reason = "detached"
        detached = CarrierDetached(reason=reason, stream_id=self.start.stream_id)
        await self._stop()
        await self._publish_last(subjects.carrier_detached(self.call_id), detached.encode())
        self._close_span("detached", None)
        with contextlib.suppress(Exception):
            await self.sink.close(_CLOSE_NORMAL, "resume")
        log.info("call %s detached (%s): the carrier reconnects elsewhere", self.call_id, reason)

    async def _stop(self) -> None:
        """Stop this bridge: the caller's last audio goes out, unsubscribe, stop the tasks."""
        self.ended.set()
        try:  # the caller's last words go out before ended
            await self.caller_audio.flush()
        except Exception:
            log.exception("call %s: could not publish the last audio", self.call_id)
        try:  # and the played position the held mark echoes carry
            await self.echoes.close()
        except Exception:
            log.exception("call %s: could not publish the last mark echoes", self.call_id)
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for task in (self._writer, self._watchdog, self._owner_watch):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _publish_last(self, subject: str, body: dict[str, Any]) -> None:
        """Publish one of this gateway's last messages for the call (logged; a failure is logged, not raised)."""
        try:
            await self.bus.publish_event(subject, body, call_id=self.call_id)
        except Exception:
            log.exception("call %s: could not publish %s", self.call_id, subject)

    def _close_span(self, reason: str, error: str | None) -> None:
        if self._span is not None:
            self._span.set_attribute("switchboard.end_reason", reason)
            if reason == "protocol_error":
                self._span.set_status(Status(StatusCode.ERROR, error or reason))
            self._span.end()
        self.bus.forget_call(self.call_id)

    # --- carrier → bus -----------------------------------------------------------------------------------

    async def audio_in(self, audio: bytes) -> None:
        """Take one inbound frame (carrier format) for ``call.<id>.audio.in`` (:class:`.caller_audio.CallerAudio`)."""
        self._media_frames += 1
        if self.ended.is_set() or not audio:
            return
        if self.level is not None:
            self.level.feed(audio)
        await self.caller_audio.push(audio)

    def agent_audio_unplayed(self) -> bool:
        """Agent audio queued for the carrier or sent and not yet played (its mark not echoed)."""
        return bool(self.queue.audio_queued or self.marks.pending)

    def carrier_format(self) -> AudioFormat:
        """The carrier's audio format (what :meth:`audio_in` is fed)."""
        return parse_format(self._carrier_fmt)

    async def _watch_media(self, idle_s: float) -> None:
        """End the call with ``carrier_silent`` after ``idle_s`` s without a media frame (module docstring)."""
        interval = min(5.0, idle_s / 4)
        seen, quiet_since = self._media_frames, time.monotonic()
        while not self.ended.is_set():
            await asyncio.sleep(interval)
            now = time.monotonic()
            if self._media_frames != seen:
                seen, quiet_since = self._media_frames, now
            elif now - quiet_since >= idle_s:
                log.warning("call %s: no media from the carrier for %.1f s; ending", self.call_id, now - quiet_since)
                await self.end("carrier_silent", idle_s=idle_s)
                await self.close_after_logged(_CLOSE_NORMAL, "carrier_silent")
                return

    async def _watch_owner(self, lost_s: float) -> None:
        """End the call with ``session_lost`` once no session has owned it for ``lost_s`` s
        (:func:`~services.gateway.resume.owner_lost`); the caller hears :data:`SESSION_LOST_LINE` first."""
        if await owner_lost(self.bus, self.call_id, lost_s, self.ended):
            log.warning("call %s: no session has owned the call for %.0f s; ending", self.call_id, lost_s)
            await self._say_and_end(SESSION_LOST_LINE, EndReason.SESSION_LOST)

    async def _say_and_end(self, text: str, reason: str) -> None:
        """Play ``text`` (espeak-ng in the carrier's format), wait until it has been sent and played, end."""
        with contextlib.suppress(Exception):
            audio = await synthesize_format_async(text, self._carrier_fmt)
            self.enqueue(audio, "gateway-notice")
            await asyncio.sleep(ms_for_bytes(self._carrier_fmt, len(audio)) / 1000 + 0.5)
        if self.ended.is_set():
            return
        await self.end(reason)
        await self.close_after_logged(_CLOSE_NORMAL, reason)

    async def dtmf(self, digit: str) -> None:
        """Publish ``call.<id>.carrier.dtmf`` ``{digit}`` — or, while the session runs a keypad capture
        (``command.capture {active: true}``), ``call.<id>.keypad`` on core NATS only, so the digits are never
        stored (docs/compliance.md, "Keypad capture")."""
        if self._keypad_capture:
            await self.bus.publish(subjects.call_keypad(self.call_id), KeypadDigit(digit=digit).encode(),
                                   call_id=self.call_id)
            return
        await self.bus.publish_event(subjects.carrier_dtmf(self.call_id), CarrierDtmf(digit=digit).encode(),
                                     call_id=self.call_id)

    async def mark_echo(self, name: str) -> None:
        """A mark came back from the carrier: publish ``call.<id>.carrier.mark`` (unknown names ignored)."""
        if not await self.echoes.carrier_echo(name):  # played echoes go out at a bounded rate (.outbound)
            log.warning("call %s: ignoring echo of unknown mark %r", self.call_id, name[:80])

    # --- bus → carrier -----------------------------------------------------------------------------------

    async def _on_session_updated(self, env: Envelope) -> None:
        """Learn the model's output format: ``session.audio.output.format`` (Realtime GA); the session listens,
        so the audio held for it goes out."""
        if self.caller_audio.holding:
            await self.caller_audio.release()
        try:
            fmt = env.json()["session"]["audio"]["output"]["format"]
            name = fmt["type"] if fmt["type"] != "audio/pcm" else f"audio/pcm;rate={int(fmt.get('rate', 24000))}"
            model_fmt = parse_format(name)
        except (ValueError, KeyError, TypeError):
            return
        if model_fmt.name == self._carrier_fmt:
            self._converter = None
        elif self._converter is None or self._converter.src != model_fmt:
            self._converter = Converter(model_fmt, self._carrier_fmt)

    async def _on_delta(self, env: Envelope) -> None:
        """Queue one ``response.output_audio.delta`` (base64 ``delta``, ``item_id``) for the carrier.

        12–50 a second per call; its fields are strings and small integers, so :meth:`Envelope.json_fast`.
        Audio of a stale owner epoch (below the highest seen for the call) is dropped (:meth:`_current`)."""
        if not self._current(env):
            return
        try:
            event = env.json_fast()
            audio = base64.b64decode(event["delta"], validate=True)
            item_id = self.marks.item_of(event)  # and its response (services.gateway.outbound.MarkPublisher)
        except (ValueError, KeyError, TypeError, binascii.Error):
            log.warning("call %s: ignoring malformed output_audio.delta", self.call_id)
            return
        self.enqueue(audio if self._converter is None else self._converter.convert(audio), item_id)

    def enqueue(self, audio: bytes, item_id: str) -> None:
        """Queue carrier-format audio for ``item_id``, ``MAX_CHUNK_BYTES`` a chunk at most (over the bound: dropped)."""
        if self.ended.is_set():
            return
        for start in range(0, len(audio), MAX_CHUNK_BYTES):  # one carrier message per chunk (MAX_CHUNK_BYTES)
            part = audio[start:start + MAX_CHUNK_BYTES]
            cumulative = self._item_bytes[item_id] = self._item_bytes.get(item_id, 0) + len(part)
            if not self.queue.put_audio(AudioChunk(part, item_id, cumulative)):
                metrics.OUTBOUND_DROPPED.add(1, {"switchboard.carrier": self.start.carrier})

    def _current(self, env: Envelope) -> bool:
        """False for a message of a stale owner epoch (``Switchboard-Epoch`` below the highest seen for this
        call: a session instance that lost the call, ``services/session/ownership.py``). One header read; the
        first message of a higher epoch switches the call to it."""
        epoch = env.headers.get(Headers.EPOCH)
        if epoch is None:
            return True
        value = int(epoch) if epoch.isdigit() else 0
        if value < self._epoch:
            return False
        self._epoch = value
        return True

    async def _on_command(self, env: Envelope) -> None:
        """``call.<id>.command.<verb>`` (:mod:`shared.contracts.commands`); a malformed one, or one of a stale
        owner epoch (:meth:`_current`), is logged and ignored."""
        if not self._current(env):
            log.warning("call %s: ignoring a command of a stale owner epoch", self.call_id)
            return
        verb = subjects.parse(env.subject).rest.removeprefix("command.")
        try:
            command = parse_command(verb, env.data)
        except ContractError as exc:
            log.warning("call %s: ignoring command: %s", self.call_id, exc)
            return
        if isinstance(command, CommandClear):
            self.clear()
        elif isinstance(command, CommandHangup):
            self.queue.put_close("agent_hangup")
        elif isinstance(command, CommandTransfer):
            self.queue.put_close("transfer", {"transfer_to": command.to})
        elif isinstance(command, CommandCapture):
            self._keypad_capture = command.active
        elif isinstance(command, CommandReplay):
            await self.caller_audio.replay(command.from_bytes)
        elif isinstance(command, CommandDtmf) and self.on_control is not None:
            self._soon(self.on_control(command))
        elif isinstance(command, CommandPlay):
            self._play(command)

    def clear(self) -> None:
        """``command.clear``: drop unsent audio, send ``clear`` next, treat pending marks as cleared.

        Chunks dropped before they were sent never reach the carrier, so their (cleared) mark payloads are
        published here, after the held played echoes; marks already sent echo from the carrier after the ``clear``.
        """
        dropped = self.queue.put_clear()
        self.marks.clear()
        self._soon(self.echoes.cleared(self.marks.unsent(dropped)))

    def _play(self, command: CommandPlay) -> None:
        """``command.play``: its audio queued like model audio (converted when its format is not the carrier's)."""
        audio = command.audio_bytes()
        fmt = command.audio_format or self._carrier_fmt
        if fmt != self._carrier_fmt:
            try:
                audio = convert(audio, fmt, self._carrier_fmt)
            except ValueError as exc:
                log.warning("call %s: ignoring play command: %s", self.call_id, exc)
                return
        self.enqueue(audio, command.item_id or "play")
        self.marks.complete([command.item_id or "play"])

    def _soon(self, work: Awaitable[object]) -> None:
        task = asyncio.ensure_future(work)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _write_loop(self) -> None:
        """The only writer to the carrier socket: audio + mark per chunk, clear at once, close in order."""
        while True:
            item = await self.queue.get()
            try:
                if isinstance(item, AudioChunk):
                    await self.sink.send_audio(item.audio)
                    self._audio_out_bytes += len(item.audio)
                    await self.sink.send_mark(self.marks.sent(item))
                elif item.kind == "clear":
                    await self.sink.send_clear()
                else:
                    await self._close(item)
                    return
            except Exception as exc:  # the socket went away: the reader sees the disconnect and ends the call
                log.info("call %s: carrier socket write failed: %s", self.call_id, exc)
                return

    async def _close(self, item: Control) -> None:
        if item.reason == "transfer" and self.on_control is not None:  # before the stream closes
            await self.on_control(CommandTransfer(to=str((item.detail or {}).get("transfer_to"))))
        await self.end(item.reason, **(item.detail or {}))
        if item.reason == "agent_hangup" and self.on_control is not None:  # ended first: not a caller hangup
            await self.on_control(CommandHangup())
        await self.close_after_logged(_CLOSE_NORMAL, item.reason)

    async def close_after_logged(self, code: int, reason: str, *, timeout: float = 2.0) -> None:
        """Close the carrier socket once ``call.<id>.ended`` is stored (at most ``timeout`` s): for a
        :attr:`resumable` call the carrier requests ``/twilio/voice?resume=<id>`` as soon as the socket closes,
        and that answer (hang up, not reconnect) reads the stored ``ended``. Once per call, never per frame."""
        if self.resumable:
            subject = subjects.call_ended(self.call_id)
            with contextlib.suppress(Exception):
                for _ in range(max(1, int(timeout / 0.02))):
                    if await self.bus.last_message(subjects.CALLS_STREAM, subject) is not None:
                        break
                    await asyncio.sleep(0.02)
        with contextlib.suppress(Exception):
            await self.sink.close(code, reason)

    def detach_context(self) -> None:
        """Detach the call's trace context from the task that called :meth:`open` (at the end of the call)."""
        if self._ctx_token is not None:
            with contextlib.suppress(Exception):
                otel_context.detach(self._ctx_token)  # type: ignore[arg-type]
            self._ctx_token = None
