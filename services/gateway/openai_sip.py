"""OpenAI SIP calls at the gateway: ``POST /openai/webhook`` (``realtime.call.incoming``).

A SIP trunk points at OpenAI; OpenAI POSTs ``realtime.call.incoming`` to this route, signed per Standard Webhooks
(headers ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``;
https://platform.openai.com/docs/guides/webhooks, https://platform.openai.com/docs/guides/realtime-sip). The
route verifies the signature with the openai SDK (``client.webhooks.unwrap``, key
``SWITCHBOARD_OPENAI_WEBHOOK_SECRET``): a missing or wrong signature, a stale timestamp or no configured secret
answers 400 with the reason and publishes nothing. A verified ``realtime.call.incoming`` mints our call id and
publishes ``call.<id>.started`` (carrier ``openai_sip``, ``carrier_call_id`` = OpenAI's ``call_id``, ``from``/``to``
from the SIP ``From``/``To`` headers, and every ``X-Switchboard-<Name>`` SIP header as custom parameter
``<name>``, lower case with ``_`` for ``-``: how the caller simulator's ``run_id`` travels); then it answers 200.
Other webhook types are acknowledged (200) and ignored; a retried delivery of a call any replica already took
(same OpenAI ``call_id``, remembered for 120 s in the gateways' shared used-nonce KV bucket) answers 200 without a
second call.

Who accepts: the session that takes the call, not the gateway. The session service owns the agent specs (the
rollout's version of the spec chosen for this caller) and the model API key, so the instance that wins the call
(``services.session.sideband``) builds the session config, POSTs ``/realtime/calls/{call_id}/accept`` with it
and attaches to the sideband WebSocket; asking the session over NATS for a config the gateway would then send
adds a request/reply contract and a second place that must agree with the session about the spec. The gateway
keeps the one duty only it can do: when no session announces ``call.<id>.session.model_connected`` within
``SWITCHBOARD_SESSION_LOST_S`` (no session runs, or none could attach), it rejects the call
(``/realtime/calls/{call_id}/reject``, SIP 480 Temporarily Unavailable) and publishes ``call.<id>.ended`` with
reason ``session_lost``. Every later ``call.<id>.ended`` of a SIP call (caller hung up: the sideband closed;
agent hangup or transfer) is published by the session, which sees it first; the gateway carries no media.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import nats.errors
import openai
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from openai.types.webhooks import RealtimeCallIncomingWebhookEvent
from pydantic import BaseModel

from services.gateway.security import KvNonces
from shared import rollout, subjects
from shared.bus import Bus, Envelope
from shared.config import Settings, get_settings
from shared.contracts import CallEnded, CallStarted
from shared.endreasons import EndReason

__all__ = ["CARRIER", "OpenAISipCalls", "WebhookAnswer", "WebhookError", "add_openai_sip_routes",
           "call_started_for", "sip_user"]

log = logging.getLogger("services.gateway.openai_sip")

CARRIER = "openai_sip"
"""``call.<id>.started`` ``carrier`` of an OpenAI SIP call."""
AUDIO_FORMAT = "audio/pcmu"
"""The SIP leg's codec as ``started`` names it (G.711 μ-law; the audio never reaches Switchboard)."""
REJECT_STATUS = 480
"""SIP status of a call no session took (RFC 3261 §21.4.18, Temporarily Unavailable)."""
_CUSTOM_PREFIX = "x-switchboard-"
_SEEN_MAX = 10_000
_SIP_USER = re.compile(r"<?(?:sips?|tel):([^@;>]+)")
_KV_KEY = re.compile(r"[-_=a-zA-Z0-9]{1,200}")


def sip_user(value: str | None) -> str | None:
    """The user part of a SIP ``From``/``To`` header value (``"A" <sip:+1555@host>;tag=x`` → ``+1555``);
    None when the value holds no SIP or tel URI."""
    if not value:
        return None
    match = _SIP_USER.search(value)
    return match.group(1) if match else None


