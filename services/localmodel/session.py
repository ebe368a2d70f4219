"""One Realtime connection: client-event dispatch, turn detection, recognition and responses.

Handlers never block the event loop: recognition runs in the server's recogniser processes — each utterance is
streamed to one of them while it is spoken (``stream``), or sent whole (``recognize``: manual commits, and the
fallback when a stream fails) — and synthesis in :mod:`shared.tts`'s worker thread. Every task a session
starts is kept in ``self.tasks`` and cancelled by :meth:`Session.close` (called when the socket closes,
whatever the reason).

A ``response.create`` whose instructions are ``Say exactly: <line>`` speaks that line verbatim (what a real model
does with such instructions; the session's recovery and repeat requests are written so) without a turn of the
dialogue policy: what the agent was asking stays asked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from services.localmodel import protocol as p
from services.localmodel.asr import Transcript
from services.localmodel.audio_in import InputAudio
from services.localmodel.conversation import Conversation, StoredItem
from services.localmodel.grammar import LanguageModelSpec, answer_for
from services.localmodel.policy import DialoguePolicy, Reply
from services.localmodel.protocol import ProtocolError, new_id
from services.localmodel.responses import ResponseRun
from services.localmodel.settings import ECHO_MODEL, LocalModelSettings
from services.localmodel.state import SessionState
from services.localmodel.turns import Turns
from services.localmodel.vad import VadEvent
from shared.audio import Converter
from shared.tasks import TaskSet

__all__ = ["Session"]

log = logging.getLogger(__name__)

SAY_EXACTLY = re.compile(r"\s*say exactly:\s*(?P<line>\S.*?)\s*", re.IGNORECASE | re.DOTALL)
"""Response instructions spoken verbatim (the whole instructions must match; see the module docstring)."""

Send = Callable[[dict[str, Any] | str], Awaitable[None]]
"""Sends one server event: a dict (serialized compactly) or its exact JSON text."""
Recognize = Callable[[LanguageModelSpec, npt.NDArray[np.int16]], Awaitable[Transcript]]


class UtteranceStream(Protocol):
    """An utterance decoded while spoken (:class:`.recognizers.Utterance`)."""

    def feed(self, pcm16k: npt.NDArray[np.int16]) -> None: ...
    async def finish(self) -> Transcript: ...
    def cancel(self) -> None: ...


StartStream = Callable[[LanguageModelSpec], UtteranceStream]


class Session:
    """State of one connection. Feed frames to :meth:`handle`; call :meth:`close` when the socket closes."""

    def __init__(self, send: Send, settings: LocalModelSettings, recognize: Recognize, *, model: str,
                 stream: StartStream, on_first_audio: Callable[[float], None] | None = None) -> None:
        self.send = send
        self.settings = settings
        self.mode = "echo" if model == ECHO_MODEL else settings.mode
        """``echo`` or ``agent``: the server's mode, or echo for a session opened with :data:`ECHO_MODEL`."""
        self.recognize = recognize
        self.start_stream = stream
        self._utterance: UtteranceStream | None = None
        self.state = SessionState(model)
        self.conversation = Conversation()
        self.policy = DialoguePolicy()
        self.turns = Turns(self.conversation, self.policy)
        """The policy's state, folded from the conversation's items (:mod:`.turns`)."""
        self.input = InputAudio(self.state.input_format, self.state.vad_params)
        self.response: ResponseRun | None = None
        self.tasks = TaskSet("localmodel session", log)
        self._speech_item: str | None = None
        self._stopped_at: float | None = None
        self._on_first_audio = on_first_audio
        self._echo: ResponseRun | None = None
        self._echo_ids: dict[str, Any] = {}
        self._echo_converter: Converter | None = None
        """Streaming input → output conversion of the open echo response (formats differ only)."""
        self._echo_delta_rest = ""
        """The echo delta's JSON after its event id, up to the opening quote of ``delta``."""

    # --- plumbing ----------------------------------------------------------------------------------------

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Start a task owned by this session (cancelled by :meth:`close`)."""
        return self.tasks.spawn(coro)

    async def emit(self, kind: str, **fields: Any) -> None:
        """Send a server event with a fresh ``event_id``."""
        await self.send({"type": kind, "event_id": new_id("event"), **fields})

    async def start(self) -> None:
        """Send ``session.created`` (always the first server event) and ``conversation.created``."""
        await self.emit("session.created", session=self.state.snapshot())
        await self.emit("conversation.created", conversation={"id": "conv_default",
                                                               "object": "realtime.conversation"})

    async def close(self) -> None:
        """Cancel every task this session started (and an utterance being recognised) and wait for them."""
        self._drop_utterance()
        tasks = self.tasks.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def handle(self, raw: str | bytes) -> None:
        """Process one client frame; protocol errors become ``error`` events (the session stays usable)."""
        try:
            event = p.parse_client_event(raw)
            await self._dispatch(event)
        except ProtocolError as err:
            await self.send(p.error_event(err))

    async def _dispatch(self, ev: p.ClientEvent) -> None:
        if isinstance(ev, p.SessionUpdate):
            fmt_before, vad_before = self.state.input_format, self.state.vad_params
            self.state.apply(ev.session, ev.event_id)
            if self.state.input_format != fmt_before or self.state.vad_params != vad_before:
                self.input = InputAudio(self.state.input_format, self.state.vad_params, self.input.position_ms)
            self.policy.configure(self.state.session.get("tools") or [], self.state.session.get("instructions"))
            await self.emit("session.updated", session=self.state.snapshot())
        elif isinstance(ev, p.InputAudioBufferAppend):
            await self._append(ev)
        elif isinstance(ev, p.InputAudioBufferCommit):
            if self.mode == "echo":
                await self._close_echo()
            else:
                await self._commit_manual(ev.event_id)
        elif isinstance(ev, p.InputAudioBufferClear):
            self.input.clear()
            self._speech_item = None
            self._drop_utterance()
            await self.emit("input_audio_buffer.cleared")
            await self._close_echo()
        elif isinstance(ev, p.OutputAudioBufferClear):
            raise ProtocolError("invalid_value", "output_audio_buffer.clear is only supported for WebRTC and "
                                "SIP sessions.", event_id=ev.event_id)
        elif isinstance(ev, p.ConversationItemCreate):
            await self._item_create(ev)
        elif isinstance(ev, p.ConversationItemRetrieve):
            item = self.conversation.retrieved(ev.item_id, self.state.input_format.name, event_id=ev.event_id)
            await self.emit("conversation.item.retrieved", item=item)
        elif isinstance(ev, p.ConversationItemTruncate):
            self.conversation.truncate(ev.item_id, ev.content_index, ev.audio_end_ms,
                                       self.state.output_format.bytes_per_ms, event_id=ev.event_id)
            await self.emit("conversation.item.truncated", item_id=ev.item_id, content_index=ev.content_index,
                            audio_end_ms=ev.audio_end_ms)
        elif isinstance(ev, p.ConversationItemDelete):
            self.conversation.delete(ev.item_id, event_id=ev.event_id)
            await self.emit("conversation.item.deleted", item_id=ev.item_id)
        elif isinstance(ev, p.ResponseCreate):
            if self.response is not None:
                raise ProtocolError("conversation_already_has_active_response",
                                    f"Conversation already has an active response in progress: "
                                    f"{self.response.id}. Wait until the response is finished before creating "
                                    "a new one.", event_id=ev.event_id)
            params = ev.response
            instructions = params.instructions if params else None
            verbatim = SAY_EXACTLY.fullmatch(instructions or "")
            self.start_response(params.metadata if params else None, instructions,
                                say=verbatim.group("line") if verbatim else None)
        elif isinstance(ev, p.ResponseCancel):
            run = self.response
            if run is None or (ev.response_id is not None and ev.response_id != run.id):
                raise ProtocolError("response_cancel_not_active",
                                    "Cancellation failed: no active response found.", event_id=ev.event_id)
            run.cancel("client_cancelled")
            if run.task is not None:
                await asyncio.wait({run.task})

    # --- input audio -------------------------------------------------------------------------------------

    async def _append(self, ev: p.InputAudioBufferAppend) -> None:
        if len(ev.audio) > p.MAX_APPEND_BYTES * 4 // 3 + 4:
            raise ProtocolError("invalid_value", "Audio data exceeds the maximum of 15 MiB per event.",
                                param="audio", event_id=ev.event_id)
        try:
            data = base64.b64decode(ev.audio, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("invalid_value", "Invalid 'audio': not valid base64.", param="audio",
                                event_id=ev.event_id) from None
        if self.mode == "echo":
            await self._echo_audio(data, ev.audio)
            return
        events = self.input.append(data)
        if self._utterance is not None:  # an utterance opened by an earlier chunk: decode this one too
            self._utterance.feed(self.input.last_pcm16k)
        for vad_event in events:
            await self._on_vad(vad_event)

    def _drop_utterance(self) -> None:
        if self._utterance is not None:
            self._utterance.cancel()
            self._utterance = None

    async def _on_vad(self, e: VadEvent) -> None:
        td = self.state.turn_detection or {}
        if e.kind == "start":
            self._speech_item = new_id("item")
            self._drop_utterance()  # decode from the start of the segment (prefix padding included)
            self._utterance = self.start_stream(self._spec(listening=True))
            self._utterance.feed(self.input.segment(e.ms, self.input.position_ms)[1])
            await self.emit("input_audio_buffer.speech_started", audio_start_ms=int(e.ms),
                            item_id=self._speech_item)
            if self.response is not None and td.get("interrupt_response", True):
                run = self.response
                run.cancel("turn_detected")
                if run.task is not None:
                    await asyncio.wait({run.task})
                if self.response is run:  # cancelled before it started: its own cleanup never ran
                    self.response = None
        elif e.kind == "stop" and self._speech_item:
            item_id, self._speech_item = self._speech_item, None
            self._stopped_at = time.monotonic()
            await self.emit("input_audio_buffer.speech_stopped", audio_end_ms=int(e.ms), item_id=item_id)
            raw, pcm, _ = self.input.take(e.ms)
            utterance, self._utterance = self._utterance, None
            await self._commit(item_id, raw, pcm, self.spawn(utterance.finish()) if utterance is not None else None)
            if td.get("create_response", True) and self.response is None:
                self.start_response(None, None)
            if self.input.vad is not None:
                self.input.vad.reset_idle()
        elif e.kind == "idle":
            start = max(self.input.base_ms, e.ms - float(td.get("idle_timeout_ms") or 0))
            await self.emit("input_audio_buffer.timeout_triggered", item_id=new_id("item"),
                            audio_start_ms=int(start), audio_end_ms=int(e.ms))
            if self.response is None:
                self.start_response(None, None, say="Are you still there?")

    async def _commit_manual(self, event_id: str | None) -> None:
        if self.input.buffered_ms < 100:
            raise ProtocolError("input_audio_buffer_commit_empty",
                                "Error committing input audio buffer: buffer too small. Expected at least "
                                f"100ms of audio, but buffer only has {self.input.buffered_ms:.2f}ms of audio.",
                                event_id=event_id)
        item_id = self._speech_item or new_id("item")
        self._speech_item = None
        raw, pcm, _ = self.input.take()
        await self._commit(item_id, raw, pcm, None)

    async def _commit(self, item_id: str, raw: bytes, pcm: npt.NDArray[np.int16],
                      streamed: asyncio.Task[Transcript] | None) -> None:
        item = {"id": item_id, "object": "realtime.item", "type": "message", "status": "completed",
                "role": "user", "content": [{"type": "input_audio", "transcript": None}]}
        stored = StoredItem(item, bytearray(raw), len(raw) / self.state.input_format.bytes_per_ms)
        previous = self.conversation.add(stored)
        await self.emit("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous)
        await self.emit("conversation.item.added", previous_item_id=previous, item=item)
        await self.emit("conversation.item.done", previous_item_id=previous, item=item)
        future = self.turns.transcript_owed(item_id)
        self.spawn(self._transcribe(stored, pcm, streamed, future))

    async def _transcribe(self, stored: StoredItem, pcm: npt.NDArray[np.int16],
                          streamed: asyncio.Task[Transcript] | None, future: asyncio.Future[str]) -> None:
        try:
            result = None
            if streamed is not None:
                try:
                    result = await streamed
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("streamed recognition failed; recognising the utterance whole", exc_info=True)
            if result is None:
                result = await self.recognize(self._spec(listening=True), pcm)
            text = result.text
        except Exception:
            log.exception("recognition failed")
            text = ""
            if self.state.transcription_enabled:
                await self.emit("conversation.item.input_audio_transcription.failed", item_id=stored.item["id"],
                                content_index=0, error={"type": "server_error", "code": "transcription_failed",
                                                        "message": "Recognition failed.", "param": None})
        if not future.done():
            future.set_result(text)
        stored.item["content"][0]["transcript"] = text
        if self.state.transcription_enabled and text:
            ids = {"item_id": stored.item["id"], "content_index": 0}
            await self.emit("conversation.item.input_audio_transcription.delta", delta=text, logprobs=None, **ids)
            await self.emit("conversation.item.input_audio_transcription.completed", transcript=text, logprobs=None,
                            usage={"type": "duration", "seconds": round(stored.audio_ms / 1000.0, 3)}, **ids)

    def _spec(self, *, listening: bool = False) -> LanguageModelSpec:
        """The session's LM spec; ``listening``: for the caller's next utterance, so it expects the answer the
        agent has just asked for (a name after "May I have your name, please?", yes/no or a correction after a
        read-back: :data:`.grammar.ANSWERS`) — asked by this model or in an assistant item the client created: the
        conversation is folded first."""
        expect = None
        if listening:
            self.turns.catch_up()
            expect = answer_for(self.policy.asked) or ("confirm" if self.policy.confirming else None)
        return LanguageModelSpec.from_session(self.state.session.get("tools") or [],
                                              self.state.session.get("instructions"), expect)

    # --- items -------------------------------------------------------------------------------------------

    async def _item_create(self, ev: p.ConversationItemCreate) -> None:
        item = ev.item.model_dump(exclude_none=True)
        item.setdefault("id", new_id("item"))
        item["object"] = "realtime.item"
        item.setdefault("status", "completed")
        if item["type"] == "message" and "role" not in item:
            raise ProtocolError("missing_required_parameter", "Missing required parameter: 'item.role'.",
                                param="item.role", event_id=ev.event_id)
        if item["type"] == "function_call_output" and ("call_id" not in item or "output" not in item):
            raise ProtocolError("missing_required_parameter", "Missing required parameter: 'item.call_id' or "
                                "'item.output'.", param="item.call_id", event_id=ev.event_id)
        if item["type"] == "function_call":
            item.setdefault("call_id", new_id("call"))
            item.setdefault("arguments", "")
        previous = self.conversation.add(StoredItem(item), ev.previous_item_id, event_id=ev.event_id)
        self.turns.created_by_client(item)
        await self.emit("conversation.item.added", previous_item_id=previous, item=item)
        await self.emit("conversation.item.done", previous_item_id=previous, item=item)

    # --- responses ---------------------------------------------------------------------------------------

    def start_response(self, metadata: dict[str, str] | None, instructions: str | None, *,
                       say: str | None = None) -> ResponseRun:
        """Start a response task (the caller checked none is active)."""
        run = ResponseRun(self.emit_raw, self.conversation, fmt=self.state.output_format,
                          text_only=self.state.text_only, chunk_ms=self.settings.chunk_ms,
                          realtime=self.settings.pacing == "realtime",
                          voice=str(self.state.session["audio"]["output"].get("voice") or "marin"),
                          metadata=metadata, on_first_audio=self._first_audio)
        self.response = run

        async def decide() -> Reply:
            return Reply(say) if say is not None else await self._decide()

        async def main() -> None:
            try:
                await run.run(decide)
            finally:
                if self.response is run:
                    self.response = None
                if self.input.vad is not None:
                    self.input.vad.reset_idle()

        run.task = self.spawn(main())
        return run

    async def emit_raw(self, event: dict[str, Any]) -> None:
        """Send an already-built server event."""
        await self.send(event)

    def _first_audio(self) -> None:
        self.state.audio_started = True
        if self._stopped_at is not None and self._on_first_audio is not None:
            self._on_first_audio((time.monotonic() - self._stopped_at) * 1000.0)
        self._stopped_at = None

    async def _decide(self) -> Reply:
        """The policy's reply to the conversation's unanswered end (:meth:`.turns.Turns.answer`)."""
        return await self.turns.answer()

    # --- echo mode ---------------------------------------------------------------------------------------

    async def _echo_audio(self, data: bytes, b64: str) -> None:
        """Echo mode: input audio comes back as output audio deltas of one open response (closed on commit or
        clear); converted when the input and output formats differ, else the client's (validated) base64
        ``b64`` is sent back as it came."""
        out_fmt, in_fmt = self.state.output_format, self.state.input_format
        if out_fmt == in_fmt:
            delta = b64
        else:
            conv = self._echo_converter
            if conv is None or conv.src != in_fmt or conv.dst != out_fmt:  # opened, or a session.update since
                conv = self._echo_converter = Converter(in_fmt, out_fmt)
            delta = base64.b64encode(conv.convert(data)).decode()
        if self._echo is None:
            run = ResponseRun(self.emit_raw, self.conversation, fmt=out_fmt, text_only=False, chunk_ms=40,
                              realtime=False, voice="marin", metadata=None)
            self._echo = run
            item_id = new_id("item")
            self._echo_ids = {"response_id": run.id, "item_id": item_id, "output_index": 0, "content_index": 0}
            item = {"id": item_id, "object": "realtime.item", "type": "message", "status": "in_progress",
                    "role": "assistant", "content": []}
            run.output.append(item)
            await self.emit("response.created", response=run._response("in_progress"))
            await self.emit("response.output_item.added", response_id=run.id, output_index=0, item=item)
            await self.emit("response.content_part.added", part={"type": "audio", "transcript": ""},
                            **self._echo_ids)
            self._echo_delta_rest = (f'","response_id":"{run.id}","item_id":"{item_id}",'
                                     f'"output_index":0,"content_index":0,"delta":"')
        # built as text: 50 deltas a second per session, and nothing in it needs JSON escaping (ids are
        # URL-safe base64, the delta is base64 that was validated or that we encoded)
        await self.send('{"type":"response.output_audio.delta","event_id":"' + new_id("event")
                        + self._echo_delta_rest + delta + '"}')

    async def _close_echo(self) -> None:
        run, self._echo = self._echo, None
        self._echo_converter = None
        if run is None:
            return
        item = run.output[0]
        item["status"] = "completed"
        item["content"] = [{"type": "output_audio", "transcript": ""}]
        await self.emit("response.output_audio.done", **self._echo_ids)
        await self.emit("response.content_part.done", part={"type": "audio", "transcript": ""}, **self._echo_ids)
        await self.emit("response.output_item.done", response_id=run.id, output_index=0, item=item)
        await self.emit("response.done", response=run._response("completed"))
