"""The local model session's turn bookkeeping with a fake recogniser: a response cancelled by a barge-in while
it waits for a caller turn's transcript must leave that turn to the next response."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import numpy.typing as npt

from services.localmodel.asr import Transcript
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
