"""The local model's dialogue state, derived from the conversation items it holds.

The policy (:class:`.policy.DialoguePolicy`) is a fold over the conversation: every item counts once, in
conversation order, whoever made it —

- a run of user messages (typed text, or audio once its transcript is in) is one turn: a sentence the VAD split
  at a pause ("Good morning." + "I need an appointment …") is one request;
- a ``function_call_output`` is a tool result;
- an assistant message or a ``function_call`` *created by the client* (``conversation.item.create``, e.g. a
  session that took a call over re-creating it) is what the agent said or did
  (:meth:`.policy.DialoguePolicy.on_assistant`, :meth:`~.policy.DialoguePolicy.on_function_call`); the model's
  own output items need nothing, the policy produced them;
- a turn or tool result followed by anything else was answered already: the policy takes it in and the reply it
  would have given is dropped; the unanswered end of the conversation is what the next response answers.

:meth:`Turns.catch_up` runs that fold synchronously — nothing can interleave between reading items and changing
the state — before the session picks the grammar for the caller's next utterance and before a response decides.
It stops at a user item whose transcript is still being recognised (later items wait for it); a response then
waits for that transcript and folds again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.localmodel.conversation import Conversation
from services.localmodel.policy import DialoguePolicy, Reply

__all__ = ["Turns", "Unanswered"]


@dataclass(frozen=True)
class Unanswered:
    """The end of the conversation no reply has answered yet (:meth:`Turns.catch_up`)."""

    items: list[dict[str, Any]]
    """A run of user messages, or one ``function_call_output``; empty when everything was answered."""
    waiting: asyncio.Future[str] | None = None
    """A transcript still being recognised that the fold could not pass (None: the fold reached the end)."""


def item_text(item: Mapping[str, Any]) -> str:
    """A message's words: the ``text`` or ``transcript`` of each content part, joined by spaces."""
    return " ".join(str(part.get("text") or part.get("transcript") or "")
                    for part in item.get("content") or [] if isinstance(part, Mapping)).strip()


class Turns:
    """One session's fold of its :class:`.Conversation` into its :class:`.DialoguePolicy` (module docstring)."""

    def __init__(self, conversation: Conversation, policy: DialoguePolicy) -> None:
        self.conversation = conversation
        self.policy = policy
        self.taken: set[str] = set()
        """Ids of the items the policy has taken in (answered, or absorbed as already answered)."""
        self.client_made: set[str] = set()
        """Ids of the assistant messages and function calls created by the client."""
        self.transcripts: dict[str, asyncio.Future[str]] = {}
        """Transcripts of user audio items still owed by recognition, by item id."""

    def created_by_client(self, item: Mapping[str, Any]) -> None:
        """Record an item added by ``conversation.item.create`` (only assistant messages and function calls
        need it: user messages and tool outputs are folded whoever made them)."""
        if item.get("type") == "function_call" or (item.get("type") == "message"
                                                   and item.get("role") == "assistant"):
            self.client_made.add(str(item["id"]))

    def transcript_owed(self, item_id: str) -> asyncio.Future[str]:
        """A future for the transcript of the user audio item ``item_id``; the recogniser sets it."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.transcripts[item_id] = future
        return future

    def catch_up(self) -> Unanswered:
        """Fold every item not yet taken in, in conversation order, up to the unanswered end (returned, not
        taken in) or up to a user item whose transcript is still owed (returned in ``waiting``)."""
        end: list[dict[str, Any]] = []
        for stored in self.conversation.items():
            item = stored.item
            item_id = str(item["id"])
            if item_id in self.taken:
                continue
            kind, role = item.get("type"), item.get("role")
            if kind == "message" and role == "user":
                if end and end[-1].get("type") == "function_call_output":
                    self._absorb(end)
                    end = []
                future = self.transcripts.get(item_id)
                end.append(item)
                if future is not None and not future.done():
                    return Unanswered(end, future)
            elif kind == "function_call_output":
                self._absorb(end)
                end = [item]
            elif item_id in self.client_made:
                self._absorb(end)
                end = []
                self.taken.add(item_id)
                if kind == "function_call":
                    self.policy.on_function_call(str(item.get("name") or ""), _arguments(item))
                else:
                    self.policy.on_assistant(item_text(item))
        return Unanswered(end)

    async def answer(self) -> Reply:
        """The policy's reply to the unanswered end (waiting for owed transcripts; the wait is shielded, so a
        barge-in cancelling the response leaves the transcript and its turn to the next response), or the
        greeting when nothing was said yet."""
        while True:
            end = self.catch_up()
            if end.waiting is None:
                break
            await asyncio.shield(end.waiting)
        if not end.items:
            has_user = any(s.item.get("role") == "user" for s in self.conversation.items())
            return self.policy.greeting() if not has_user else Reply("How can I help you?")
        self._take(end.items)
        if end.items[0]["type"] == "function_call_output":
            name, args = self._call_of(end.items[0])
            return self.policy.on_tool_output(name, args, str(end.items[0].get("output", "")))
        return self.policy.on_user(self._joined(end.items))

    def _absorb(self, items: list[dict[str, Any]]) -> None:
        """Take in an answered turn or tool result; the reply the policy would have given is dropped."""
        if not items:
            return
        self._take(items)
        if items[0]["type"] == "function_call_output":
            name, args = self._call_of(items[0])
            self.policy.on_tool_output(name, args, str(items[0].get("output", "")))
            return
        text = self._joined(items)
        if text:
            self.policy.on_user(text)

    def _take(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            self.taken.add(str(item["id"]))

    def _joined(self, items: list[dict[str, Any]]) -> str:
        texts = []
        for item in items:
            future = self.transcripts.pop(str(item["id"]), None)
            if future is not None and future.done() and not future.cancelled():
                texts.append(future.result())
            else:
                texts.append(item_text(item))
        return " ".join(t for t in texts if t.strip())

    def _call_of(self, output: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        call = next((s.item for s in self.conversation.items() if s.item["type"] == "function_call"
                     and s.item.get("call_id") == output.get("call_id")), None)
        return (str(call.get("name") or ""), _arguments(call)) if call else ("", {})


def _arguments(call: Mapping[str, Any]) -> dict[str, Any]:
    """A function call's arguments (``{}`` when they are not a JSON object)."""
    try:
        args = json.loads(call.get("arguments") or "{}")
    except (ValueError, TypeError):
        return {}
    return args if isinstance(args, dict) else {}
