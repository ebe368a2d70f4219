"""The gateway's FastAPI application and ``main`` (``python -m services.gateway``).

Routes: ``POST /twilio/voice`` (TwiML ``<Connect><Stream>`` + ``<Redirect>`` to ``/twilio/voice?resume=<call id>``,
which reconnects the call, or ``<Hangup/>``/``<Dial>`` once it ended), ``WS /twilio/media`` (Twilio Media Streams),
``POST /telnyx/voice`` + ``WS /telnyx/media``, ``GET|POST /vonage/voice`` + ``WS /vonage/media``,
``POST /plivo/voice`` + ``WS /plivo/media`` (:mod:`.carrier_routes`), ``POST /calls/outbound`` (:mod:`.dialer`),
``POST /{twilio,telnyx,vonage,plivo}/amd`` + ``POST /plivo/transfer`` (:mod:`.amd`), ``POST /openai/webhook``
(OpenAI SIP calls, :mod:`.openai_sip`),
``POST /browser/token`` + ``WS /browser`` + ``GET /phone`` (browser calls), ``/healthz``, ``/readyz``,
``/metrics``, and the API reference ``/docs`` (Swagger UI), ``/redoc`` and ``/openapi.json`` from local assets
(:mod:`shared.apidocs`), public like the carrier-facing routes it describes (the document holds no data; with
``SWITCHBOARD_API_TOKEN`` it declares the Bearer scheme that ``POST /browser/token`` needs). Ready
(``shared.health``): still accepting calls, and the NATS connection answers a PING.
SIGTERM: :meth:`Gateway.drain` (``/readyz`` 503 at once, no new streams, live calls run up to
``SWITCHBOARD_DRAIN_S``, then resumable Twilio calls are detached and the rest end ``drain_timeout``), then uvicorn
stops.
Listens on ``SWITCHBOARD_HOST``:``SWITCHBOARD_GATEWAY_PORT`` (127.0.0.1:8080).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel

from services.gateway.amd import CARRIER_CALLBACKS, add_amd_routes
from services.gateway.browser import BrowserStream
from services.gateway.call import CallBridge
from services.gateway.call_control import controls_for
from services.gateway.carrier_routes import add_carrier_routes
from services.gateway.carrier_security import PlivoSignatures, TelnyxSignatures, VonageSignatures
from services.gateway.dialer import add_dial_routes
from services.gateway.handoff import detach_when_quiet
from services.gateway.openai_sip import OpenAISipCalls, add_openai_sip_routes
from services.gateway.security import (
    SESSION_COOKIE,
    SESSION_TTL_S,
    BrowserTokens,
    KvNonces,
    TokenError,
    TwilioSignatures,
    public_url_for,
)
from services.gateway.twilio import START_TIMEOUT_S, TwilioStream, twiml_response
from shared import health, subjects
from shared.apidocs import BEARER_SCHEME, XmlResponse, add_api_docs, binary, declare_bearer
from shared.bus import Bus
from shared.carriers import twilio as tw
from shared.config import Settings
from shared.contracts import CallEnded, ContractError
from shared.endreasons import EndReason
from shared.health import Readiness
from shared.http import TELEMETRY, add_ops_routes
from shared.runtime import ServiceContext, serve_http

__all__ = ["Gateway", "create_app", "main"]

log = logging.getLogger("services.gateway")

_STATIC = Path(__file__).parent / "static"
_SIGNATURE = "X-Twilio-Signature"


class Gateway:
    """Process-wide gateway state: bus, settings, signature checker, browser tokens, live calls."""

    def __init__(self, bus: Bus, settings: Settings, *, max_outbound_chunks: int = 1000,
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.bus = bus
        self.start_timeout_s = start_timeout_s
        """Seconds a carrier socket may stay open without ``start`` (closed 1008 then)."""
        self.settings = settings
        self.signatures = TwilioSignatures(settings.twilio_auth_token, insecure_dev=settings.insecure_dev)
        if not settings.twilio_auth_token and not settings.insecure_dev:
            log.warning("no SWITCHBOARD_TWILIO_AUTH_TOKEN: every Twilio request is refused")
        self.telnyx = TelnyxSignatures(settings.telnyx_public_key, insecure_dev=settings.insecure_dev)
        self.vonage = VonageSignatures(settings.vonage_signature_secret, insecure_dev=settings.insecure_dev)
        self.plivo = PlivoSignatures(settings.plivo_auth_token, insecure_dev=settings.insecure_dev)
        self.controls = controls_for(settings)
        """Call-control clients (transfer, hangup, DTMF, outbound calls through the carrier's REST API), by carrier."""
        if not settings.token_secret:
            log.warning("no SWITCHBOARD_TOKEN_SECRET: browser tokens are valid on this replica only")
        self.tokens = BrowserTokens(settings.token_secret, used=KvNonces(bus.js))
        self.calls: dict[str, CallBridge] = {}
        self.max_outbound_chunks = max_outbound_chunks
        self.accepting = True
        self.readiness: Readiness | None = None
        """Set by :func:`create_app`; re-evaluated at once when the drain begins."""

    @property
    def default_agent(self) -> str:
        """The agent named when the carrier passes none: the stem of ``SWITCHBOARD_AGENT``."""
        return self.settings.agent.stem

    def stream_options(self) -> dict[str, Any]:
        """Keyword arguments every carrier stream takes (:class:`~services.gateway.stream.CarrierStream`)."""
        return {"default_agent": self.default_agent, "calls": self.calls,
                "max_outbound_chunks": self.max_outbound_chunks,
                "audio_in_ms": self.settings.gateway_audio_in_ms, "start_timeout_s": self.start_timeout_s,
                "idle_s": self.settings.carrier_idle_s, "controls": self.controls,
                "session_lost_s": self.settings.session_lost_s or None}

    async def drain(self, drain_s: float) -> None:
        """Stop as a gateway with live calls should (SIGTERM): refuse new streams and answer ``/readyz`` 503 at
        once, let the live calls run until they end or ``drain_s`` seconds passed; then hand each Twilio call
        that can reconnect to another gateway (:meth:`CallBridge.detach`: closed with the resume marker, Twilio
        follows the TwiML ``<Redirect>``) at its next quiet moment (:func:`.handoff.detach_when_quiet`, a few
        seconds at most) and end the rest with ``drain_timeout`` (:meth:`end_all`)."""
        self.accepting = False
        if self.readiness is not None:
            await self.readiness.evaluate()
        deadline = time.monotonic() + drain_s
        if self.calls:
            log.info("draining: %d live call(s), at most %.0f s", len(self.calls), drain_s)
        while (live := [b.ended.wait() for b in self.calls.values() if not b.ended.is_set()]) \
                and time.monotonic() < deadline:
            waits = [asyncio.ensure_future(w) for w in live]
            await asyncio.wait(waits, timeout=deadline - time.monotonic())
            for w in waits:
                w.cancel()
        resumable = [b for b in self.calls.values() if b.resumable and not b.ended.is_set()]
        if resumable:  # Twilio reconnects them through another gateway (TwiML <Redirect>), each at a quiet moment
            quiet = await asyncio.gather(*(detach_when_quiet(b, "gateway_drain") for b in resumable))
            log.info("detached %d call(s), %d at a quiet moment", len(quiet), sum(quiet))
        await self.end_all()

    async def end_all(self, reason: str = EndReason.DRAIN_TIMEOUT) -> None:
        """End every live call with ``reason`` and close its socket with 1001 (going away); stop accepting."""
        self.accepting = False
        for bridge in list(self.calls.values()):
            await bridge.end(reason)
            with contextlib.suppress(Exception):
                await bridge.sink.close(1001, reason)


class BrowserToken(BaseModel):
    """``POST /browser/token``: a single-use token for ``WS /browser?token=`` and its expiry (unix seconds)."""

    token: str
    expires_at: int


class GatewayError(BaseModel):
    """An error answer of the gateway's JSON routes."""

    error: str


_TWIML = {**binary(XmlResponse.media_type, "TwiML: <Connect><Stream> to WS /twilio/media, then <Redirect> to "
                                           "/twilio/voice?resume=<call id> (with ?resume: reconnect the call, "
                                           "or <Hangup/>/<Dial> once it ended)"),
          400: {"description": "resume is not a valid call id"},
          403: {"description": "X-Twilio-Signature missing or wrong (or no SWITCHBOARD_TWILIO_AUTH_TOKEN)"}}
_TWILIO_WEBHOOK = {
    "parameters": [{"name": "X-Twilio-Signature", "in": "header", "required": False, "schema": {"type": "string"},
                    "description": "Twilio's request signature (https://www.twilio.com/docs/usage/security)"},
                   {"name": "resume", "in": "query", "required": False, "schema": {"type": "string"},
                    "description": "the call id to reconnect (the <Redirect> of an earlier answer)"}],
    "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
        "type": "object", "additionalProperties": {"type": "string"},
        "description": "Twilio's voice webhook parameters (CallSid, From, To, …)"}}}},
}
_BROWSER_SESSION = {"browserSession": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE,
                                       "description": "set by a POST /browser/token made with the API token"}}