def call_started_for(event: RealtimeCallIncomingWebhookEvent, *, call_id: str, agent: str,
                     agent_version: str | None) -> CallStarted:
    """The ``call.<id>.started`` of a verified ``realtime.call.incoming`` (see the module docstring).

    Raises:
        shared.contracts.ContractError: the event yields an invalid ``started`` (not expected: the call id is
            ours and the format fixed).
    """
    headers = {h.name.lower(): h.value for h in event.data.sip_headers}
    custom = {name[len(_CUSTOM_PREFIX):].replace("-", "_"): value for name, value in headers.items()
              if name.startswith(_CUSTOM_PREFIX) and len(name) > len(_CUSTOM_PREFIX)}
    return CallStarted(call_id=call_id, carrier=CARRIER, agent=agent, agent_version=agent_version,
                       audio_format=AUDIO_FORMAT, from_=sip_user(headers.get("from")), to=sip_user(headers.get("to")),
                       carrier_call_id=event.data.call_id, stream_id=headers.get("call-id"),
                       custom_parameters=custom, started_at=datetime.now(UTC).isoformat())


class WebhookAnswer(BaseModel):
    """``POST /openai/webhook``'s 200 answer: the call started (or already started: ``duplicate``), or the type of
    an event that is not handled (``ignored``)."""

    call_id: str | None = None
    duplicate: bool = False
    ignored: str | None = None


class WebhookError(BaseModel):
    """``POST /openai/webhook``'s 400/503 answer: why the delivery was refused."""

    error: str


class OpenAISipCalls:
    """The gateway side of OpenAI SIP calls: verify the webhook, publish ``started``, reject unclaimed calls.

    Args:
        bus: the gateway's bus.
        settings: ``openai_webhook_secret``, ``effective_openai_api_url``, ``openai_api_key``, ``session_lost_s``.
        default_agent: the agent a SIP call runs (the stem of ``SWITCHBOARD_AGENT``).
        claim_s: seconds a session has to announce ``model_connected`` before the call is rejected
            (default ``settings.session_lost_s``; 0 there means 10 s: a SIP call cannot wait forever).
    """

    def __init__(self, bus: Bus, settings: Settings, *, default_agent: str, claim_s: float | None = None) -> None:
        self.bus = bus
        self.settings = settings
        self.default_agent = default_agent
        self.claim_s = claim_s if claim_s is not None else (settings.session_lost_s or 10.0)
        self.client = openai.AsyncOpenAI(api_key=settings.openai_api_key or settings.localmodel_token or "local",
                                         base_url=settings.effective_openai_api_url,
                                         webhook_secret=settings.openai_webhook_secret, max_retries=2, timeout=10.0)
        self.nonces = KvNonces(bus.js)
        """Calls taken by any replica (the browser tokens' used-nonce bucket, keys ``sip_<OpenAI call id>``)."""
        self._seen: OrderedDict[str, str] = OrderedDict()
        """OpenAI call id → our call id, for retried deliveries (bounded)."""
        self._watches: set[asyncio.Task[None]] = set()
        if not settings.openai_webhook_secret:
            log.warning("no SWITCHBOARD_OPENAI_WEBHOOK_SECRET: every OpenAI webhook is refused")

    async def incoming(self, body: bytes, headers: dict[str, str]) -> JSONResponse:
        """Handle one webhook delivery (see the module docstring); never raises for bad input."""
        if not self.settings.openai_webhook_secret:
            return JSONResponse({"error": "no webhook secret configured (SWITCHBOARD_OPENAI_WEBHOOK_SECRET)"},
                                status_code=400)
        try:
            event = self.client.webhooks.unwrap(body, headers)
        except openai.InvalidWebhookSignatureError as exc:
            log.warning("rejected /openai/webhook: %s", exc)
            return JSONResponse({"error": f"invalid webhook signature: {exc}"}, status_code=400)
        except ValueError as exc:  # a missing webhook-* header, or a body that is not JSON / not UTF-8
            log.warning("rejected /openai/webhook: %s", exc)
            return JSONResponse({"error": f"invalid webhook: {exc}"}, status_code=400)
        if not isinstance(event, RealtimeCallIncomingWebhookEvent):
            return JSONResponse({"ignored": str(getattr(event, "type", "unknown"))})
        openai_call = event.data.call_id
        known = self._seen.get(openai_call)
        if known is not None:
            return JSONResponse({"call_id": known, "duplicate": True})
        if not await self._first_delivery(openai_call):
            return JSONResponse({"duplicate": True})  # another replica took this call
        call_id = subjects.new_call_id()
        self._seen[openai_call] = call_id
        while len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)
        headers_by_name = {h.name.lower(): h.value for h in event.data.sip_headers}
        caller = sip_user(headers_by_name.get("from"))
        version = rollout.choose(get_settings().agent.parent, self.default_agent, caller or call_id).version
        started = call_started_for(event, call_id=call_id, agent=self.default_agent, agent_version=version)
        claimed = asyncio.Event()

        async def on_event(_: Envelope) -> None:
            claimed.set()

        subs = [await self.bus.subscribe(subjects.session_event(call_id, "model_connected"), on_event),
                await self.bus.subscribe(subjects.call_ended(call_id), on_event)]  # before started: none missed
        watch = asyncio.create_task(self._watch_claim(call_id, openai_call, claimed, subs, time.monotonic()),
                                    name=f"sip-claim-{call_id}")
        self._watches.add(watch)
        watch.add_done_callback(self._watches.discard)
        await self.bus.publish_event(subjects.call_started(call_id), started.encode(), call_id=call_id)
        log.info("call %s started (%s %s)", call_id, CARRIER, openai_call)
        return JSONResponse({"call_id": call_id})

    async def _first_delivery(self, openai_call: str) -> bool:
        """Claim ``openai_call`` for this replica in the shared used-nonce bucket (entries live 120 s: a retry
        of a ringing call's webhook comes within seconds); True when no replica had it. JetStream unreachable:
        True (a duplicate call beats a lost one; this replica's own retries are still caught)."""
        key = "sip_" + (openai_call if _KV_KEY.fullmatch(openai_call)
                        else hashlib.sha256(openai_call.encode()).hexdigest())
        now = time.time()
        try:
            return await self.nonces.claim(key, now + 120.0, now)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("could not check webhook %s against other replicas (%s)", openai_call, exc)
            return True

    async def _watch_claim(self, call_id: str, openai_call: str, claimed: asyncio.Event, subs: list[Any],
                           since: float) -> None:
        """Reject the call when no session connects to it within :attr:`claim_s` (and it did not end)."""
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(claimed.wait(), self.claim_s)
            if claimed.is_set():
                return
            log.warning("call %s (%s): no session took it within %.1f s; rejecting", call_id, openai_call,
                        self.claim_s)
            try:
                await self.client.realtime.calls.reject(openai_call, status_code=REJECT_STATUS)
            except openai.OpenAIError as exc:
                log.warning("call %s: reject failed: %s", call_id, exc)
            ended = CallEnded(reason=EndReason.SESSION_LOST, duration_ms=(time.monotonic() - since) * 1000.0,
                              carrier=CARRIER, carrier_call_id=openai_call,
                              error=f"no session took the call within {self.claim_s:g} s")
            await self.bus.publish_event(subjects.call_ended(call_id), ended.encode(), call_id=call_id)
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def close(self) -> None:
        """Stop watching (pending calls are left to OpenAI's own timeout) and close the REST client."""
        for task in list(self._watches):
            task.cancel()
        for task in list(self._watches):
            with contextlib.suppress(BaseException):
                await task
        await self.client.close()


