"""openai-agents' RealtimeRunner (strict pydantic validation of every server event) against the local model:
a spoken request triggers a tool call that the SDK executes, and no validation error is reported."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from agents.realtime import RealtimeAgent, RealtimeRunner

from agents import function_tool
from tests.integration.localmodel_support import frames, running_server, speech_ulaw


async def test_runner_voice_turn_with_tool_call_has_no_validation_errors() -> None:
    calls: list[str] = []

    @function_tool
    def check_availability(date: str) -> str:
        """Check which appointment times are free on a date (YYYY-MM-DD)."""
        calls.append(date)
        return '{"available": ["09:00", "14:30"]}'

    agent = RealtimeAgent(name="receptionist", instructions="Greeting: Hello, Acme Dental.",
                          tools=[check_availability])
    runner = RealtimeRunner(agent, config={"model_settings": {
        "model_name": "gpt-realtime", "voice": "marin", "input_audio_format": "g711_ulaw",
        "output_audio_format": "g711_ulaw"}})
    async with running_server() as srv:
        for _ in range(600):
            if srv.ready:
                break
            await asyncio.sleep(0.05)
        session = await runner.run(model_config={
            "url": f"ws://127.0.0.1:{srv.port}/v1/realtime?model=gpt-realtime", "api_key": "sk-test"})
        errors: list[Any] = []
        kinds: list[str] = []
        async with session:
            async def speak() -> None:
                await asyncio.sleep(0.5)
                for chunk in frames(speech_ulaw("Could you check availability for tomorrow"), 400):
                    await session.send_audio(chunk)

            sender = asyncio.create_task(speak())
            tool_ended = False
            async with asyncio.timeout(60):
                async for event in session:
                    kinds.append(event.type)
                    if event.type == "error":
                        errors.append(event)
                    if event.type == "tool_end":
                        tool_ended = True
                    if tool_ended and event.type == "agent_end":
                        break
            await sender
    assert not errors, errors
    assert calls == [(dt.date.today() + dt.timedelta(days=1)).isoformat()]
    assert "audio" in kinds
