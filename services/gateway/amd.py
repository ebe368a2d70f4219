"""Carrier callbacks of outbound calls and transfers: answering-machine detection results and Plivo's transfer XML.

Answering-machine detection (AMD) — each carrier posts its verdict to the URL :mod:`.dialer` gave it, signed as
that carrier signs its webhooks (403 otherwise); the gateway logs it and publishes ``call.<id>.carrier.amd``
(:class:`~shared.contracts.CarrierAmd`) for the agent flow. Answers 204.

- ``POST /twilio/amd?call_id=``: form ``CallSid``, ``AnsweredBy`` (``human``, ``machine_start``,
  ``machine_end_beep``, ``machine_end_silence``, ``machine_end_other``, ``fax``, ``unknown``),
  ``MachineDetectionDuration`` (ms) (https://www.twilio.com/docs/voice/answering-machine-detection#webhook-parameters).
- ``POST /telnyx/amd?call_id=``: TeXML's ``AsyncAmdStatusCallback``, the same form fields
  (https://developers.telnyx.com/docs/voice/programmable-voice/answering-machine-detection).
- ``POST /vonage/amd?call_id=``: the call's event webhook (JSON); ``status`` ``human`` or ``machine`` is the
  verdict (https://developer.vonage.com/en/voice/voice-api/guides/answering-machine-detection), other statuses
  (``ringing``, ``answered`` …) are acknowledged and ignored.
- ``POST /plivo/amd?call_id=``: ``machine_detection_url``'s form: ``Machine`` ``true``/``false``, ``CallUUID``
  (https://www.plivo.com/docs/voice/concepts/machine-detection).

Transfer (Plivo only, :class:`~services.gateway.call_control_http.PlivoControl`): ``POST /plivo/transfer?to=``
answers the Plivo XML ``<Dial><Number>`` (``<Dial><User>`` for a ``sip:`` URI) that the call's A leg is transferred
to (https://www.plivo.com/docs/voice/xml/dial); signed with ``X-Plivo-Signature-V3``.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from plivo import plivoxml

from services.gateway.dialer import E164
from services.gateway.security import public_url_for
from shared import subjects
from shared.apidocs import XmlResponse
from shared.contracts import CarrierAmd

if TYPE_CHECKING:
    from services.gateway.app import Gateway

__all__ = ["CARRIER_CALLBACKS", "add_amd_routes", "human", "plivo_dial_xml"]

log = logging.getLogger("services.gateway.amd")

_NO_CONTENT = 204
CARRIER_CALLBACKS = ("/twilio/amd", "/telnyx/amd", "/vonage/amd", "/plivo/amd", "/plivo/transfer")
"""The routes here: carrier-signed, so no API token (the OpenAPI document says so)."""


def human(answered_by: str) -> bool | None:
    """True for ``human``, False for a machine (``machine…``) or ``fax``, None otherwise (``unknown``)."""
    if answered_by == "human":
        return True
    if answered_by.startswith("machine") or answered_by == "fax":
        return False
    return None


def plivo_dial_xml(to: str) -> str:
    """``<Response><Dial><Number>digits</Number></Dial></Response>`` (``<User>`` for a ``sip:`` URI), built with
    the plivo SDK's ``plivoxml``.

    Raises:
        ValueError: ``to`` is neither an E.164 number nor a ``sip:`` URI.
    """
    dial = plivoxml.DialElement()
    if to.startswith(("sip:", "sips:")):
        dial.add(plivoxml.UserElement(to))
    else:
        if re.fullmatch(E164, to) is None:
            raise ValueError("transfer target must be E.164 or a sip: URI")
        dial.add(plivoxml.NumberElement(to.removeprefix("+")))
    response = plivoxml.ResponseElement()
    response.add(dial)
    return str(response.to_string(False))


def add_amd_routes(app: FastAPI, gateway: Gateway) -> None:
    """Add the AMD callbacks and ``POST /plivo/transfer`` to ``app``."""
    settings = gateway.settings

    def signed_url(request: Request) -> str:
        return public_url_for(settings.public_url, request.url.scheme, request.url.netloc, request.url.path,
                              request.url.query)

    def call_id_of(request: Request) -> str | None:
        try:
            return subjects.validate_call_id(request.query_params.get("call_id") or "")
        except subjects.InvalidSubjectTokenError:
            return None

    async def publish(carrier: str, call_id: str, answered_by: str, carrier_call_id: str | None,
                      detection_ms: Any = None) -> Response:
        ms = int(detection_ms) if isinstance(detection_ms, str) and detection_ms.isdigit() else None
        amd = CarrierAmd(carrier=carrier, answered_by=answered_by[:64], human=human(answered_by),
                         carrier_call_id=carrier_call_id or None, detection_ms=ms)
        await gateway.bus.publish_event(subjects.carrier_amd(call_id), amd.encode(), call_id=call_id)
        log.info("call %s: %s answering-machine detection: %s", call_id, carrier, answered_by)
        return Response(status_code=_NO_CONTENT)

    def refused(carrier: str, why: str) -> Response:
        log.warning("rejected %s callback: %s", carrier, why)
        status = 403 if why == "bad signature" else 400
        return Response(why, status_code=status)

    responses: dict[int | str, Any] = {204: {"description": "published as call.<id>.carrier.amd"},
                                       400: {"description": "no valid call_id, or no verdict in the body"},
                                       403: {"description": "the carrier's signature is missing or wrong"}}

    async def form_amd(carrier: str, request: Request, valid: bool) -> Response:
        if not valid:
            return refused(carrier, "bad signature")
        form = {k: str(v) for k, v in (await request.form()).items()}
        call_id, answered_by = call_id_of(request), form.get("AnsweredBy", "")
        if call_id is None or not answered_by:
            return refused(carrier, "no call_id or AnsweredBy")
        return await publish(carrier, call_id, answered_by, form.get("CallSid"),
                             form.get("MachineDetectionDuration"))

    @app.post("/twilio/amd", status_code=_NO_CONTENT, responses=responses)
    async def twilio_amd(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        valid = gateway.signatures.valid(signed_url(request), form, request.headers.get("X-Twilio-Signature"))
        return await form_amd("twilio", request, valid)

    @app.post("/telnyx/amd", status_code=_NO_CONTENT, responses=responses)
    async def telnyx_amd(request: Request) -> Response:
        valid = gateway.telnyx.valid(await request.body(), request.headers)
        return await form_amd("telnyx", request, valid)

    @app.post("/vonage/amd", status_code=_NO_CONTENT, responses=responses)
    async def vonage_amd(request: Request) -> Response:
        body = await request.body()
        if not gateway.vonage.valid(request.headers.get("authorization"), body):
            return refused("vonage", "bad signature")
        try:
            event = await request.json()
        except ValueError:
            return refused("vonage", "the event body must be JSON")
        call_id = call_id_of(request)
        status = event.get("status") if isinstance(event, dict) else None
        if call_id is None:
            return refused("vonage", "no call_id")
        if status not in ("human", "machine"):
            return Response(status_code=_NO_CONTENT)  # another call event: nothing to report
        return await publish("vonage", call_id, str(status), _text(event.get("uuid")))

    @app.post("/plivo/amd", status_code=_NO_CONTENT, responses=responses)
    async def plivo_amd(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        if not gateway.plivo.valid("POST", signed_url(request), form,
                                   request.headers.get("X-Plivo-Signature-V3-Nonce"),
                                   request.headers.get("X-Plivo-Signature-V3")):
            return refused("plivo", "bad signature")
        call_id, machine = call_id_of(request), form.get("Machine", "").lower()
        if call_id is None or machine not in ("true", "false"):
            return refused("plivo", "no call_id or Machine")
        return await publish("plivo", call_id, "machine" if machine == "true" else "human", form.get("CallUUID"))

    @app.post("/plivo/transfer", response_class=XmlResponse,
              responses={200: {"content": {XmlResponse.media_type: {}}, "description": "Plivo XML <Dial>"},
                         400: {"description": "to is not E.164 or a sip: URI"},
                         403: {"description": "X-Plivo-Signature-V3 missing or wrong"}})
    async def plivo_transfer(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        if not gateway.plivo.valid("POST", signed_url(request), form,
                                   request.headers.get("X-Plivo-Signature-V3-Nonce"),
                                   request.headers.get("X-Plivo-Signature-V3")):
            return refused("plivo", "bad signature")
        try:
            document = plivo_dial_xml(request.query_params.get("to") or "")
        except ValueError as exc:
            return refused("plivo", str(exc))
        return Response(document, media_type=XmlResponse.media_type)


def _text(value: object) -> str | None:
    return str(value) if value not in (None, "") else None
