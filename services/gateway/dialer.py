"""Outbound calls: ``POST /calls/outbound`` creates a call through the carrier's REST API
(:meth:`~services.gateway.call_control.CallControl.dial`); the callee's answer connects the carrier's media stream to
this gateway under the call id chosen here, running the agent asked for.

- Twilio: ``calls.create`` with inline TwiML ``<Connect><Stream>`` to ``/twilio/media`` (the call id and agent as
  ``<Parameter>``s, then ``<Redirect>`` to ``/twilio/voice?resume=<call id>`` as for inbound calls).
- Telnyx, Vonage, Plivo: the carrier fetches its stream markup on answer from this gateway's voice webhook
  (``/telnyx/voice``, ``/vonage/voice``, ``/plivo/voice``) with ``?agent=<agent>&call_id=<call id>``, part of the
  signed URL.

Answering-machine detection (``machine_detection: true``): the carrier posts its verdict to ``POST
/<carrier>/amd?call_id=`` (:mod:`services.gateway.amd`), published as ``call.<id>.carrier.amd``.

The route needs the API token (``Authorization: Bearer``; with no token configured, only in insecure development
mode). Answers: 201 :class:`OutboundCreated`; 400 an unknown agent or a carrier without call control or a caller
ID; 401 no token; 422 a body that does not validate; 502 the carrier's API refused or was unreachable; 503 the
gateway is draining.
"""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from services.gateway.call_control import OutboundCall
from services.gateway.security import public_url_for
from services.gateway.twilio import twiml_response
from shared import subjects

if TYPE_CHECKING:
    from services.gateway.app import Gateway

__all__ = ["E164", "OutboundCreated", "OutboundRequest", "add_dial_routes"]

log = logging.getLogger("services.gateway.dialer")

E164 = r"^\+[1-9][0-9]{6,14}$"
"""An E.164 number: ``+``, country code, subscriber number; 8–16 characters (ITU-T E.164)."""


class OutboundRequest(BaseModel):
    """``POST /calls/outbound`` body."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    to: str = Field(pattern=E164, description="the number to call (E.164)")
    agent: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="the agent spec the call runs")
    carrier: Literal["twilio", "telnyx", "vonage", "plivo"] = "twilio"
    from_: str | None = Field(None, alias="from", pattern=E164,
                              description="caller ID (E.164); default SWITCHBOARD_OUTBOUND_FROM")
    machine_detection: bool = Field(False, description="ask the carrier for answering-machine detection")


class OutboundCreated(BaseModel):
    """``POST /calls/outbound`` answer (201): our call id (``call_…``, the id of every event of the call) and the
    carrier's id for the call (None when the carrier's create answer has none: Telnyx TeXML)."""

    model_config = ConfigDict(populate_by_name=True)

    call_id: str
    carrier: str
    carrier_call_id: str | None
    agent: str
    to: str
    from_: str = Field(alias="from")


class DialError(BaseModel):
    """An error answer of ``POST /calls/outbound``."""

    error: str


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def add_dial_routes(app: FastAPI, gateway: Gateway) -> None:
    """Add ``POST /calls/outbound`` to ``app``."""
    settings = gateway.settings

    def authorized(request: Request) -> bool:
        if not settings.api_token:
            return settings.insecure_dev
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {settings.api_token}".encode())

    def url(request: Request, path: str, query: dict[str, str] | None = None, *, ws: bool = False) -> str:
        scheme = request.url.scheme
        if ws:
            scheme = "wss" if scheme == "https" else "ws"
        return public_url_for(settings.public_url, scheme, request.url.netloc, path, urlencode(query or {}))

    @app.post("/calls/outbound", status_code=201, response_model=OutboundCreated, response_model_by_alias=True,
              responses={400: {"model": DialError, "description": "unknown agent, or the carrier cannot dial"},
                         401: {"model": DialError, "description": "the API token (Bearer) is required"},
                         502: {"model": DialError, "description": "the carrier's API refused or was unreachable"},
                         503: {"model": DialError, "description": "the gateway is draining (shutting down)"}})
    async def outbound(body: OutboundRequest, request: Request) -> JSONResponse:
        if not authorized(request):
            return _error(401, "the API token (Bearer) is required")
        if not gateway.accepting:
            return _error(503, "shutting down")
        if not (settings.agent.parent / f"{body.agent}.yaml").is_file():
            return _error(400, f"unknown agent {body.agent!r}")
        control = gateway.controls.get(body.carrier)
        if control is None:
            return _error(400, f"no call control configured for {body.carrier} (docs/gateway.md, 'Outbound calls')")
        from_ = body.from_ or settings.outbound_from
        if not from_:
            return _error(400, "no caller ID: give 'from' or set SWITCHBOARD_OUTBOUND_FROM")
        call_id = subjects.new_call_id()
        query = {"agent": body.agent, "call_id": call_id}
        twiml = None
        if body.carrier == "twilio":
            twiml = twiml_response(url(request, "/twilio/media", ws=True), {"From": from_, "To": body.to},
                                   body.agent, call_id=call_id,
                                   redirect=url(request, "/twilio/voice", {"resume": call_id}))
        call = OutboundCall(call_id=call_id, to=body.to, from_=from_, agent=body.agent,
                            answer_url=url(request, f"/{body.carrier}/voice", query), twiml=twiml,
                            amd_url=url(request, f"/{body.carrier}/amd", {"call_id": call_id})
                            if body.machine_detection else None)
        try:
            carrier_call_id = await control.dial(call)
        except Exception as exc:  # the SDK's / httpx's errors vary by vendor
            log.warning("outbound %s call %s failed: %s", body.carrier, call_id, type(exc).__name__)
            return _error(502, f"the {body.carrier} API refused the call or was unreachable ({type(exc).__name__})")
        log.info("outbound %s call %s (%s) placed for agent %s", body.carrier, call_id, carrier_call_id, body.agent)
        created = OutboundCreated(call_id=call_id, carrier=body.carrier, carrier_call_id=carrier_call_id,
                                  agent=body.agent, to=body.to, from_=from_)
        return JSONResponse(created.model_dump(by_alias=True), status_code=201)
