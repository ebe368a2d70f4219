"""The local model's simulated SIP side: OpenAI's SIP call flow, offline (``SWITCHBOARD_LOCALMODEL_SIP_PORT``).

What OpenAI does for a SIP call (https://platform.openai.com/docs/guides/realtime-sip), on one ASGI app:

- ``WS /sip/leg`` stands in for the SIP trunk. The caller (the caller simulator) sends the INVITE as its first
  text message, ``{"event": "invite", "headers": [{"name": "From", "value": "sip:+1555…@…"}, …]}``, then caller
  audio as binary frames (G.711 μ-law 8 kHz, any length), and echoes each ``{"event": "mark", "name": …}`` once
  the audio before it played (OpenAI paces RTP, so it knows what played; the simulated leg buffers, so it says).
  It receives the agent's audio as binary μ-law frames, each followed by such a mark; ``{"event": "clear"}`` when
  the caller talks over unplayed agent audio or a playing response was cancelled; ``{"event": "accepted"}``,
  ``{"event": "rejected", "status_code": N}`` and ``{"event": "refer", "target_uri": …}``. The socket closes
  (1000) when the call ends from our side; closing it is the caller's hangup (BYE). The sidebands get
  ``output_audio_buffer.started`` / ``stopped`` (all of a response's audio played) / ``cleared``, as from OpenAI.
- On the INVITE a call ``rtc_…`` is created and a ``realtime.call.incoming`` webhook is POSTed to the configured
  URL, signed per Standard Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64
  HMAC-SHA256 of "<id>.<timestamp>.<body>">``, the key being the base64 after ``whsec_``;
  https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md). No library that
  signs is installed (the openai SDK only verifies), so the HMAC is computed here with :mod:`hmac`.
- ``POST /v1/realtime/calls/{call_id}/accept`` (body: a Realtime ``session`` object) starts the call's
  conversation — a local model :class:`~services.localmodel.session.Session` configured with that session and
  μ-law in and out (the codec the SIP leg "negotiated"); ``/reject`` (``status_code``, default 603) ends a
  pending call; ``/hangup`` and ``/refer`` (``target_uri``) end a live one. Unknown or ended call: 404; a call
  in the wrong state: 409.
- ``WS /v1/realtime?call_id=`` is the sideband: the first one attached gets ``session.created`` and
  ``conversation.created``, then every server event of the call except ``response.output_audio.delta`` (the
  audio goes to the SIP leg only); its client events drive the conversation. It is refused (HTTP 403) for a call
  that is unknown or not accepted, and closed with 1000 when the call ends.

Any bearer token is accepted (the SIP side serves loopback development and tests).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.localmodel.protocol import new_id
from services.localmodel.session import Send, Session

__all__ = ["SipCall", "SipSide", "sign_webhook"]

log = logging.getLogger(__name__)

NewSession = Callable[[Send, str], Session]
"""``new_session(send, model)``: a local model session whose server events go to ``send``."""
State = Literal["pending", "live", "ended"]
_PCMU = {"type": "audio/pcmu"}
_INVITE_TIMEOUT_S = 10.0
_ANSWER_TIMEOUT_S = 30.0


def sign_webhook(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``webhook-signature`` value (``v1,<base64>``) of ``body`` (see the module docstring).

    Raises:
        ValueError: ``secret`` is ``whsec_`` followed by invalid base64.
    """
    try:
        key = base64.b64decode(secret[len("whsec_"):], validate=True) if secret.startswith("whsec_") \
            else secret.encode()
    except binascii.Error as exc:
        raise ValueError(f"invalid webhook secret: {exc}") from None
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


