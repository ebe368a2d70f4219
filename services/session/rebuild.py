"""Rebuild a call's conversation from its Realtime log after the model connection dropped.

A new model session starts empty. The log (``rt.<id>.>`` in the RT stream) holds everything, so the session
replays it and re-creates the prior items with ``conversation.item.create`` (https://platform.openai.com/docs/api-reference/realtime-client-events/conversation/item/create):

- user audio turns → user ``message`` with an ``input_text`` part holding the transcript
  (``conversation.item.input_audio_transcription.completed``; turns without a transcript are skipped — the
  model never heard words it could be told about);
- assistant messages → assistant ``message`` with an ``output_text`` part (transcript from
  ``response.output_item.done``, or the text the caller heard when the item was truncated);
- function calls (``response.output_item.done`` with ``item.type == "function_call"``) → ``function_call``;
- client-created items (tool outputs, DTMF text, background results) → the item as it was sent.

Items this module re-created in an earlier rebuild are tagged with an ``event_id`` starting with
:data:`REBUILD_PREFIX` and skipped (with the server's echoes, which carry new ids), so a second drop does not
duplicate the conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared import subjects
from shared.bus import Bus, epoch_of
from shared.fencing import OwnerFence

from .ownership import Owner, tail_start

log = logging.getLogger(__name__)

__all__ = ["LOGGED_CLIENT", "LOGGED_SERVER", "REBUILD_PREFIX", "CallLog", "ConversationLog", "LogRecord",
           "parse_records", "read_call_log", "rebuild"]

REBUILD_PREFIX = "sb_rebuild_"
APPEND = "input_audio_buffer.append"
LOGGED_CLIENT = ("conversation.item.create", APPEND)
"""Client event types a rebuild reads (Realtime GA names)."""
LOGGED_SERVER = ("input_audio_buffer.committed", "conversation.item.input_audio_transcription.completed",
                 "response.output_item.done", "conversation.item.deleted", "response.created", "response.done")
"""Server event types a rebuild reads: :class:`ConversationLog`'s and the cut-off check's."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One logged event: ``direction`` (``client``/``server``) and its JSON body."""

    direction: str
    event: dict[str, Any]


@dataclass
class _Item:
    kind: str  # user_audio | assistant | function_call | client
    body: dict[str, Any] = field(default_factory=dict)
    transcript: str | None = None


class ConversationLog:
    """Folds logged events into the ordered list of conversation items (see the module docstring)."""

    def __init__(self) -> None:
        self._items: dict[str, _Item] = {}
        self._client_n = 0

    def feed_all(self, records: Iterable[LogRecord]) -> ConversationLog:
        """Feed every record in log order; returns self."""
        for record in records:
            self.feed(record)
        return self

    def feed(self, record: LogRecord) -> None:
        """Apply one logged event."""
        ev = record.event
        etype = ev.get("type")
        if record.direction == "client":
            if etype == "conversation.item.create" and isinstance(ev.get("item"), dict):
                if str(ev.get("event_id", "")).startswith(REBUILD_PREFIX):
                    return
                self._client_n += 1
                key = str(ev["item"].get("id") or f"client_{self._client_n}")
                self._items[key] = _Item("client", body=dict(ev["item"]))
            return
        if etype == "input_audio_buffer.committed" and isinstance(ev.get("item_id"), str):
            self._items.setdefault(ev["item_id"], _Item("user_audio"))
        elif etype == "conversation.item.input_audio_transcription.completed":
            item = self._items.setdefault(str(ev.get("item_id")), _Item("user_audio"))
            item.transcript = str(ev.get("transcript") or "")
        elif etype == "response.output_item.done" and isinstance(ev.get("item"), dict):
            self._output_item(ev["item"])
        elif etype == "conversation.item.deleted":
            self._items.pop(str(ev.get("item_id")), None)

    def _output_item(self, item: dict[str, Any]) -> None:
        item_id = str(item.get("id"))
        if item.get("type") == "function_call":
            self._items[item_id] = _Item("function_call", body={
                "type": "function_call", "call_id": item.get("call_id"), "name": item.get("name"),
                "arguments": item.get("arguments") or "{}"})
        elif item.get("type") == "message" and item.get("role") == "assistant":
            text = " ".join(str(part.get("transcript") or part.get("text") or "")
                            for part in item.get("content") or [] if isinstance(part, dict)).strip()
            self._items[item_id] = _Item("assistant", transcript=text)

    def items(self) -> list[dict[str, Any]]:
        """The conversation items to re-create, in order (each a ``conversation.item.create`` ``item``)."""
        out: list[dict[str, Any]] = []
        for item in self._items.values():
            if item.kind == "user_audio":
                if item.transcript:
                    out.append({"type": "message", "role": "user",
                                "content": [{"type": "input_text", "text": item.transcript}]})
            elif item.kind == "assistant":
                if item.transcript:
                    out.append({"type": "message", "role": "assistant",
                                "content": [{"type": "output_text", "text": item.transcript}]})
            else:
                body = {k: v for k, v in item.body.items() if k != "id"}
                out.append(body)
        return out

    def owes_response(self) -> bool:
        """True when the last item is the caller's or a tool output, i.e. the agent has not answered it yet."""
        items = self.items()
        if not items:
            return False
        last = items[-1]
        return last.get("type") == "function_call_output" or last.get("role") == "user"


