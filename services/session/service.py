"""The session service: takes each ``call.<id>.started`` exactly once and supervises one task per call.

Taking calls: a core NATS **queue subscription** (queue group ``sessions``) on ``call.*.started``. The gateway
publishes ``started`` to JetStream (CALLS stream), and JetStream also delivers it to core subscribers, so a
queue subscription hands each call to exactly one running instance with no consumer round trip on the
call-setup path. A JetStream durable queue consumer was not chosen: it would redeliver ``started`` messages of
calls whose carrier leg is long gone after an outage (a session cannot join a phone call that has already
failed over), and its acks add a hop before the model connection can open. The trade-off: a ``started``
published while no session instance runs is not taken by anyone — the gateway's caller hears nothing and the
carrier times out, which is the correct outcome for a call with no agent.

Supervision: each call runs in its own task; an exception ends only that call (logged, published as
``call.<id>.session.error`` with a speakable message) and never the service. JetStream publish failures that
survive the bus's retries are surfaced per call as ``call.<id>.session.error``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path

from nats.aio.subscription import Subscription

from shared import health, rollout, subjects
from shared.bus import Bus, Envelope
from shared.config import Settings
from shared.contracts import CallStarted, ContractError, SessionError
from shared.errors import PublishFailedError

from .agent import AgentSpec, AgentSpecError, load_agent
from .call import Call, CallOptions, ModelEndpoint

__all__ = ["QUEUE_GROUP", "SessionService", "endpoint_from_settings"]

log = logging.getLogger(__name__)

QUEUE_GROUP = "sessions"


def endpoint_from_settings(settings: Settings) -> ModelEndpoint:
    """The model endpoint in force: ``effective_realtime_url``; the OpenAI key only when set."""
    return ModelEndpoint(settings.effective_realtime_url, settings.openai_api_key, settings.model)


class SessionService:
    """Takes calls from the queue group and runs a :class:`~services.session.call.Call` for each.

    Args:
        bus: the service's bus (source ``session``).
        settings: process settings (agent path, model endpoint).
        endpoint: overrides the model endpoint derived from ``settings`` (tests, benchmarks).
        options: per-call tunables (audio batching, timeouts).
    """

    def __init__(self, bus: Bus, settings: Settings, *, endpoint: ModelEndpoint | None = None,
                 options: CallOptions | None = None) -> None:
        self.bus = bus
        self.settings = settings
        self.endpoint = endpoint or endpoint_from_settings(settings)
        self.default_agent = load_agent(settings.agent)
        self._agents: dict[str, AgentSpec] = {self.default_agent.name: self.default_agent}
        self.calls: dict[str, Call] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._sub: Subscription | None = None
        self.options = options or CallOptions()
        if self.options.capture_key is None and settings.capture_key:
            self.options = replace(self.options, capture_key=settings.capture_key)
        if settings.redaction or settings.redaction_patterns:  # settings add to what the options say
            self.options = replace(self.options, redaction=self.options.redaction or settings.redaction,
                                   redaction_patterns=(*self.options.redaction_patterns,
                                                       *settings.redaction_patterns),
                                   redaction_region=settings.redaction_region)
        self.failed_calls: list[str] = []
        self.readiness = health.Readiness([health.nats_connection(bus.nc)])
        """Answered on ``switchboard.ready.session`` while started (``shared.health``)."""
        self._ready_sub: Subscription | None = None

    async def start(self) -> None:
        """Subscribe to ``call.*.started`` in the queue group, watch for publish failures, answer readiness."""
        self.bus.on_publish_failure(self._on_publish_failure)
        self._sub = await self.bus.subscribe(subjects.all_calls_started(), self._on_started, queue=QUEUE_GROUP)
        self.readiness.start(until=lambda: self.bus.nc.is_closed)
        self._ready_sub = await health.answer_on_bus(self.bus, "session", self.readiness)

    async def stop(self) -> None:
        """Stop taking calls; end the calls in progress (each publishes its summary)."""
        await self.readiness.stop()
        if self._ready_sub is not None:
            await self._ready_sub.unsubscribe()
            self._ready_sub = None
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        for call in list(self.calls.values()):
            await call.end("session_shutdown")
        if self._tasks:
            await asyncio.wait(set(self._tasks.values()), timeout=10)

    def agent_for(self, name: str, version: str | None = None) -> AgentSpec:
        """The spec named in ``started.agent`` at ``started.agent_version``: the rollout's spec file for that
        version (``shared.rollout.spec_path``), else ``<agents dir>/<name>.yaml``, else the default agent."""
        key = f"{name}@{version}" if version else name
        if not name or key in self._agents:
            return self._agents.get(key, self.default_agent)
        agents_dir = Path(self.settings.agent).parent
        try:
            subjects.validate_call_id(name)  # same safe-token rule: no path tricks
            path = rollout.spec_path(agents_dir, name, version) if version else None
            path = path or agents_dir / f"{name}.yaml"
            spec = load_agent(path) if path.is_file() else self.default_agent
        except (AgentSpecError, rollout.RolloutError, subjects.InvalidSubjectTokenError) as exc:
            log.warning("agent %r unusable (%s); using %s", name, exc, self.default_agent.name)
            spec = self.default_agent
        if version and spec.version != version:
            log.warning("agent %s version %s asked for; the spec found is version %s", name, version, spec.version)
        self._agents[key] = spec
        return spec

    async def _on_started(self, env: Envelope) -> None:
        try:
            info = CallStarted.parse(env.data)
        except ContractError as exc:
            log.error("rejecting call.started on %s: %s", env.subject, exc)
            return
        if info.call_id in self.calls:
            return  # a redelivered started for a call this instance already runs
        spec = self.agent_for(info.agent, info.agent_version)
        log.info("call %s: agent %s version %s", info.call_id, spec.name, spec.version)
        endpoint = self.endpoint.with_model(spec.model) if spec.model else self.endpoint
        call = Call(self.bus, spec, info, endpoint, self.options)
        self.calls[info.call_id] = call
        task = asyncio.create_task(self._supervise(call), name=f"call-{info.call_id}")
        self._tasks[info.call_id] = task

    async def _supervise(self, call: Call) -> None:
        try:
            await call.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("call %s failed", call.call_id)
            self.failed_calls.append(call.call_id)
            await self._publish_error(call.call_id, "internal", "The session for this call failed.",
                                      detail=type(exc).__name__)
        finally:
            self.calls.pop(call.call_id, None)
            self._tasks.pop(call.call_id, None)

    async def _on_publish_failure(self, error: PublishFailedError, call_id: str | None) -> None:
        if call_id is None or error.subject.endswith(".session.error"):
            return
        await self._publish_error(call_id, "publish_failed", str(error), detail=error.subject)

    async def _publish_error(self, call_id: str, code: str, message: str, *, detail: str | None = None) -> None:
        error = SessionError(call_id=call_id, code=code, message=message, detail=detail or None)
        try:
            await self.bus.publish_event(subjects.session_event(call_id, "error"), error.encode(), call_id=call_id)
        except Exception:
            log.exception("could not publish session.error for %s", call_id)