@dataclass(eq=False)
class SipCall:
    """One simulated SIP call: its leg, state, conversation and sidebands."""

    call_id: str
    leg: WebSocket
    headers: list[dict[str, str]]
    state: State = "pending"
    session: Session | None = None
    sidebands: set[WebSocket] = field(default_factory=set)
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end_reason: str = ""
    locks: dict[int, asyncio.Lock] = field(default_factory=dict)
    playing: str | None = None
    """The response whose audio went to the leg last (OpenAI's output audio buffer)."""
    marks_sent: int = 0
    """Audio chunks sent to the leg, each followed by a mark the leg echoes once it played the chunk."""
    marks_played: int = 0
    audio_complete: bool = False
    """The response in :attr:`playing` is done: no more of its audio will come."""

    async def send_to(self, ws: WebSocket, data: str | bytes) -> None:
        """Send one frame on ``ws`` (one writer at a time per socket); a closed socket is ignored."""
        lock = self.locks.setdefault(id(ws), asyncio.Lock())
        async with lock:
            with contextlib.suppress(Exception):
                if isinstance(data, bytes):
                    await ws.send_bytes(data)
                else:
                    await ws.send_text(data)

    async def emit(self, event: dict[str, Any] | str) -> None:
        """A server event of the conversation: audio to the leg, everything else to the sidebands; the output
        audio buffer's ``started``/``stopped``/``cleared`` as OpenAI reports them for SIP calls."""
        text = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
        parsed = json.loads(text) if isinstance(event, str) else event
        etype = parsed.get("type")
        if etype == "response.output_audio.delta":
            rid = str(parsed.get("response_id") or "")
            if self.playing != rid:
                self.playing, self.audio_complete = rid, False
                await self.tell({"type": "output_audio_buffer.started", "response_id": rid})
            with contextlib.suppress(binascii.Error, ValueError):
                await self.send_to(self.leg, base64.b64decode(str(parsed.get("delta", ""))))
                self.marks_sent += 1
                await self.send_to(self.leg, json.dumps({"event": "mark", "name": str(self.marks_sent)}))
            return
        for ws in list(self.sidebands):
            await self.send_to(ws, text)
        if etype == "response.done":
            response = parsed.get("response") or {}
            if self.playing is not None and response.get("id") == self.playing:
                if response.get("status") == "cancelled":
                    await self.clear()
                else:
                    self.audio_complete = True
                    await self.played(self.marks_played)
        elif etype == "input_audio_buffer.speech_started" and self.playing is not None \
                and self.marks_played < self.marks_sent:
            await self.clear()  # the caller talks over the agent

    async def tell(self, event: dict[str, Any]) -> None:
        """Send a server event of our own (a fresh ``event_id``) to every sideband."""
        text = json.dumps({"type": event["type"], "event_id": new_id("event"), **event}, separators=(",", ":"))
        for ws in list(self.sidebands):
            await self.send_to(ws, text)

    async def clear(self) -> None:
        """Drop the agent audio the leg has not played: ``clear`` to the leg, ``output_audio_buffer.cleared``."""
        rid, self.playing, self.marks_played = self.playing, None, self.marks_sent
        await self.send_to(self.leg, json.dumps({"event": "clear"}))
        await self.tell({"type": "output_audio_buffer.cleared", "response_id": rid})

    async def played(self, mark: int) -> None:
        """The leg played up to ``mark``; once a finished response's audio has all played:
        ``output_audio_buffer.stopped``."""
        self.marks_played = max(self.marks_played, mark)
        if self.playing is not None and self.audio_complete and self.marks_played >= self.marks_sent:
            rid, self.playing = self.playing, None
            await self.tell({"type": "output_audio_buffer.stopped", "response_id": rid})