def parse_records(raw: Iterable[tuple[str, bytes]]) -> list[LogRecord]:
    """``(direction, body bytes)`` pairs → records; bodies that are not JSON objects are skipped."""
    records: list[LogRecord] = []
    for direction, data in raw:
        try:
            event = json.loads(data)
        except ValueError:
            continue
        if isinstance(event, dict):
            records.append(LogRecord(direction, event))
    return records


@dataclass(frozen=True, slots=True)
class CallLog:
    """What a rebuild reads from a call's RT log (:func:`read_call_log`)."""

    conversation: ConversationLog
    appended_bytes: int
    """Caller audio the log shows appended (bytes of ``input_audio_buffer.append`` audio, decoded length), each
    append counted once (:class:`~shared.fencing.OwnerFence`: after a handover, the current owner's copies)."""
    cut_off: bool
    """A ``response.created`` has no ``response.done``: a response was cut off (its owner died)."""


async def read_call_log(bus: Bus, call_id: str, *, previous: Owner | None = None) -> CallLog:
    """Replay the call's RT log into a :class:`CallLog`: only the event types it reads (:data:`LOGGED_CLIENT`,
    :data:`LOGGED_SERVER`), not the model's audio and transcript deltas that make up most of a call's log. The
    caller's audio appends (most of what is read) and the conversation's events are read side by side; with
    ``previous`` (a lapsed owner's entry) whose mark counts the audio it appended, only the appends of the log's
    tail are read (:func:`_appended_since`)."""
    wanted = [subjects.rt_client(call_id, t) for t in LOGGED_CLIENT if t != APPEND] + \
        [subjects.rt_server(call_id, t) for t in LOGGED_SERVER]
    since = tail_start(previous)
    if since is not None and previous is not None and previous.mark is not None and previous.mark.appended:
        counted = _appended_since(bus, call_id, since, previous.epoch, previous.mark.appended)
    else:
        counted = _appended(bus, call_id)
    (raw, cut_off), appended = await asyncio.gather(_conversation(bus, wanted), counted)
    return CallLog(ConversationLog().feed_all(parse_records(raw)), appended, cut_off)


async def _conversation(bus: Bus, wanted: list[str]) -> tuple[list[tuple[str, bytes]], bool]:
    """The conversation's logged events (direction, body) in log order, and whether a response was cut off."""
    raw: list[tuple[str, bytes]] = []
    open_responses: set[str] = set()
    async for env in bus.replay(wanted, subjects.RT_STREAM):
        parsed = subjects.parse(env.subject)
        raw.append((parsed.direction or "", env.data))
        if parsed.direction == "server" and parsed.rest in ("response.created", "response.done"):
            with contextlib.suppress(ValueError, AttributeError):
                rid = str((json.loads(env.data).get("response") or {}).get("id"))
                if parsed.rest == "response.created":
                    open_responses.add(rid)
                else:
                    open_responses.discard(rid)
    return raw, bool(open_responses)


def _audio_bytes(data: bytes) -> int:
    """Decoded length of an ``input_audio_buffer.append`` body's base64 ``audio`` (0 when unreadable)."""
    with contextlib.suppress(ValueError, AttributeError):
        audio = str(json.loads(data).get("audio") or "")
        return len(audio) * 3 // 4 - audio[-2:].count("=")
    return 0


async def _appended(bus: Bus, call_id: str) -> int:
    """Bytes of caller audio the log shows appended, each append once (:class:`CallLog`)."""
    appended = 0
    fence = OwnerFence()
    async for env in bus.replay(subjects.rt_client(call_id, APPEND), subjects.RT_STREAM):
        if not fence.current(env.headers):
            continue  # the previous owner's copy during a handover: the new owner appended it too
        appended += _audio_bytes(env.data)
    return appended


async def _appended_since(bus: Bus, call_id: str, since: datetime, epoch: int, mark: tuple[int, int]) -> int:
    """Bytes of caller audio appended over the call by a lapsed owner (``epoch``) whose mark counted ``mark[1]``
    up to its append of seq ``mark[0]``: the mark plus the owner's later appends (higher seq) stored from
    ``since`` on. Appends of older epochs are stale copies (as in :func:`_appended`)."""
    after_seq, appended = mark
    async for env in bus.streams.replay(subjects.rt_client(call_id, APPEND), subjects.RT_STREAM, since=since):
        if epoch_of(env.headers) == epoch and env.source == bus.source and (env.seq or 0) > after_seq:
            appended += _audio_bytes(env.data)
    return appended


async def rebuild(bus: Bus, call_id: str, send: Callable[[dict[str, Any]], Awaitable[None]],
                  logged: CallLog | None = None) -> CallLog:
    """Re-create a call's prior conversation in a new model session: wait (at most 5 s) for our own publishes to
    be acknowledged, read the log (:func:`read_call_log`; ``logged``: already read — after a crash, while the
    model connected) and ``send`` one ``conversation.item.create`` per item (``event_id`` ``sb_rebuild_<n>``;
    https://platform.openai.com/docs/api-reference/realtime-client-events/conversation/item/create). Returns what
    was read."""
    t0 = time.monotonic()
    if logged is None:
        await bus.flush_acks(5.0)
        logged = await read_call_log(bus, call_id)
    items = logged.conversation.items()
    for n, item in enumerate(items, 1):
        await send({"type": "conversation.item.create", "event_id": f"{REBUILD_PREFIX}{n}", "item": item})
    log.info("call %s: rebuilt %d item(s) from the log in %.2f s", call_id, len(items), time.monotonic() - t0)
    return logged
