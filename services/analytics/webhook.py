"""The post-call webhook: a signed JSON summary of every ended call, POSTed to ``SWITCHBOARD_WEBHOOK_URL``.

Delivery: a durable JetStream pull consumer (``<prefix>-webhook``) of ``call.*.ended`` on CALLS with
``AckPolicy.EXPLICIT``, created with ``DeliverPolicy.NEW`` (calls that ended before the webhook was configured
are not sent). A message is acked after a 2xx answer; otherwise it is negatively acknowledged with a delay
from :data:`BACKOFF_S` (by delivery count) and JetStream redelivers it, at most :data:`MAX_DELIVER` times, after
which it is terminated and counted as failed. Counts and the last error are answered on
``switchboard.analytics.webhook`` (shown by ``switchboard status``).

Body (JSON, UTF-8)::

    {"type": "call.ended", "call_id": "call_...", "end_reason": "agent_hangup", "ended_at": "<ISO 8601>",
     "agent": "receptionist", "agent_version": "2", "carrier": "twilio", "from": "+1555...", "started_at": ...,
     "duration_ms": 41234.0, "kpis": {<the call's row of GET /kpis/calls/{id}>} | null}

Headers: ``Content-Type: application/json``, ``Switchboard-Event: call.ended``, ``Switchboard-Delivery``
(the ``Nats-Msg-Id`` of the ended event: the same on every retry, for de-duplication) and
``Switchboard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`` — verify by
recomputing over the raw body and comparing in constant time (:func:`verify`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy.ext.asyncio import AsyncEngine

from services.analytics import store
from shared import subjects
from shared.bus import Bus, Envelope, Headers
from shared.contracts import CallEnded, ContractError

__all__ = ["BACKOFF_S", "MAX_DELIVER", "WebhookSender", "WebhookStatus", "sign", "verify"]

log = logging.getLogger(__name__)

BACKOFF_S = (1.0, 2.0, 5.0, 15.0, 60.0, 300.0)
"""Redelivery delay after the n-th failed attempt (the last value repeats)."""
MAX_DELIVER = 10
"""Attempts per ended call before it is given up (counted in ``failed``)."""
KPI_WAIT_S = 10.0
"""How long a delivery waits for the analytics consumer to have applied the call's end (then sends without
``kpis``)."""


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Switchboard-Signature`` value for ``body`` at ``timestamp`` (unix s)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, body: bytes, header: str, *, tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """True when ``header`` is a valid signature of ``body`` no older than ``tolerance_s`` seconds."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        ts = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    expected = sign(secret, body, ts).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass(slots=True)
class WebhookStatus:
    """Delivery counters (answered on ``switchboard.analytics.webhook``)."""

    url: str
    configured: bool
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    last_error: str | None = None
    last_error_at: str | None = None


class WebhookSender:
    """Sends the post-call webhook (see the module docstring); ``engine`` supplies the KPI rows."""

    def __init__(self, bus: Bus, engine: AsyncEngine, url: str, secret: str | None, *,
                 durable: str = "analytics-webhook", timeout_s: float = 10.0) -> None:
        self.bus = bus
        self.engine = engine
        self.url = url
        self.secret = secret
        self.durable = durable
        self.timeout_s = timeout_s
        self.status = WebhookStatus(url, configured=bool(secret))
        if not secret:
            self.status.last_error = "SWITCHBOARD_WEBHOOK_SECRET is not set: nothing is sent"
        self.ready = asyncio.Event()

    async def answer_status(self, _env: Envelope) -> dict[str, Any]:
        """The micro endpoint handler: :class:`WebhookStatus` as JSON."""
        return asdict(self.status)

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver until ``stopping``; does nothing (but answer its status) without a secret."""
        if not self.secret:
            log.error("webhook %s configured without SWITCHBOARD_WEBHOOK_SECRET: not sending", self.url)
            self.ready.set()
            await stopping.wait()
            return
        js = self.bus.js
        name = subjects.CALLS_STREAM.name
        try:
            await js.consumer_info(name, self.durable)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(name, ConsumerConfig(
                durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.NEW,
                filter_subject=subjects.all_calls_ended(), ack_wait=60.0, max_deliver=MAX_DELIVER,
                inactive_threshold=None))
        psub = await js.pull_subscribe_bind(durable=self.durable, stream=name)
        self.ready.set()
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            try:
                while not stopping.is_set():
                    try:
                        msgs = await psub.fetch(16, timeout=1.0)
                    except (nats.errors.TimeoutError, TimeoutError):
                        continue
                    except nats.errors.ConnectionClosedError:
                        return
                    for msg in msgs:
                        await self._deliver(client, msg)
            finally:
                with contextlib.suppress(Exception):
                    await psub.unsubscribe()

    async def summary(self, msg: Msg) -> dict[str, Any]:
        """The JSON body for one ``call.<id>.ended`` message (waits up to :data:`KPI_WAIT_S` for its KPI row)."""
        try:
            reason: str | None = CallEnded.parse(msg.data).reason
        except ContractError:
            reason = None
        call_id = subjects.parse(msg.subject).call_id or ""
        row: dict[str, Any] | None = None
        deadline = time.monotonic() + KPI_WAIT_S
        while True:
            row = await store.call_figures(self.engine, call_id)
            if (row is not None and row.get("ended_ns")) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
        row = row or {}

        def iso(ns: Any) -> str | None:
            return datetime.fromtimestamp(ns / 1e9, UTC).isoformat() if isinstance(ns, int) else None

        started, ended_ns = row.get("started_ns"), row.get("ended_ns")
        return {"type": "call.ended", "call_id": call_id,
                "end_reason": reason,
                "ended_at": iso(ended_ns) or datetime.now(UTC).isoformat(), "started_at": iso(started),
                "agent": row.get("agent"), "agent_version": row.get("agent_version"),
                "carrier": row.get("carrier"), "from": row.get("from_number"),
                "duration_ms": (ended_ns - started) / 1e6 if started and ended_ns else None,
                "kpis": row or None}

    async def _deliver(self, client: httpx.AsyncClient, msg: Msg) -> None:
        assert self.secret is not None
        attempt = msg.metadata.num_delivered
        try:
            body = json.dumps(await self.summary(msg), separators=(",", ":")).encode()
            delivery = (msg.headers or {}).get(Headers.MSG_ID, str(msg.metadata.sequence.stream))
            headers = {"Content-Type": "application/json", "Switchboard-Event": "call.ended",
                       "Switchboard-Delivery": delivery,
                       "Switchboard-Signature": sign(self.secret, body, int(time.time()))}
            response = await client.post(self.url, content=body, headers=headers)
            if response.status_code // 100 != 2:
                raise RuntimeError(f"HTTP {response.status_code}")
        except Exception as exc:
            self.status.last_error = f"{msg.subject}: {exc or type(exc).__name__} (attempt {attempt})"
            self.status.last_error_at = datetime.now(UTC).isoformat()
            if attempt >= MAX_DELIVER:
                self.status.failed += 1
                log.error("webhook gave up on %s after %d attempts: %s", msg.subject, attempt, exc)
                await msg.term()
            else:
                self.status.retried += 1
                await msg.nak(delay=BACKOFF_S[min(attempt, len(BACKOFF_S)) - 1])
            return
        self.status.delivered += 1
        await msg.ack()