def create_app(gateway: Gateway) -> FastAPI:
    """The FastAPI app for ``gateway`` (routes listed in the module docstring)."""

    readiness = Readiness([health.flag("accepting", lambda: gateway.accepting, "shutting down"),
                           health.nats_connection(gateway.bus.nc)])
    gateway.readiness = readiness
    sip = OpenAISipCalls(gateway.bus, gateway.settings, default_agent=gateway.default_agent)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await readiness.evaluate()
        readiness.start()
        try:
            yield
        finally:
            await readiness.stop()
            await sip.close()
            await gateway.end_all()  # normally none left: main drained them first

    app = FastAPI(title="Switchboard gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  telemetry=TELEMETRY)
    add_ops_routes(app, readiness)
    add_api_docs(app)  # public, like /twilio/voice and /phone: the document describes routes, it holds no data
    settings = gateway.settings
    declare_bearer(app, enabled=bool(settings.api_token), extra_schemes=_BROWSER_SESSION,
                   overrides={"/twilio/voice": [], "/openai/webhook": [],
                              "/browser/token": [BEARER_SCHEME, "browserSession"],
                              **{path: [] for path in CARRIER_CALLBACKS}})

    @app.post("/twilio/voice", response_class=XmlResponse, responses=_TWIML, openapi_extra=_TWILIO_WEBHOOK)
    async def twilio_voice(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        url = public_url_for(settings.public_url, request.url.scheme, request.url.netloc, request.url.path,
                             request.url.query)
        if not gateway.signatures.valid(url, form, request.headers.get(_SIGNATURE)):
            log.warning("rejected /twilio/voice: bad X-Twilio-Signature (url %s)", url)
            return Response("invalid signature", status_code=403)
        scheme = "wss" if request.url.scheme == "https" else "ws"
        stream_url = public_url_for(settings.public_url, scheme, request.url.netloc, "/twilio/media")
        resume = request.query_params.get("resume")
        if resume is not None:
            try:
                subjects.validate_call_id(resume)
            except subjects.InvalidSubjectTokenError:
                return Response("invalid resume call id", status_code=400)
            ended = await gateway.bus.last_message(subjects.CALLS_STREAM, subjects.call_ended(resume))
            if ended is not None:  # the call ended here or elsewhere: Twilio hangs up (or dials the transfer)
                try:
                    final = CallEnded.parse(ended.data)
                except ContractError as exc:
                    log.warning("resume of call %s: unreadable ended (%s): hanging up", resume, exc)
                    return XmlResponse(tw.build_end_twiml())
                to = final.transfer_to if final.reason == EndReason.TRANSFER else None
                return XmlResponse(tw.build_end_twiml(to))
            if await gateway.bus.last_message(subjects.CALLS_STREAM, subjects.call_started(resume)) is None:
                log.warning("resume of unknown call %s: hanging up", resume)
                return XmlResponse(tw.build_end_twiml())
        call_id = resume or subjects.new_call_id()
        redirect = public_url_for(settings.public_url, request.url.scheme, request.url.netloc, "/twilio/voice",
                                  urlencode({"resume": call_id}))
        return XmlResponse(twiml_response(stream_url, form, gateway.default_agent, call_id=call_id, redirect=redirect,
                                          resume=resume is not None))

    @app.websocket("/twilio/media")
    async def twilio_media(ws: WebSocket) -> None:
        url = public_url_for(settings.public_url, ws.url.scheme, ws.url.netloc, ws.url.path, ws.url.query)
        if not gateway.signatures.valid(url, {}, ws.headers.get(_SIGNATURE)):
            log.warning("rejected /twilio/media upgrade: bad X-Twilio-Signature (url %s)", url)
            await ws.close(1008, "invalid signature")  # before accept: the client gets HTTP 403
            return
        if not gateway.accepting:
            await ws.close(1013, "shutting down")
            return
        await ws.accept()
        await TwilioStream(ws, gateway.bus, **gateway.stream_options()).run()

    add_carrier_routes(app, gateway)
    add_dial_routes(app, gateway)
    add_amd_routes(app, gateway)
    add_openai_sip_routes(app, sip, lambda: gateway.accepting)

    def bearer_ok(request: Request) -> bool:
        given = request.headers.get("authorization", "")
        return bool(settings.api_token) and hmac.compare_digest(given.encode(),
                                                                f"Bearer {settings.api_token}".encode())

    @app.post("/browser/token", response_model=BrowserToken,
              responses={401: {"model": GatewayError, "description": "neither the API token nor a browser session"}})
    async def browser_token(request: Request) -> JSONResponse:
        bearer = bearer_ok(request)
        if not (bearer or gateway.tokens.session_valid(request.cookies.get(SESSION_COOKIE))
                or (settings.insecure_dev and not settings.api_token)):
            return JSONResponse({"error": "the API token (Bearer) or a browser session is required"},
                                status_code=401)
        token, expiry = gateway.tokens.mint()
        response = JSONResponse({"token": token, "expires_at": expiry})
        if bearer:  # the page keeps minting with the cookie, without holding the API token
            session, _ = gateway.tokens.mint_session()
            response.set_cookie(SESSION_COOKIE, session, max_age=SESSION_TTL_S, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https", path="/browser")
        return response

    @app.websocket("/browser")
    async def browser(ws: WebSocket) -> None:
        try:
            await gateway.tokens.check(ws.query_params.get("token"))
        except TokenError as exc:
            log.warning("rejected /browser upgrade: %s", exc)
            await ws.close(1008, str(exc))
            return
        await ws.accept()
        await BrowserStream(ws, gateway.bus, **gateway.stream_options(),
                            call_page_base=_console_base(ws, settings)).run()

    @app.get("/phone", include_in_schema=False)
    async def phone() -> FileResponse:
        return FileResponse(_STATIC / "phone.html", media_type="text/html")

    @app.get("/phone.js", include_in_schema=False)
    async def phone_js() -> FileResponse:
        return FileResponse(_STATIC / "phone.js", media_type="text/javascript")

    @app.get("/phone-worklet.js", include_in_schema=False)
    async def phone_worklet() -> FileResponse:
        return FileResponse(_STATIC / "phone-worklet.js", media_type="text/javascript")

    return app


def _console_base(ws: WebSocket, settings: Settings) -> str:
    """The recorder console's base URL as the browser reaches it: this host on ``SWITCHBOARD_RECORDER_PORT``
    (behind an ingress that maps paths instead, the link is only a hint)."""
    scheme = "https" if ws.url.scheme == "wss" else "http"
    return f"{scheme}://{ws.url.hostname}:{settings.recorder_port}"


async def main(ctx: ServiceContext) -> None:
    """Serve the gateway until the service stops (``SWITCHBOARD_HOST``:``SWITCHBOARD_GATEWAY_PORT``); on
    SIGTERM it drains first (:meth:`Gateway.drain`, ``SWITCHBOARD_DRAIN_S``)."""
    gateway = Gateway(ctx.bus, ctx.settings)
    log.info("gateway listening on %s:%d", ctx.settings.host, ctx.settings.gateway_port)
    await serve_http(ctx, create_app(gateway), ctx.settings.host, ctx.settings.gateway_port,
                     before_stop=lambda: gateway.drain(ctx.settings.drain_s))
