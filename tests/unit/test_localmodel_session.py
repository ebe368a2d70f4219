"""The local model session's turn bookkeeping with a fake recogniser: a response cancelled by a barge-in while
it waits for a caller turn's transcript must leave that turn to the next response; items the client creates
(a conversation rebuilt after a handover) set the dialogue state like the model's own."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import numpy.typing as npt

from services.localmodel.asr import Transcript
from services.localmodel.demo_tools import DEMO_INSTRUCTIONS, DEMO_TOOLS
from services.localmodel.grammar import LanguageModelSpec
from services.localmodel.session import Session
from services.localmodel.settings import LocalModelSettings


class HeldRecogniser:
    """Recognises each utterance as the next of ``texts``, but only once :attr:`release` is set."""

    def __init__(self, *texts: str) -> None:
        self.texts = list(texts)
        self.release = asyncio.Event()

    async def __call__(self, spec: LanguageModelSpec, pcm: npt.NDArray[np.int16]) -> Transcript:
        text = self.texts.pop(0)
        await self.release.wait()
        return Transcript(text, "test", 1.0, 0.0)


async def test_barge_in_while_a_transcript_is_pending_leaves_the_turn_to_the_next_response() -> None:
    sent: list[dict[str, Any] | str] = []

    async def send(event: dict[str, Any] | str) -> None:
        sent.append(event)

    recognise = HeldRecogniser("i need an appointment", "tomorrow please")
    session = Session(send, LocalModelSettings(pacing="fast"), recognise, model="gpt-realtime",
                      stream=lambda spec: None)  # type: ignore[arg-type,return-value]
    heard: list[str] = []
    on_user = session.policy.on_user

    def hear(text: str) -> Any:
        heard.append(text)
        return on_user(text)

    session.policy.on_user = hear  # type: ignore[method-assign]
    silence = np.zeros(1600, dtype=np.int16)
    try:
        await session._commit("item_first", bytes(3200), silence, None)
        first = session.start_response(None, None)
        await asyncio.sleep(0.05)  # the response now waits for the first transcript
        first.cancel("turn_detected")  # the caller speaks again
        assert first.task is not None
        await asyncio.wait({first.task})
        await session._commit("item_second", bytes(3200), silence, None)
        recognise.release.set()
        second = session.start_response(None, None)
        assert second.task is not None
        await asyncio.wait({second.task})
    finally:
        await session.close()
    assert " ".join(heard) == "i need an appointment tomorrow please"


def _create(item: dict[str, Any]) -> str:
    return json.dumps({"type": "conversation.item.create", "item": item})


def _text(role: str, text: str) -> dict[str, Any]:
    kind = "input_text" if role == "user" else "output_text"
    return {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}


async def _rebuilt_session(*items: dict[str, Any]) -> tuple[Session, list[dict[str, Any] | str]]:
    sent: list[dict[str, Any] | str] = []

    async def send(event: dict[str, Any] | str) -> None:
        sent.append(event)

    session = Session(send, LocalModelSettings(pacing="fast"), HeldRecogniser(), model="gpt-realtime",
                      stream=lambda spec: None)  # type: ignore[arg-type,return-value]
    await session.handle(json.dumps({"type": "session.update", "session": {
        "type": "realtime", "tools": DEMO_TOOLS, "instructions": DEMO_INSTRUCTIONS}}))
    for item in items:
        await session.handle(_create(item))
    return session, sent


async def test_a_conversation_rebuilt_by_the_client_sets_the_grammar_of_the_next_utterance() -> None:
    """After a handover the new owner re-creates the call with conversation.item.create and the caller answers
    the name question: that answer must be decoded with the name grammar, though this model never replied."""
    session, sent = await _rebuilt_session(
        _text("assistant", "Hello, thank you for calling Acme Dental. How can I help you today?"),
        _text("user", "hi i would like to book an appointment for tomorrow at ten"),
        _text("assistant", "May I have your name, please?"))
    try:
        assert not [e for e in sent if isinstance(e, dict) and e.get("type") == "error"]
        assert session._spec(listening=True).expect == "name"
    finally:
        await session.close()


async def test_a_rebuilt_tool_call_and_its_output_count_like_the_models_own() -> None:
    session, _ = await _rebuilt_session(
        _text("user", "book an appointment for tomorrow at ten for john smith"),
        _text("assistant", "To confirm: book appointment on Monday at 10 AM for John Smith. Shall I go ahead?"),
        _text("user", "yes"),
        {"type": "function_call", "call_id": "call_1", "name": "book_appointment",
         "arguments": json.dumps({"name": "John Smith", "date": "2026-11-23", "time": "10:00"})},
        {"type": "function_call_output", "call_id": "call_1", "output": json.dumps({"appointment_id": 7})},
        _text("assistant", "You're booked. Is there anything else I can help you with?"),
        _text("user", "no thank you"))
    try:
        assert session._spec(listening=True).expect is None
        reply = await session._decide()
        assert reply.call is not None and reply.call.name == "end_call"
    finally:
        await session.close()
