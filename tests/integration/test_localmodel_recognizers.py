"""The recogniser process pool: streamed utterances equal whole ones, and a dead worker is replaced."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest

from services.localmodel.demo_tools import DEMO_INSTRUCTIONS, DEMO_TOOLS
from services.localmodel.grammar import LanguageModelSpec
from services.localmodel.recognizers import RecognizerError, RecognizerPool
from tests.integration.test_localmodel_asr import telephone

SPEC = LanguageModelSpec.from_session(DEMO_TOOLS, DEMO_INSTRUCTIONS)


@pytest.fixture
async def pool() -> AsyncIterator[RecognizerPool]:
    pool = RecognizerPool(2)
    await pool.warm(SPEC)
    yield pool
    await asyncio.to_thread(pool.shutdown)


async def test_streamed_utterances_match_whole_ones_across_workers(pool: RecognizerPool) -> None:
    lines = ("My name is John Smith", "No, thank you", "Hi, I would like to book an appointment for tomorrow at ten")
    audio = [telephone(line) for line in lines]
    whole = [await pool.recognize(SPEC, pcm) for pcm in audio]
    streams = [pool.stream(SPEC) for _ in audio]  # all open at once: spread over both workers
    for pcm, utterance in zip(audio, streams, strict=True):
        for i in range(0, len(pcm), 640):  # 40 ms pieces, as the session feeds them
            utterance.feed(pcm[i:i + 640])
    streamed = await asyncio.gather(*(u.finish() for u in streams))
    assert [t.text for t in streamed] == [t.text for t in whole]
    assert streamed[2].text.endswith("tomorrow at ten")
    with pytest.raises(RecognizerError):
        await streams[0].finish()  # finished once


async def test_a_dead_worker_fails_its_requests_and_is_replaced(pool: RecognizerPool) -> None:
    utterance = pool.stream(SPEC)
    victim = next(w for w in pool._workers if w.load)  # the worker holding the utterance
    os.kill(victim.process.pid, signal.SIGKILL)
    with pytest.raises(RecognizerError):
        await asyncio.wait_for(utterance.finish(), 10)
    for _ in range(100):
        if not victim.alive:
            break
        await asyncio.sleep(0.05)
    text = (await asyncio.wait_for(pool.recognize(SPEC, telephone("Yes please")), 60)).text
    assert text == "yes please"
    assert all(w.alive for w in pool._workers) and victim not in pool._workers


async def test_cancelled_utterance_frees_its_worker(pool: RecognizerPool) -> None:
    utterance = pool.stream(SPEC)
    utterance.feed(telephone("Hello"))
    utterance.cancel()
    assert sum(w.load for w in pool._workers) == 0
    assert (await pool.recognize(SPEC, telephone("No, thank you"))).text == "no thank you"
