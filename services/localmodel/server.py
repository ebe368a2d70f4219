"""The local model's WebSocket + HTTP server (``websockets`` asyncio API).

- ``GET /healthz`` → 200; ``GET /readyz`` → 200 once the recogniser is warm, else 503 (the supervisor polls it);
- ``/v1/realtime?model=...`` → WebSocket speaking the Realtime GA protocol
  (https://platform.openai.com/docs/api-reference/realtime). Any Bearer token is accepted unless a token is
  configured (then a missing/wrong one gets HTTP 401). A client sending
  ``OpenAI-Beta: realtime=v1`` gets the ``beta_api_shape_disabled`` error event and a close, as OpenAI answers.
- with ``sip_port`` set, the simulated SIP side (:mod:`.sip`: SIP legs, the Realtime calls API, sideband
  WebSockets) on its own port, sharing the recognisers;
- frames up to 24 MiB are read (a 15 MiB append in base64 is 20 MiB); larger frames close with 1009.

Recognition runs in worker processes shared by all sessions (:class:`.recognizers.RecognizerPool`, one per
CPU, each with its own :class:`~.asr.Recognizer`): pocketsphinx holds the GIL while decoding, so threads would
stall the event loop (and every other session's audio). Each utterance is decoded on one worker while it is
spoken, so at speech_stopped only its end remains to decode.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import http
import json
import logging
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from services.localmodel.demo_tools import DEMO_INSTRUCTIONS, DEMO_TOOLS
from services.localmodel.grammar import LanguageModelSpec
from services.localmodel.protocol import ProtocolError, error_event
from services.localmodel.recognizers import RecognizerPool
from services.localmodel.session import Send, Session
from services.localmodel.settings import LocalModelSettings
from services.localmodel.sip import SipSide, bound_port

__all__ = ["LocalModelServer"]

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 24 * 1024 * 1024
REALTIME_PATH = "/v1/realtime"


class LocalModelServer:
    """Serve Realtime sessions until :meth:`stop`. ``port`` is the bound port after :meth:`start`."""

    def __init__(self, settings: LocalModelSettings) -> None:
        self.settings = settings
        self.pool = RecognizerPool(os.cpu_count() or 2)
        self.sessions: set[Session] = set()
        self.ready = False
        self.port = settings.port
        self.first_audio_ms: list[float] = []
        """speech_stopped → first audio delta (ms) per response, for the benchmark (bounded)."""
        self._server: Server | None = None
        self.sip = SipSide(self._sip_session, webhook_url=settings.sip_webhook_url,
                           webhook_secret=settings.webhook_secret) if settings.sip_port is not None else None
        self.sip_port: int | None = None
        """The SIP side's bound port after :meth:`start` (None: off)."""
        self._sip_serving: tuple[asyncio.Task[None], Any] | None = None
        self._warm_task: asyncio.Task[None] | None = None
        self.on_first_audio: Callable[[float], None] | None = None

    async def start(self) -> None:
        """Bind and start serving; the recogniser warms up in the background (``/readyz`` 503 until then)."""
        self._server = await serve(self._handler, self.settings.host, self.settings.port,
                                   process_request=self._process_request, max_size=MAX_FRAME_BYTES,
                                   max_queue=64, compression=None, ping_interval=None)
        sock = next(iter(self._server.sockets))
        self.port = int(sock.getsockname()[1])
        if self.sip is not None and self.settings.sip_port is not None:
            self._sip_serving = await self.sip.serve(self.settings.host, self.settings.sip_port)
            self.sip_port = bound_port(self._sip_serving[1])
        self._warm_task = asyncio.create_task(self._warm())

    async def _warm(self) -> None:
        if self.settings.mode == "agent":  # build decoder, LM and CMN prior once in each worker process
            await self.pool.warm(LanguageModelSpec.from_session(DEMO_TOOLS, DEMO_INSTRUCTIONS))
        self.ready = True

    async def stop(self) -> None:
        """Close every connection (1001 going away), stop listening and shut the pool down."""
        if self.sip is not None and self._sip_serving is not None:
            await self.sip.end_all()
            task, server = self._sip_serving
            server.should_exit = True
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 10)
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
        if self._warm_task is not None:
            self._warm_task.cancel()
            with contextlib.suppress(BaseException):
                await self._warm_task
        await asyncio.to_thread(self.pool.shutdown)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            status = http.HTTPStatus.OK if self.ready else http.HTTPStatus.SERVICE_UNAVAILABLE
            return connection.respond(status, "ready\n" if self.ready else "starting\n")
        if path.rstrip("/") != REALTIME_PATH:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
        if self.settings.token:
            auth = request.headers.get("Authorization", "")
            expected = f"Bearer {self.settings.token}"
            if not hmac.compare_digest(auth.encode(), expected.encode()):
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "invalid or missing bearer token\n")
        if len(self.sessions) >= self.settings.max_sessions:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "too many sessions\n")
        return None

    def _record_first_audio(self, ms: float) -> None:
        if len(self.first_audio_ms) < 100_000:
            self.first_audio_ms.append(ms)
        if self.on_first_audio is not None:
            self.on_first_audio(ms)

    def _sip_session(self, send: Send, model: str) -> Session:
        """A conversation for an accepted SIP call (:mod:`.sip`)."""
        return Session(send, self.settings, self.pool.recognize, model=model, stream=self.pool.stream,
                       on_first_audio=self._record_first_audio)

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        async def send(event: dict[str, Any] | str) -> None:
            await ws.send(event if isinstance(event, str) else json.dumps(event, separators=(",", ":")))

        if ws.request.headers.get("OpenAI-Beta", "").lower().startswith("realtime"):
            await send(error_event(ProtocolError(
                "beta_api_shape_disabled",
                "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API.")))
            await ws.close(1008, "beta api shape disabled")
            return
        model = (parse_qs(urlsplit(ws.request.path).query).get("model") or ["gpt-realtime"])[0]
        session = Session(send, self.settings, self.pool.recognize, model=model, stream=self.pool.stream,
                          on_first_audio=self._record_first_audio)
        self.sessions.add(session)
        try:
            await session.start()
            async for frame in ws:
                await session.handle(frame)
        except ConnectionClosed:
            pass
        finally:
            self.sessions.discard(session)
            await session.close()