class SipSide:
    """The SIP side of the local model (see the module docstring).

    Args:
        new_session: builds the conversation of an accepted call.
        webhook_url: where ``realtime.call.incoming`` is POSTed.
        webhook_secret: the Standard Webhooks key (``whsec_…``); None: legs are refused (nothing to sign with).
    """

    def __init__(self, new_session: NewSession, *, webhook_url: str, webhook_secret: str | None) -> None:
        self.new_session = new_session
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.calls: dict[str, SipCall] = {}
        self.app = Starlette(routes=[
            WebSocketRoute("/sip/leg", self._leg),
            WebSocketRoute("/v1/realtime", self._sideband),
            Route("/v1/realtime/calls/{call_id}/{action}", self._control, methods=["POST"]),
        ])

    # --- the SIP leg -------------------------------------------------------------------------------------

    async def _leg(self, ws: WebSocket) -> None:
        await ws.accept()
        if not self.webhook_secret:
            await ws.close(1008, "no SWITCHBOARD_OPENAI_WEBHOOK_SECRET: cannot sign the webhook")
            return
        try:
            invite = json.loads(await asyncio.wait_for(ws.receive_text(), _INVITE_TIMEOUT_S))
            headers = [{"name": str(h["name"]), "value": str(h["value"])} for h in invite["headers"]]
        except (TimeoutError, ValueError, KeyError, TypeError, WebSocketDisconnect) as exc:
            with contextlib.suppress(Exception):
                await ws.close(1008, f"expected an invite first: {type(exc).__name__}")
            return
        call = SipCall("rtc_" + secrets.token_hex(16), ws, headers)
        self.calls[call.call_id] = call
        try:
            await self._run_leg(call)
        finally:
            await self._end(call, call.end_reason or "bye")
            self.calls.pop(call.call_id, None)

    async def _run_leg(self, call: SipCall) -> None:
        problem = await self._post_webhook(call)
        if problem is not None:
            log.warning("sip call %s: webhook failed: %s", call.call_id, problem)
            self.calls.pop(call.call_id, None)  # unknown to the API before the caller hears why
            await call.leg.close(1011, f"webhook failed: {problem}"[:120])
            return
        reader = asyncio.create_task(self._read_leg(call))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(call.answered.wait()), _ANSWER_TIMEOUT_S)
            if call.state == "pending":
                await self._end(call, "no answer")
            await call.ended.wait()
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    async def _read_leg(self, call: SipCall) -> None:
        """Caller audio → ``input_audio_buffer.append`` while live; a close (or ``bye``) ends the call."""
        try:
            while True:
                message = await call.leg.receive()
                if message["type"] == "websocket.disconnect":
                    break
                audio = message.get("bytes")
                if audio and call.state == "live" and call.session is not None:
                    await call.session.handle(json.dumps({"type": "input_audio_buffer.append",
                                                          "audio": base64.b64encode(audio).decode()}))
                elif message.get("text"):
                    with contextlib.suppress(ValueError, TypeError, AttributeError):
                        event = json.loads(str(message["text"]))
                        if event.get("event") == "bye":
                            break
                        if event.get("event") == "mark":
                            await call.played(int(event["name"]))
        except WebSocketDisconnect:
            pass
        call.end_reason = call.end_reason or "bye"
        call.ended.set()

    async def _post_webhook(self, call: SipCall) -> str | None:
        """POST ``realtime.call.incoming``; the problem, or None when the webhook answered 2xx."""
        assert self.webhook_secret is not None
        body = json.dumps({"object": "event", "id": "evt_" + secrets.token_hex(12), "type": "realtime.call.incoming",
                           "created_at": int(time.time()),
                           "data": {"call_id": call.call_id, "sip_headers": call.headers}}).encode()
        webhook_id, timestamp = "wh_" + secrets.token_hex(12), int(time.time())
        headers = {"content-type": "application/json", "user-agent": "switchboard-localmodel",
                   "webhook-id": webhook_id, "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign_webhook(self.webhook_secret, webhook_id, timestamp, body)}
        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                response = await client.post(self.webhook_url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if response.is_success else f"HTTP {response.status_code} {response.text[:80]}"

    # --- the Realtime calls API -----------------------------------------------------------------------------

    async def _control(self, request: Request) -> Response:
        call_id, action = request.path_params["call_id"], request.path_params["action"]
        handlers: dict[str, Callable[[SipCall, dict[str, Any]], Awaitable[Response]]] = {
            "accept": self._accept, "reject": self._reject, "hangup": self._hangup, "refer": self._refer}
        handler = handlers.get(action)
        if handler is None:
            return _error(404, f"unknown action {action!r}")
        call = self.calls.get(call_id)
        if call is None:
            return _error(404, f"unknown call {call_id!r}")
        try:
            body = await request.json() if await request.body() else {}
        except ValueError:
            return _error(400, "the body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        return await handler(call, body)

    async def _accept(self, call: SipCall, body: dict[str, Any]) -> Response:
        if call.state != "pending":
            return _error(409, f"call {call.call_id} is {call.state}, not pending")
        session = self.new_session(call.emit, str(body.get("model") or "gpt-realtime"))
        given = body.get("audio")
        audio: dict[str, Any] = given if isinstance(given, dict) else {}
        config = {**body, "type": "realtime", "audio": {
            "input": {**(audio.get("input") or {}), "format": _PCMU},
            "output": {**(audio.get("output") or {}), "format": _PCMU}}}
        await session.handle(json.dumps({"type": "session.update", "session": config}))
        call.session, call.state = session, "live"
        call.answered.set()
        await call.send_to(call.leg, json.dumps({"event": "accepted", "call_id": call.call_id}))
        return Response(status_code=200)

    async def _reject(self, call: SipCall, body: dict[str, Any]) -> Response:
        if call.state != "pending":
            return _error(409, f"call {call.call_id} is {call.state}, not pending")
        status = body.get("status_code", 603)
        await call.send_to(call.leg, json.dumps({"event": "rejected", "status_code": status}))
        call.answered.set()
        await self._end(call, f"rejected {status}")
        return Response(status_code=200)

    async def _hangup(self, call: SipCall, body: dict[str, Any]) -> Response:
        if call.state != "live":
            return _error(409, f"call {call.call_id} is {call.state}, not live")
        await self._end(call, "hangup")
        return Response(status_code=200)

    async def _refer(self, call: SipCall, body: dict[str, Any]) -> Response:
        target = body.get("target_uri")
        if not isinstance(target, str) or not target:
            return _error(400, "target_uri is required")
        if call.state != "live":
            return _error(409, f"call {call.call_id} is {call.state}, not live")
        await call.send_to(call.leg, json.dumps({"event": "refer", "target_uri": target}))
        await self._end(call, "transfer")
        return Response(status_code=200)

    async def _end(self, call: SipCall, reason: str) -> None:
        """End ``call`` once: forget it, close the leg and every sideband (1000), close the conversation."""
        if call.state == "ended":
            return
        call.state, call.end_reason = "ended", call.end_reason or reason
        call.ended.set()
        self.calls.pop(call.call_id, None)  # the API no longer knows it (404)
        for ws in [call.leg, *call.sidebands]:
            with contextlib.suppress(Exception):
                await ws.close(1000, call.end_reason[:120])
        if call.session is not None:
            await call.session.close()

    # --- the sideband --------------------------------------------------------------------------------------

    async def _sideband(self, ws: WebSocket) -> None:
        call = self.calls.get(ws.query_params.get("call_id", ""))
        if call is None or call.state != "live" or call.session is None:
            await ws.close(1008, "unknown call or not accepted")  # before accept: HTTP 403
            return
        await ws.accept()
        first = not call.sidebands
        call.sidebands.add(ws)
        try:
            if first:
                await call.session.start()  # session.created + conversation.created, to this sideband
            while call.state == "live":
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                frame = message.get("text") or message.get("bytes")
                if frame and call.session is not None:
                    await call.session.handle(frame)
        except WebSocketDisconnect:
            pass
        finally:
            call.sidebands.discard(ws)

    # --- serving ---------------------------------------------------------------------------------------------

    async def serve(self, host: str, port: int) -> tuple[asyncio.Task[None], Any]:
        """Start uvicorn on ``host:port`` (0: a free port); returns its task and server (``bound_port``)."""
        import uvicorn

        server = uvicorn.Server(uvicorn.Config(self.app, host=host, port=port, log_level="warning",
                                               lifespan="off", access_log=False, ws_max_size=1 << 20))
        setattr(server, "capture_signals", contextlib.nullcontext)  # noqa: B010  the process's handlers decide
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()  # a bind failure is raised here
            await asyncio.sleep(0.01)
        return task, server

    async def end_all(self) -> None:
        """End every call (the server stops)."""
        for call in list(self.calls.values()):
            await self._end(call, "server stopping")


def bound_port(server: Any) -> int:
    """The port a started uvicorn server listens on."""
    return int(server.servers[0].sockets[0].getsockname()[1])


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)
