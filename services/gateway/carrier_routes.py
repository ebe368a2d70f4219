"""Routes of the codec carriers: each one a signed webhook that answers with the carrier's stream markup and a
media WebSocket run by :class:`~services.gateway.codec_stream.CodecStream` (docs/gateway.md, "Carriers").

- Telnyx: ``POST /telnyx/voice`` (TeXML application's voice URL; form body, ``Telnyx-Signature-Ed25519``) →
  TeXML ``<Connect><Stream url=".../telnyx/media?token=…" bidirectionalMode="rtp">``; ``WS /telnyx/media``.
- Vonage: ``GET|POST /vonage/voice`` (the application's answer URL; signed-webhook JWT) → NCCO ``connect`` to
  ``.../vonage/media`` (L16 16 kHz, the token as the upgrade's ``Authorization``); ``WS /vonage/media``.
- Plivo: ``POST /plivo/voice`` (the application's answer URL; ``X-Plivo-Signature-V3``) → ``<Stream
  bidirectional="true" keepCallAlive="true">.../plivo/media?token=…</Stream>``; ``WS /plivo/media``.

The agent is the gateway's default (``SWITCHBOARD_AGENT``) unless the webhook's query names one (``?agent=``,
part of the signed URL); ``?call_id=`` (an outbound call, :mod:`.dialer`) opens the stream under that call id
(400 when it is not a valid call id). A bad signature answers 403; a bad or reused stream token refuses the
upgrade (403).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from services.gateway.codec_stream import CodecStream
from services.gateway.security import TokenError, public_url_for
from shared import subjects
from shared.apidocs import XmlResponse, binary
from shared.carriers import plivo, telnyx, vonage
from shared.carriers.frames import Codec

if TYPE_CHECKING:
    from services.gateway.app import Gateway

__all__ = ["VONAGE_RATE", "add_carrier_routes"]


class NccoAction(BaseModel):
    """One action of a Vonage NCCO (https://developer.vonage.com/en/voice/voice-api/ncco-reference): ``action``
    plus that action's fields (``connect``: ``endpoint``, …)."""

    model_config = ConfigDict(extra="allow")
    action: str


def _answer(markup: str, stream: str) -> dict[int | str, Any]:
    return {**binary(XmlResponse.media_type, f"{markup}: a bidirectional stream to WS {stream}"),
            403: {"description": "webhook signature missing or wrong (or no key configured)"}}


log = logging.getLogger("services.gateway")

VONAGE_RATE = 16000
"""The ``audio/l16;rate=N`` the Vonage NCCO asks for (640-byte frames)."""


def add_carrier_routes(app: FastAPI, gateway: Gateway) -> None:
    """Add the Telnyx, Vonage and Plivo webhooks and media WebSockets to ``app``."""
    settings = gateway.settings

    def signed_url(request: Request) -> str:
        return public_url_for(settings.public_url, request.url.scheme, request.url.netloc, request.url.path,
                              request.url.query)

    def stream_url(request: Request, path: str, token: str | None) -> str:
        scheme = "wss" if request.url.scheme == "https" else "ws"
        return public_url_for(settings.public_url, scheme, request.url.netloc, path,
                              urlencode({"token": token}) if token else "")

    def params(request: Request, caller: str | None, called: str | None) -> dict[str, str]:
        found = {"agent": request.query_params.get("agent") or gateway.default_agent}
        if (call_id := request.query_params.get("call_id")) is not None:
            try:
                found["call_id"] = subjects.validate_call_id(call_id)
            except subjects.InvalidSubjectTokenError:
                raise HTTPException(400, "invalid call_id") from None
        if caller:
            found["caller"] = caller
        if called:
            found["called"] = called
        return found

    async def run_media(ws: WebSocket, token: str | None, codec: Codec) -> None:
        if not settings.insecure_dev or token:
            try:
                await gateway.tokens.check_stream(token)
            except TokenError as exc:
                log.warning("rejected %s upgrade: %s", ws.url.path, exc)
                await ws.close(1008, str(exc))  # before accept: the client gets HTTP 403
                return
        if not gateway.accepting:
            await ws.close(1013, "shutting down")
            return
        await ws.accept()
        await CodecStream(ws, gateway.bus, codec, **gateway.stream_options()).run()

    def refused(carrier: str, url: str) -> Response:
        log.warning("rejected %s webhook: bad signature (url %s)", carrier, url)
        return Response("invalid signature", status_code=403)

    # --- Telnyx ---------------------------------------------------------------------------------------

    @app.post("/telnyx/voice", response_class=XmlResponse,
              responses=_answer("TeXML <Connect><Stream>", "/telnyx/media"))
    async def telnyx_voice(request: Request) -> Response:
        body = await request.body()
        if not gateway.telnyx.valid(body, request.headers):
            return refused("telnyx", signed_url(request))
        form = {k: str(v) for k, v in (await request.form()).items()}
        token, _ = gateway.tokens.mint_stream()
        document = telnyx.build_texml(stream_url(request, "/telnyx/media", token),
                                      params(request, form.get("From"), form.get("To")))
        return Response(document, media_type="application/xml")

    @app.websocket("/telnyx/media")
    async def telnyx_media(ws: WebSocket) -> None:
        await run_media(ws, ws.query_params.get("token"), telnyx.TelnyxCodec())

    # --- Vonage ---------------------------------------------------------------------------------------

    async def vonage_voice(request: Request) -> Response:
        body = await request.body()
        if not gateway.vonage.valid(request.headers.get("authorization"), body):
            return refused("vonage", signed_url(request))
        fields: dict[str, Any] = dict(request.query_params)
        if body:
            try:
                posted = await request.json()
            except ValueError:
                return JSONResponse({"error": "the answer webhook body must be JSON"}, status_code=400)
            fields.update(posted if isinstance(posted, dict) else {})
        token, _ = gateway.tokens.mint_stream()
        headers = params(request, _text(fields.get("from")), _text(fields.get("to")))
        if fields.get("uuid"):
            headers["uuid"] = str(fields["uuid"])
        ncco = vonage.build_ncco(stream_url(request, "/vonage/media", None), headers, rate=VONAGE_RATE,
                                 authorization=f"Bearer {token}")
        return JSONResponse(ncco)

    # Vonage calls the answer URL with GET or POST (per application setting); one operation id per method
    for method in ("GET", "POST"):
        app.add_api_route("/vonage/voice", vonage_voice, methods=[method], response_model=list[NccoAction],
                          operation_id=f"vonage_voice_{method.lower()}",
                          responses={403: {"description": "signed-webhook JWT missing or wrong"}})

    @app.websocket("/vonage/media")
    async def vonage_media(ws: WebSocket) -> None:
        auth = ws.headers.get("authorization") or ""
        await run_media(ws, auth.removeprefix("Bearer ").strip() or None, vonage.VonageCodec())

    # --- Plivo ----------------------------------------------------------------------------------------

    @app.post("/plivo/voice", response_class=XmlResponse, responses=_answer("Plivo XML <Stream>", "/plivo/media"))
    async def plivo_voice(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        url = signed_url(request)
        if not gateway.plivo.valid("POST", url, form, request.headers.get("X-Plivo-Signature-V3-Nonce"),
                                   request.headers.get("X-Plivo-Signature-V3")):
            return refused("plivo", url)
        token, _ = gateway.tokens.mint_stream()
        document = plivo.build_stream_xml(stream_url(request, "/plivo/media", token),
                                          params(request, form.get("From"), form.get("To")))
        return Response(document, media_type="application/xml")

    @app.websocket("/plivo/media")
    async def plivo_media(ws: WebSocket) -> None:
        await run_media(ws, ws.query_params.get("token"), plivo.PlivoCodec())


def _text(value: object) -> str | None:
    return str(value) if value not in (None, "") else None
