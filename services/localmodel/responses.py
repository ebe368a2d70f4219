"""One model response: the GA event sequence for spoken (or text) output and function calls
(https://platform.openai.com/docs/guides/realtime-conversations), with cancellation (``response.cancel`` or barge-in).

Order sent: ``response.created`` → ``rate_limits.updated`` → for speech: ``response.output_item.added`` →
``conversation.item.added`` → ``response.content_part.added`` (part type ``audio``) → interleaved
``response.output_audio.delta`` / ``response.output_audio_transcript.delta`` → ``…output_audio.done`` →
``…output_audio_transcript.done`` → ``response.content_part.done`` → ``response.output_item.done`` →
``conversation.item.done``; for a call: ``output_item.added`` (function_call, in_progress) →
``conversation.item.added`` → ``function_call_arguments.delta``/``.done`` → ``output_item.done`` →
``conversation.item.done``; then ``response.done``. A cancelled response closes its open item with status
``incomplete`` and ends with ``response.done`` ``status: "cancelled"`` and the reason (``turn_detected`` /
``client_cancelled``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from services.localmodel.conversation import Conversation, StoredItem
from services.localmodel.policy import Reply
from services.localmodel.protocol import new_id
from services.localmodel.speech import speak
from shared.audio import AudioFormat

__all__ = ["ResponseRun"]

REALTIME_LEAD_MS: Final = 400.0
"""With ``realtime`` pacing, how far (ms of audio) output may run ahead of real time. OpenAI's server delivers a
response's audio faster than it plays, so a carrier always holds a backlog that a barge-in must clear; a model
paced at exactly 1× would never leave one."""

Send = Callable[[dict[str, Any]], Awaitable[None]]


def _usage(in_tokens: int, out_text: int, out_audio: int) -> dict[str, Any]:
    return {"total_tokens": in_tokens + out_text + out_audio, "input_tokens": in_tokens,
            "output_tokens": out_text + out_audio,
            "input_token_details": {"text_tokens": in_tokens, "audio_tokens": 0, "image_tokens": 0,
                                    "cached_tokens": 0, "cached_tokens_details": {
                                        "text_tokens": 0, "audio_tokens": 0, "image_tokens": 0}},
            "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio}}


class ResponseRun:
    """A response in progress. ``decide`` produces the :class:`Reply` (it may wait for recognition)."""

    def __init__(self, send: Send, conversation: Conversation, *, fmt: AudioFormat, text_only: bool,
                 chunk_ms: int, realtime: bool, voice: str, metadata: dict[str, str] | None,
                 on_first_audio: Callable[[], None] | None = None) -> None:
        self.id = new_id("resp")
        self.send = send
        self.conversation = conversation
        self.fmt = fmt
        self.text_only = text_only
        self.chunk_ms = chunk_ms
        self.realtime = realtime
        self.voice = voice
        self.metadata = metadata
        self.on_first_audio = on_first_audio
        self.output: list[dict[str, Any]] = []
        self.cancel_reason: str | None = None
        self.task: asyncio.Task[None] | None = None
        self._open: StoredItem | None = None
        self._transcript = ""
        self._audio_tokens = 0

    def _response(self, status: str, details: dict[str, Any] | None = None,
                  usage: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"object": "realtime.response", "id": self.id, "status": status, "status_details": details,
                "output": self.output, "conversation_id": "conv_default",
                "output_modalities": ["text"] if self.text_only else ["audio"], "max_output_tokens": "inf",
                "audio": {"output": {"format": self.fmt.realtime_format(), "voice": self.voice}},
                "usage": usage, "metadata": self.metadata}

    async def _emit(self, kind: str, **fields: Any) -> None:
        await self.send({"type": kind, "event_id": new_id("event"), **fields})

    def cancel(self, reason: str) -> None:
        """Cancel the running response (``turn_detected`` or ``client_cancelled``)."""
        if self.task is not None and not self.task.done() and self.cancel_reason is None:
            self.cancel_reason = reason
            self.task.cancel()

    async def run(self, decide: Callable[[], Awaitable[Reply]]) -> None:
        """Send the whole response; on cancellation send the cancelled ``response.done`` and return."""
        try:
            await self._emit("response.created", response=self._response("in_progress"))
            await self._emit("rate_limits.updated", rate_limits=[
                {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 60.0},
                {"name": "tokens", "limit": 50000, "remaining": 49000, "reset_seconds": 60.0}])
            reply = await decide()
            if reply.say:
                await self._speak(reply.say)
            if reply.call is not None:
                await self._call(reply.call.name, reply.call.arguments)
        except asyncio.CancelledError:
            if self.cancel_reason is None:
                raise
            await self._finish_open("incomplete")
            await self._emit("response.done", response=self._response(
                "cancelled", {"type": "cancelled", "reason": self.cancel_reason},
                _usage(0, len(self._transcript.split()), self._audio_tokens)))
            return
        await self._emit("response.done", response=self._response(
            "completed", None, _usage(0, len(self._transcript.split()), self._audio_tokens)))

    async def _speak(self, text: str) -> None:
        item_id = new_id("item")
        part_type = "output_text" if self.text_only else "output_audio"
        item: dict[str, Any] = {"id": item_id, "object": "realtime.item", "type": "message", "status": "in_progress",
                "role": "assistant", "content": []}
        stored = StoredItem(item)
        previous = self.conversation.add(stored)
        self._open = stored
        self._transcript = ""
        index = len(self.output)
        self.output.append(item)
        ids = {"response_id": self.id, "item_id": item_id, "output_index": index, "content_index": 0}
        await self._emit("response.output_item.added", response_id=self.id, output_index=index, item=item)
        await self._emit("conversation.item.added", previous_item_id=previous, item=item)
        item["content"] = [{"type": part_type, "transcript": ""} if not self.text_only
                           else {"type": "output_text", "text": ""}]
        part = {"type": "text", "text": ""} if self.text_only else {"type": "audio", "transcript": ""}
        await self._emit("response.content_part.added", part=part, **ids)
        if self.text_only:
            self._transcript = text
            item["content"][0]["text"] = text
            await self._emit("response.output_text.delta", delta=text, **ids)
            await self._emit("response.output_text.done", text=text, **ids)
            await self._finish_open("completed")
            return
        started = time.monotonic()
        sent_ms = 0.0
        last_sentence: tuple[float, float, str] | None = None
        async for chunk in speak(text, self.fmt, self.chunk_ms, self._espeak_voice()):
            if self.realtime:
                delay = started + (sent_ms - REALTIME_LEAD_MS) / 1000.0 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self._emit("response.output_audio.delta", delta=base64.b64encode(chunk.audio).decode(), **ids)
            if sent_ms == 0.0 and self.on_first_audio is not None:
                self.on_first_audio()
            stored.audio.extend(chunk.audio)
            piece_ms = len(chunk.audio) / self.fmt.bytes_per_ms
            sent_ms += piece_ms
            stored.audio_ms = sent_ms
            self._audio_tokens += max(1, int(piece_ms / 50))
            segment = (chunk.sentence_start_ms, chunk.sentence_end_ms, chunk.sentence)
            if segment != last_sentence:
                stored.segments.append(segment)
                last_sentence = segment
            if chunk.text:
                self._transcript += chunk.text
                item["content"][0]["transcript"] = self._transcript
                await self._emit("response.output_audio_transcript.delta", delta=chunk.text, **ids)
            if not self.realtime:
                await asyncio.sleep(0)
        await self._finish_open("completed")

    def _espeak_voice(self) -> str:
        return "en-us+klatt"

    async def _finish_open(self, status: str) -> None:
        stored, self._open = self._open, None
        if stored is None:
            return
        item = stored.item
        index = self.output.index(item) if item in self.output else 0
        ids = {"response_id": self.id, "item_id": item["id"], "output_index": index, "content_index": 0}
        item["status"] = status
        if self.text_only:
            text = item["content"][0]["text"] if item["content"] else ""
            if status != "completed":
                await self._emit("response.output_text.done", text=text, **ids)
            await self._emit("response.content_part.done", part={"type": "text", "text": text}, **ids)
        else:
            if not item["content"]:
                item["content"] = [{"type": "output_audio", "transcript": ""}]
            transcript = item["content"][0].get("transcript") or ""
            await self._emit("response.output_audio.done", **ids)
            await self._emit("response.output_audio_transcript.done", transcript=transcript, **ids)
            await self._emit("response.content_part.done", part={"type": "audio", "transcript": transcript}, **ids)
        await self._emit("response.output_item.done", response_id=self.id, output_index=index, item=item)
        await self._emit("conversation.item.done", previous_item_id=self._previous(item["id"]), item=item)

    def _previous(self, item_id: str) -> str | None:
        ids = self.conversation.ids()
        i = ids.index(item_id) if item_id in ids else 0
        return ids[i - 1] if i > 0 else None

    async def _call(self, name: str, arguments: dict[str, Any]) -> None:
        item_id, call_id = new_id("item"), new_id("call")
        args = json.dumps(arguments)
        item: dict[str, Any] = {"id": item_id, "object": "realtime.item", "type": "function_call",
                                "status": "in_progress",
                "name": name, "call_id": call_id, "arguments": ""}
        previous = self.conversation.add(StoredItem(item))
        index = len(self.output)
        self.output.append(item)
        await self._emit("response.output_item.added", response_id=self.id, output_index=index, item=item)
        await self._emit("conversation.item.added", previous_item_id=previous, item=item)
        ids = {"response_id": self.id, "item_id": item_id, "output_index": index, "call_id": call_id}
        await self._emit("response.function_call_arguments.delta", delta=args, **ids)
        await self._emit("response.function_call_arguments.done", name=name, arguments=args, **ids)
        item["arguments"] = args
        item["status"] = "completed"
        await self._emit("response.output_item.done", response_id=self.id, output_index=index, item=item)
        await self._emit("conversation.item.done", previous_item_id=previous, item=item)
