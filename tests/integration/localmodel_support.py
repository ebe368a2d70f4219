"""Helpers for the local model's integration tests: an in-process server on a free port, strict validation of
every server event against ``openai.types.realtime`` (the union openai-agents validates with), and speech."""

from __future__ import annotations

import base64
import functools
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

import shared
from services.localmodel.server import LocalModelServer
from services.localmodel.settings import LocalModelSettings

SERVER_EVENT = TypeAdapter(RealtimeServerEvent)


def validate(event: dict[str, Any]) -> Any:
    """Validate one server event against the GA union (raises pydantic.ValidationError)."""
    return SERVER_EVENT.validate_python(event)


@asynccontextmanager
async def running_server(**overrides: Any) -> AsyncIterator[LocalModelServer]:
    """A local model on 127.0.0.1 and a free port (pacing fast unless overridden)."""
    values: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "pacing": "fast"}
    values.update(overrides)
    server = LocalModelServer(LocalModelSettings(**values))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


_RENDER = ("import sys; from shared.tts import synthesize_format; "
           "sys.stdout.buffer.write(synthesize_format(*sys.argv[1:]))")


@functools.cache
def fresh_speech(text: str, fmt: str = "audio/pcmu") -> bytes:
    """``text`` spoken by espeak-ng en-us+klatt in ``fmt``, rendered by a fresh Python process.

    libespeak-ng keeps state across utterances that no API call resets (not even ``espeak_Terminate`` +
    ``espeak_Initialize``), so in-process renderings of one sentence differ with what the process synthesised
    before — the local model's replies included — and so did what the recogniser heard. A fresh process
    renders the same bytes every time; cached per ``(text, fmt)``.

    Raises:
        subprocess.CalledProcessError: the rendering process failed (its stderr is attached).
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(shared.__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", _RENDER, text, fmt], check=True, capture_output=True,
                          env=env, timeout=60).stdout


def speech_ulaw(text: str, pad_ms: int = 300, tail_ms: int = 900) -> bytes:
    """``text`` spoken by espeak-ng en-us+klatt as μ-law 8 kHz (:func:`fresh_speech`) with leading/trailing
    silence."""
    return b"\xff" * (pad_ms * 8) + fresh_speech(text) + b"\xff" * (tail_ms * 8)


def b64(data: bytes) -> str:
    """Base64 text of ``data``."""
    return base64.b64encode(data).decode()


def frames(data: bytes, size: int = 160) -> list[bytes]:
    """``data`` cut into frames of ``size`` bytes (160 = 20 ms of μ-law)."""
    return [data[i:i + size] for i in range(0, len(data), size)]


class EventLog:
    """Reads raw server frames from an openai SDK connection, validating every one, and waits for types."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.events: list[dict[str, Any]] = []
        self._cursor = 0

    async def next(self, timeout: float = 30.0) -> dict[str, Any]:
        """The next server event (validated against the GA union)."""
        import asyncio
        import json

        raw = await asyncio.wait_for(self.conn.recv_bytes(), timeout)
        event: dict[str, Any] = json.loads(raw)
        validate(event)
        self.events.append(event)
        return event

    async def until(self, kind: str, timeout: float = 60.0, **match: Any) -> dict[str, Any]:
        """Read events until one of type ``kind`` (and fields equal to ``match``) arrives."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {kind} {match} within {timeout}s; saw {[e['type'] for e in self.events][-30:]}")
            event = await self.next(remaining)
            if event["type"] == kind and all(event.get(k) == v for k, v in match.items()):
                return event

    def types(self) -> list[str]:
        """Types of every event read so far."""
        return [e["type"] for e in self.events]