_WEBHOOK_DOC: dict[str, Any] = {
    "parameters": [{"name": name, "in": "header", "required": True, "schema": {"type": "string"},
                    "description": f"Standard Webhooks {name} (https://platform.openai.com/docs/guides/webhooks)"}
                   for name in ("webhook-id", "webhook-timestamp", "webhook-signature")],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "description": "an OpenAI webhook event (realtime.call.incoming is handled)"}}}},
}


def add_openai_sip_routes(app: FastAPI, calls: OpenAISipCalls, accepting: Callable[[], bool]) -> None:
    """``POST /openai/webhook`` on ``app`` (public: the signature is the authentication). While ``accepting()``
    is false (the gateway drains) it answers 503, so OpenAI delivers the webhook again (to another replica)."""

    @app.post("/openai/webhook", openapi_extra=_WEBHOOK_DOC, response_model=WebhookAnswer,
              responses={400: {"model": WebhookError,
                               "description": "signature missing or wrong, stale timestamp, or no secret"},
                         503: {"model": WebhookError, "description": "the gateway is shutting down"}})
    async def openai_webhook(request: Request) -> JSONResponse:
        if not accepting():
            return JSONResponse({"error": "shutting down"}, status_code=503)
        return await calls.incoming(await request.body(), dict(request.headers))
