"""One call's session: the model connection, the log, and the parts that make up the conversation.

Lifecycle (docs/session.md; https://platform.openai.com/docs/guides/realtime-conversations):

1. :meth:`Call.run` subscribes to the call's carrier subjects (:mod:`.callerin`: audio, marks, digits) and
   ``ended``, then opens the model WebSocket at once (:mod:`.connect`) while loading the tool registry and the
   log's last ``Switchboard-Seq`` (:mod:`.prepare`). Early audio is buffered. A call the gateway ended before the
   session picked it up (start-then-stop) ends at once: the CALLS stream's last ``call.<id>.ended`` is read after
   subscribing, so an ``ended`` is either delivered or already in the stream.
2. ``session.created`` → ``session.update`` (agent spec + flow state); ``session.updated`` → greeting (after the
   agent's disclosure, :mod:`.disclosure`), buffered audio flushed, ``call.<id>.session.model_connected``.
3. Every client event sent and server event received is logged (:mod:`.log`); server events are logged before
   they are handled, so output audio reaches the gateway (which plays it from the logged subject) at once.
   Barge-in is :mod:`.bargein`; tool and keypad results are :mod:`.turns`.
4. A dropped model socket is reconnected with backoff; the new session gets ``session.update`` and the prior
   conversation rebuilt from the log (:mod:`.rebuild`), then audio resumes.
5. ``call.<id>.ended`` → the reader stops, the model socket is closed and ``call.<id>.session.summary``
   published. Every socket a connect attempt opened is closed on every path.

A bad server event (invalid JSON, an ``error`` event, a failing handler) is logged and never ends the call; an
exception that escapes :meth:`Call.run` ends only this call (:mod:`.service` supervises).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from nats.aio.subscription import Subscription

from shared import subjects, tool_registry
from shared.audio import parse_format
from shared.bus import Bus, Envelope, encode_payload
from shared.contracts import (
    CallEnded,
    CallInfo,
    CallStarted,
    CommandReplay,
    Contract,
    ContractError,
    SessionError,
    SessionModelConnected,
    SessionSummary,
)
from shared.redact import loggable
from shared.tasks import TaskSet

from .agent import AgentSpec, session_config
from .audio import AudioBatcher, append_event
from .bargein import BargeIn, PlaybackTracker
from .callerin import REPEAT_LINE, CallerInput
from .capture import KeypadCapture
from .connect import keep_connected
from .control import PendingControl
from .disclosure import Disclosure
from .flow import FlowMachine
from .log import UNPARSABLE_TYPE, EventLog
from .model import ModelClosedError, ModelSocket
from .options import CallOptions, ModelEndpoint
from .ownership import Takeover
from .position import LogPosition
from .prepare import read_before_model
from .rebuild import rebuild
from .responses import ResponseGate
from .summary import CallStats
from .telemetry import SessionHooks
from .tools import ToolDispatcher
from .turns import Turns

__all__ = ["RECOVERY_LINE", "REPEAT_LINE", "Call", "CallOptions", "ModelEndpoint"]  # the last 3 are re-exported

log = logging.getLogger(__name__)

RECOVERY_LINE = "Sorry, I lost my train of thought for a moment. Where were we?"
"""What the agent says after taking over a call whose owner crashed mid-response (once)."""


class Call:
    """The session of one call (see the module docstring)."""

    def __init__(self, bus: Bus, spec: AgentSpec, info: CallStarted, endpoint: ModelEndpoint,
                 options: CallOptions | None = None, *, takeover: Takeover | None = None) -> None:
        self.bus = bus
        self.takeover = takeover
        """Set when this instance took the call over from another (``"handover"``: the owner asked;
        ``"lapse"``: the owner stopped renewing): the first model session rebuilds the conversation from the log
        instead of greeting, and after a lapse says one short recovery line if a response was cut off."""
        self.handed_over = False
        """Set when another instance now serves the call: this one stops without a summary."""
        self.position = LogPosition(taken_over=takeover is not None)
        """The call's log as this instance knows it (the ownership entry's mark; the replay offset)."""
        self.conversation_persists = False
        """True: the model keeps the conversation across connections (SIP sideband): no rebuild on reconnect."""
        self.spec = spec
        self.info = info
        self.call_id = info.call_id
        self.endpoint = endpoint
        fmt = parse_format(info.audio_format)
        self.log = EventLog(bus, self.call_id)
        self.options = options or CallOptions()
        self.audio = AudioBatcher(int(fmt.bytes_per_ms), min_ms=self.options.audio_batch_ms)
        self.playback = PlaybackTracker(int(fmt.bytes_per_ms))
        self.gate = ResponseGate(self._gate_send)
        self.flow = FlowMachine(spec)
        self.stats = CallStats(self.call_id, spec.name)
        self.hooks = SessionHooks(self.call_id, spec.name)
        self.control = PendingControl(self.playback, self._command)
        self.disclosure = Disclosure(spec.disclosure, bus=bus, call_id=self.call_id,
                                     audio_format=info.audio_format, playback=self.playback,
                                     command=self._command, publish=self._call_event,
                                     chunk_ms=self.options.disclosure_chunk_ms,
                                     confirm_grace_s=self.options.disclosure_confirm_s)
        self._greeted = takeover is not None  # a call taken over was greeted by its first owner
        self._recovered = False
        self.redactor = self.options.redactor(spec.redaction)
        """None: redaction off; else every logged event's text is redacted (docs/compliance.md)."""
        self.registry: dict[str, tool_registry.ToolSpec] = {}
        self.turns = Turns(self.call_id, flow=self.flow, gate=self.gate, control=self.control, deliver=self.deliver,
                           session_for=self._session_for, apply_capture=self._apply_capture,
                           publish=self._call_event)
        self.tools = ToolDispatcher(bus, CallInfo(self.call_id, info.from_, info.to, spec.name),
                                    self.registry, self.turns.tool_result, self.hooks)
        self.keypad = KeypadCapture(bus=bus, call=self.tools.call, registry=self.registry,
                                    key=self.options.capture_key, command=self._command,
                                    publish=self._call_event, tell=self.turns.keypad_result)
        self.barge_in = BargeIn(self.playback, clear=lambda c: self._command("clear", c), deliver=self.deliver,
                                spawn=self._spawn, settle_s=self.options.barge_in_settle_s,
                                on_barge_in=self._barged_in)
        self.caller = CallerInput(self.call_id, audio=self.audio, playback=self.playback, disclosure=self.disclosure,
                                  keypad=self.keypad, send_append=self._send_append, say=self._say_to_model,
                                  spawn=self._spawn, await_replay=takeover == "lapse",
                                  bytes_per_ms=fmt.bytes_per_ms, ask_again=self._ask_again,
                                  clear_input=lambda: self.send({"type": "input_audio_buffer.clear"}))
        self.model: ModelSocket | None = None
        self.ready = asyncio.Event()
        self.ended = asyncio.Event()
        self.ended_reason: str | None = None
        self.connections = 0
        self._in_setup = False
        self._closing = False
        self._subs: list[Subscription] = []
        self.subscribed = asyncio.Event()
        """Set once the call's carrier subjects are subscribed (audio published after this is not missed)."""
        self._tasks = TaskSet(f"call {self.call_id}", log)

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the call until ``call.<id>.ended`` (or :meth:`end`); always publishes the summary."""
        self.hooks.call_started()
        model_task: asyncio.Task[None] | None = None
        try:
            cid = self.call_id
            self._subs = [
                await self.bus.subscribe(subjects.call_audio_in(cid), self.caller.on_audio),
                await self.bus.subscribe(subjects.carrier_mark(cid), self.caller.on_mark),
                await self.bus.subscribe(subjects.carrier_dtmf(cid), self.caller.on_digit),
                await self.bus.subscribe(subjects.call_keypad(cid), self.caller.on_digit),
                await self.bus.subscribe(subjects.carrier_amd(cid), self.caller.on_amd),
                await self.bus.subscribe(subjects.carrier_detached(cid), self.caller.on_detached),
                await self.bus.subscribe(subjects.carrier_resumed(cid), self.caller.on_resumed),
                await self.bus.subscribe(subjects.call_ended(cid), self._on_ended),
            ]
            self.subscribed.set()
            self.disclosure.start()  # before anything else: the marks of its audio are already subscribed
            await self._apply_capture()  # an initial keypad-capture state
            self._spawn(self._after_disclosure())
            self._spawn(self._ended_before_pickup())
            model_task = asyncio.create_task(self._model_loop(), name=f"model-{cid}")
            watchdog = self._spawn(self.caller.watch_silence(self.options.carrier_idle_timeout, self.ended, self.end))
            ended = asyncio.ensure_future(self.ended.wait())
            done, _ = await asyncio.wait({model_task, ended}, return_when=asyncio.FIRST_COMPLETED)
            ended.cancel()
            watchdog.cancel()
            if model_task in done:
                model_task.result()  # the model loop only returns when closing; re-raise its failure
        finally:
            await self._shutdown(model_task)

    async def end(self, reason: str) -> None:
        """End the session from our side (service shutdown, carrier gone)."""
        self.ended_reason = self.ended_reason or reason
        self.ended.set()

    async def hand_off(self) -> None:
        """Stop serving because another instance took the call over: close the model session, publish nothing
        more for the call (no summary: the call goes on)."""
        self.handed_over = True
        await self.end("handover")

    async def _ended_before_pickup(self) -> None:
        """``call.<id>.ended`` published before :meth:`run` subscribed: the CALLS stream holds it."""
        env = await self.bus.last_message(subjects.CALLS_STREAM, subjects.call_ended(self.call_id))
        if env is not None:
            await self._on_ended(env)

    async def _shutdown(self, model_task: asyncio.Task[None] | None) -> None:
        self._closing = True
        try:
            await self.disclosure.close()  # still playing → interrupted (before the summary)
        except Exception:
            log.exception("call %s: recording the disclosure's end failed", self.call_id)
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self.model is not None:
            with contextlib.suppress(Exception):
                await self.model.close()
        if model_task is not None and not model_task.done():
            model_task.cancel()
            with contextlib.suppress(BaseException):
                await model_task
        await self.tools.cancel()
        await self.control.cancel()
        self._tasks.cancel()
        if self.handed_over:
            self.hooks.call_ended()
            return
        summary = self.stats.summary(tool_calls=self.tools.calls, first_audio_ms=self.hooks.first_audio_ms,
                                     events=self.log.counts, flow_state=self.flow.state,
                                     ended_reason=self.ended_reason)
        try:
            await self._call_event(subjects.session_event(self.call_id, "summary"), SessionSummary(**summary))
        finally:
            self.hooks.call_ended()

    # --- model connection --------------------------------------------------------------------------------

    async def _prepare(self) -> None:
        """Tool registry and the log's last seq (so a restarted call continues ``Switchboard-Seq``); after a
        takeover, the flow state the previous owner reached (:mod:`.prepare`); after a lapse, the call's log for
        the rebuild. The reads run side by side, while the model connects."""
        read = await read_before_model(self.bus, self.call_id, self.ended, takeover=self.takeover,
                                       flow=self.spec.flow is not None, previous=self.position.lapsed_owner)
        self.registry.update(read.registry)
        self.bus.resume_seq(self.call_id, read.last_seq)
        self.position.seq_resumed = True
        self.position.prefetched = read.logged
        if read.state is not None:
            self.flow.state = read.state
            await self._apply_capture()  # the restored state's keypad capture

    async def _model_loop(self) -> None:
        prepared = asyncio.create_task(self._prepare(), name=f"prepare-{self.call_id}")

        async def serve(sock: ModelSocket) -> None:
            try:
                await prepared
                self.model = sock
                self.connections += 1
                await self._read(sock)
            finally:
                if self.model is sock:
                    self.model = None
                    self.ready.clear()
                    self.audio.ready = False
                    self.gate.reset()
                    self.stats.model_down()

        async def unavailable(exc: Exception) -> None:
            await prepared
            await self._call_event(subjects.session_event(self.call_id, "error"), SessionError(
                call_id=self.call_id, code="model_unavailable",
                message="The voice model cannot be reached; still trying.", detail=type(exc).__name__))

        try:
            await keep_connected(
                self.call_id, self.endpoint, self.hooks, error_after=self.options.model_error_after,
                closing=lambda: self._closing or self.ended.is_set(), connections=lambda: self.connections,
                serve=serve, unavailable=unavailable, lost=self.stats.reconnected)
        finally:
            if not prepared.done():
                prepared.cancel()

    async def _read(self, sock: ModelSocket) -> None:
        while True:
            raw = await sock.recv()
            if self.ended.is_set():
                raise ModelClosedError("call ended")
            try:
                event = json.loads(raw)
            except ValueError:
                event = None
            etype = event.get("type") if isinstance(event, dict) else None
            await self.log.server(etype if isinstance(etype, str) else UNPARSABLE_TYPE,
                                  loggable(self.redactor, event, raw))  # redacted when redaction is on
            if not isinstance(event, dict) or not isinstance(etype, str):
                log.warning("call %s: unparsable server frame logged (%d bytes)", self.call_id, len(raw))
                continue
            try:
                await self._on_server_event(etype, event)
            except ModelClosedError:
                raise
            except Exception:
                log.exception("call %s: handling server event %s failed", self.call_id, etype)

    # --- sending -----------------------------------------------------------------------------------------

    async def send(self, event: dict[str, Any], *, setup: bool = False) -> None:
        """Send a client event and log it exactly as sent (one lock: socket order = log order).

        Raises:
            ModelClosedError: no usable model session (down, or still being set up and ``setup`` is False).
        """
        frame = encode_payload(event)
        await self._send_frame(str(event["type"]), frame, setup=setup, logged=loggable(self.redactor, event, frame))

    async def _send_frame(self, event_type: str, frame: bytes, *, setup: bool,
                          logged: bytes | None = None) -> int | None:
        """Send one client event's exact bytes and log them (``logged``: redacted) under the log lock (:meth:`send`);
        returns the logged event's seq."""
        async with self.log.lock:
            sock = self.model
            if sock is None or not (setup or self.ready.is_set()):
                raise ModelClosedError("model session not ready")
            await sock.send(frame)
            return await self.log.publish_locked("client", event_type, frame if logged is None else logged)

    async def deliver(self, event: dict[str, Any]) -> None:
        """Send once the model session is ready, waiting through reconnects (never dropped)."""
        while not self._closing:
            await self.ready.wait()
            try:
                await self.send(event)
                return
            except ModelClosedError:
                await asyncio.sleep(0.05)

    async def _gate_send(self, event: dict[str, Any]) -> None:
        await self.send(event, setup=self._in_setup)

    async def _call_event(self, subject: str, message: Contract) -> None:
        async with self.log.lock:
            await self.bus.publish_event(subject, message.encode(), call_id=self.call_id)

    async def _command(self, verb: str, command: Contract) -> None:
        await self._call_event(subjects.command(self.call_id, verb), command)

    # --- server events -----------------------------------------------------------------------------------

    async def _on_server_event(self, etype: str, ev: dict[str, Any]) -> None:
        if etype == "response.output_audio.delta":
            self.playback.on_audio_delta(str(ev.get("item_id")), ev.get("response_id"), str(ev.get("delta", "")))
            self.hooks.output_audio()
        elif etype == "session.created":
            await self._send_session_update()
        elif etype == "session.updated":
            if not self.ready.is_set():
                await self._session_ready(ev)
        elif etype == "input_audio_buffer.speech_started":
            self.caller.speaking = True
            self.hooks.speech_started()
            await self.barge_in.speech_started()
        elif etype == "input_audio_buffer.speech_stopped":
            self.caller.speaking = False
            self.hooks.speech_stopped()
        elif etype == "input_audio_buffer.committed":
            self.stats.user_turns += 1
        elif etype == "response.created":
            rid = str(ev.get("response", {}).get("id"))
            origin = await self.gate.on_created(rid)
            self.hooks.response_created(rid)
            self.control.on_response_created(rid, origin)
        elif etype == "response.done":
            response = ev.get("response") or {}
            rid = str(response.get("id"))
            self.stats.on_response_done(response)
            self.hooks.response_done(response.get("status"), response.get("usage"))
            await self.gate.on_done(rid)
            self.control.on_response_done(rid)
        elif etype == "response.output_item.done":
            item = ev.get("item") or {}
            if item.get("type") == "function_call" and item.get("status", "completed") == "completed":
                self.tools.dispatch(str(item.get("call_id", "")), str(item.get("name")), item.get("arguments"))
        elif etype == "response.function_call_arguments.done":
            self.tools.dispatch(str(ev.get("call_id", "")), str(ev.get("name")), ev.get("arguments"))
        elif etype == "error":
            err = ev.get("error") or {}
            log.warning("call %s: model error %s: %s", self.call_id, err.get("code"), err.get("message"))
            await self.gate.on_error(err.get("code"), err.get("event_id"))

    async def _send_session_update(self) -> None:
        await self.send({"type": "session.update", "session": self._session_for(self.flow.state)}, setup=True)

    async def _session_ready(self, ev: dict[str, Any]) -> None:
        """First ``session.updated`` of a connection: greeting or rebuild, flush audio, then ready."""
        self._in_setup = True
        try:
            reconnect = self.connections > 1 or self.takeover is not None
            if reconnect and not self.conversation_persists:
                logged = await rebuild(self.bus, self.call_id, lambda e: self.send(e, setup=True),
                                       self.position.prefetched if self.connections == 1 else None)
                self.position.counted(self.bus.current_seq(self.call_id), logged.appended_bytes)
                owes, cut_off = logged.conversation.owes_response(), logged.cut_off
                if cut_off and self.takeover == "lapse" and self.connections == 1:
                    self._recovered = True
                    await self.gate.request({"instructions": f"Say exactly: {RECOVERY_LINE}"})
                elif owes:
                    await self.gate.request()
            else:
                await self._greet()
            if self.disclosure.done.is_set():
                await self._flush_audio(setup=True)
        finally:
            self._in_setup = False
        self.audio.ready = self.disclosure.done.is_set()  # else the disclosure's end opens it
        self.ready.set()
        self.stats.model_up()
        await self.gate.pump()
        if self.takeover == "lapse" and self.connections == 1:  # what the caller said while nobody listened
            offset = await self.caller.replay_offset(self.position.appended_in_log, self.options.replay_wait_s)
            await self._command("replay", CommandReplay(from_bytes=offset))
            self._spawn(self.caller.stop_awaiting_replay(self.options.replay_wait_s))
        session = ev.get("session") or {}
        sid, model = session.get("id"), session.get("model")
        await self._call_event(subjects.session_event(self.call_id, "model_connected"), SessionModelConnected(
            call_id=self.call_id, session_id=sid if isinstance(sid, str) else None,
            model=model if isinstance(model, str) else None,
            connection=self.connections, reconnect=reconnect, takeover=self.takeover,
            # billed: false without an API key (the local model), priced at 0 (shared/pricing.py)
            billed=self.endpoint.api_key is not None, agent=self.spec.name, agent_version=self.spec.version))

    async def _greet(self) -> None:
        """The greeting ``response.create``, once per call and only after the disclosure is over."""
        if self._greeted or not self.spec.greeting or not self.disclosure.done.is_set():
            return
        self._greeted = True
        await self.gate.request({"instructions": f"Greet the caller by saying exactly: {self.spec.greeting}"})

    async def _flush_audio(self, *, setup: bool) -> None:
        """Send buffered caller audio in order; frames arriving meanwhile are buffered and flushed by the next
        round, and no await separates the last (empty) check from the caller going live."""
        while self.audio.buffered:
            chunks = self.audio.drain()
            for i, chunk in enumerate(chunks):
                try:
                    await self._send_append(chunk, setup=setup)
                except ModelClosedError:
                    for rest in reversed(chunks[i:]):  # keep the unsent audio, in order
                        self.audio.requeue(rest)
                    raise

    async def _after_disclosure(self) -> None:
        """The disclosure is over: listen and greet (once the model is ready; else :meth:`_session_ready` does)."""
        await self.disclosure.done.wait()
        if self._closing or not self.ready.is_set():
            return
        try:
            await self._greet()
            await self._flush_audio(setup=False)
        except ModelClosedError:
            return  # the reconnect's _session_ready flushes and greets
        self.audio.ready = True

    # --- carrier side ------------------------------------------------------------------------------------

    async def _send_append(self, chunk: bytes, *, setup: bool = False) -> None:
        seq = await self._send_frame("input_audio_buffer.append", append_event(chunk), setup=setup)
        self.position.note_append(seq, len(chunk))

    async def _ask_again(self) -> None:
        if not self._recovered:  # the recovery line already asks the caller to go on
            await self.gate.request({"instructions": f"Say exactly: {REPEAT_LINE}"})

    async def _apply_capture(self) -> None:
        await self.keypad.apply(self.flow.state, self.spec.capture_for(self.flow.state))

    def _session_for(self, state: str | None) -> dict[str, Any]:
        session, missing = session_config(self.spec, audio_format=self.info.audio_format, registry=self.registry,
                                          model=self.endpoint.model, state_id=state)
        if missing:
            log.warning("call %s: tools not in the registry, left out: %s", self.call_id, missing)
        return session

    async def _say_to_model(self, item: dict[str, Any]) -> None:
        await self.disclosure.done.wait()
        await self.deliver({"type": "conversation.item.create", "item": item})
        await self.gate.request()

    async def _on_ended(self, env: Envelope) -> None:
        """``call.<id>.ended``: close the model session, publish the summary (an unreadable one ends it too)."""
        try:
            reason = CallEnded.parse(env.data).reason
        except ContractError as exc:
            log.warning("call %s: malformed ended (%s); ending anyway", self.call_id, exc)
            reason = "ended"
        await self.end(reason or "ended")

    def _barged_in(self) -> None:
        self.hooks.barge_in()
        self.stats.barge_ins += 1

    # --- tools, flows, control ---------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro)
