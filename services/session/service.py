"""The session service: takes each ``call.<id>.started`` exactly once and supervises one task per call.

Taking calls: a core NATS **queue subscription** (queue group ``sessions``) on ``call.*.started``. The gateway
publishes ``started`` to JetStream (CALLS stream), and JetStream also delivers it to core subscribers, so a
queue subscription hands each call to exactly one running instance with no consumer round trip on the
call-setup path. A JetStream durable queue consumer was not chosen: it would redeliver ``started`` messages of
calls whose carrier leg is long gone after an outage (a session cannot join a phone call that has already
failed over), and its acks add a hop before the model connection can open. The trade-off: a ``started``
published while no session instance runs is not taken by anyone — the gateway's caller hears nothing and the
carrier times out, which is the correct outcome for a call with no agent.

Ownership (``services/session/ownership.py``): an instance claims each call it takes in the call-owners KV bucket
(epoch 1) and sends the epoch as ``Switchboard-Epoch`` on everything it publishes for the call.

- **Handover** (SIGTERM, :meth:`SessionService.stop`): the instance leaves the queue group, publishes
  ``call.<id>.session.handover`` for each live call and keeps serving it; one peer (queue group
  :data:`HANDOVER_GROUP`) takes the call over by compare-and-set (epoch + 1), rebuilds the conversation from the
  RT log and opens its own model session; when the peer's ``session.model_connected`` (higher epoch) arrives the
  old instance stops serving the call without a summary. A call nobody takes within ``handover_s`` is served to
  its end (up to ``SWITCHBOARD_DRAIN_S``), then left to lapse: an instance started meanwhile (a rolling update's
  new pod, a restart) takes it over as after a crash.
- **Takeover** after a crash: every instance watches the bucket; an entry not renewed for 2 s is taken over by
  whichever peer wins the compare-and-set, which rebuilds from the log and, when a response was cut off, says one
  short recovery line (:data:`services.session.call.RECOVERY_LINE`).

Supervision: each call runs in its own task; an exception ends only that call (logged, published as
``call.<id>.session.error`` with a speakable message) and never the service. JetStream publish failures that
survive the bus's retries are surfaced per call as ``call.<id>.session.error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from pathlib import Path

from nats.aio.subscription import Subscription

from shared import health, rollout, subjects
from shared.bus import Bus, Envelope, epoch_of
from shared.config import Settings
from shared.contracts import CallStarted, ContractError, SessionError, SessionHandover
from shared.errors import PublishFailedError

from .agent import AgentSpec, AgentSpecError, load_agent
from .call import Call, CallOptions, ModelEndpoint
from .ownership import LogMark, Owner, Ownership, Takeover
from .sideband import SIP_CARRIER, SidebandCall

__all__ = ["HANDOVER_GROUP", "QUEUE_GROUP", "SessionService", "endpoint_from_settings"]

log = logging.getLogger(__name__)

QUEUE_GROUP = "sessions"
CLAIM_S = 3.0
"""Seconds a stopping instance waits for a peer to claim a handed-over call (ownership renewals every 0.5 s)."""
HANDOVER_GROUP = "sessions-handover"
"""Queue group of the ``call.*.session.handover`` subscriptions: one peer answers each handover."""


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
                 options: CallOptions | None = None, handover_s: float = 10.0) -> None:
        self.bus = bus
        self.handover_s = handover_s
        """Seconds a stopping instance waits for a peer to confirm each handover before serving the call on."""
        self.ownership = Ownership(bus.js, replicas=settings.js_replicas, mark_of=self._mark_of)
        self.ownership.on_lost(self._on_lost)
        self.ownership.on_lapsed(self._on_lapsed)
        self.stopping = False
        self._handover_sub: Subscription | None = None
        self._handing_over: dict[str, tuple[asyncio.Event, asyncio.Event]] = {}
        """Calls being handed over: (a peer claimed it, the peer's model session is up)."""
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
        await self.ownership.start()
        self._handover_sub = await self.bus.subscribe(subjects.all_session_handovers(), self._on_handover,
                                                      queue=HANDOVER_GROUP)
        self._sub = await self.bus.subscribe(subjects.all_calls_started(), self._on_started, queue=QUEUE_GROUP)
        self.readiness.start(until=lambda: self.bus.nc.is_closed)
        self._ready_sub = await health.answer_on_bus(self.bus, "session", self.readiness)

    async def stop(self, *, drain_s: float = 0.0) -> None:
        """Stop taking calls (leave the queue groups) and hand each live call over to a peer; a call no peer
        confirms within ``handover_s`` is served until it ends or ``drain_s`` passed, then left without a
        summary: its ownership entry is marked released and a peer — or this service restarted — takes it over at
        once."""
        self.stopping = True
        await self.readiness.stop()
        if self._ready_sub is not None:
            await self._ready_sub.unsubscribe()
            self._ready_sub = None
        for sub in (self._sub, self._handover_sub):
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        self._sub = self._handover_sub = None
        handovers = [asyncio.create_task(self._hand_over(call)) for call in list(self.calls.values())]
        if handovers:
            await asyncio.wait(handovers)
        if self._tasks and drain_s > 0:
            await asyncio.wait(set(self._tasks.values()), timeout=drain_s)
        for call in list(self.calls.values()):  # not taken over, not ended: leave it to the next instance
            log.warning("call %s: stopping with the call live; its ownership is released for a peer or a restarted "
                        "instance to take it over", call.call_id)
            await self.ownership.leave(call.call_id)
            await call.hand_off()
        if self._tasks:
            await asyncio.wait(set(self._tasks.values()), timeout=10)
        await self.ownership.stop()

    async def _hand_over(self, call: Call) -> None:
        """Ask a peer to take ``call`` over; stop serving it once the peer's model session is up. No peer
        claims it within :data:`CLAIM_S` (none runs) or confirms within ``handover_s``: serve it on."""
        held = self.ownership.held.get(call.call_id)
        if held is None:
            return
        claimed, confirmed = asyncio.Event(), asyncio.Event()
        self._handing_over[call.call_id] = (claimed, confirmed)
        sub = await self.bus.subscribe(subjects.session_event(call.call_id, "model_connected"),
                                       lambda env: self._on_peer_connected(env, held[0].epoch))
        try:
            handover = SessionHandover(call_id=call.call_id, owner=self.ownership.instance, epoch=held[0].epoch)
            await self.bus.publish_event(subjects.session_handover(call.call_id), handover.encode(),
                                         call_id=call.call_id)
            try:
                await asyncio.wait_for(claimed.wait(), CLAIM_S)
                await asyncio.wait_for(confirmed.wait(), self.handover_s)
            except TimeoutError:
                log.warning("call %s: no peer took the call over (%s); serving it on", call.call_id,
                            "claimed, not confirmed" if claimed.is_set() else "nobody claimed it")
                return
            log.info("call %s: handed over", call.call_id)
            self.ownership.forget(call.call_id)
            await call.hand_off()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            self._handing_over.pop(call.call_id, None)

    async def _on_peer_connected(self, env: Envelope, epoch: int) -> None:
        events = self._handing_over.get(env.call_id or "")
        if events is not None and epoch_of(env.headers) > epoch:
            events[0].set()
            events[1].set()

    async def _on_handover(self, env: Envelope) -> None:
        """A peer is stopping: take its call over (compare-and-set on the epoch it announced)."""
        try:
            handover = SessionHandover.parse(env.data)
        except ContractError as exc:
            log.warning("ignoring malformed handover on %s: %s", env.subject, exc)
            return
        call_id, epoch = handover.call_id, handover.epoch
        if self.stopping or call_id in self.calls or handover.owner == self.ownership.instance:
            return
        owner, revision = await self.ownership.current(call_id)
        if owner is None or owner.epoch != epoch:
            return  # already taken (or gone)
        await self._take_over(call_id, owner, revision, "handover")

    async def _on_lapsed(self, call_id: str, owner: Owner, revision: int) -> None:
        """A call's owner stopped renewing (crashed): try to take the call over."""
        if self.stopping or call_id in self.calls:
            return
        await self._take_over(call_id, owner, revision, "lapse")

    async def _take_over(self, call_id: str, owner: Owner, revision: int, why: Takeover) -> None:
        started = await self.bus.last_message(subjects.CALLS_STREAM, subjects.call_started(call_id))
        ended = await self.bus.last_message(subjects.CALLS_STREAM, subjects.call_ended(call_id))
        if started is None or ended is not None:
            return
        try:
            info = CallStarted.parse(started.data)
        except ContractError as exc:
            log.warning("call %s: unreadable started in the log (%s); not taking it over", call_id, exc)
            return
        epoch = await self.ownership.take_over(call_id, previous=owner, revision=revision)
        if epoch is None:
            return  # another peer won
        log.info("call %s: taking over (%s) from %s at epoch %d", call_id, why, owner.owner, epoch)
        self._run_call(info, epoch, takeover=why, previous=owner if why == "lapse" else None)

    def _mark_of(self, call_id: str) -> LogMark | None:
        """Where the call's log stands, for its ownership entry: known once the call continues the log's seq
        (None before: a peer taking over after a crash then reads the whole log)."""
        call = self.calls.get(call_id)
        return None if call is None else call.position.mark(self.bus.current_seq(call_id))

    async def _on_lost(self, call_id: str, new_owner: Owner | None) -> None:
        """Fenced: another instance owns the call now. A handover in progress waits for the peer's
        confirmation (:meth:`_hand_over`); otherwise stop serving at once."""
        call = self.calls.get(call_id)
        if call_id in self._handing_over:
            self._handing_over[call_id][0].set()  # a peer claimed it; the handover waits for its confirmation
            return
        if call is None:
            return
        log.warning("call %s: fenced by %s; stopping", call_id, new_owner.owner if new_owner else "another instance")
        await call.hand_off()

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
        epoch = await self.ownership.claim(info.call_id)
        if epoch is None:
            log.info("call %s: already owned by another instance", info.call_id)
            return
        self._run_call(info, epoch)

    def _run_call(self, info: CallStarted, epoch: int, *, takeover: Takeover | None = None,
                  previous: Owner | None = None) -> None:
        spec = self.agent_for(info.agent, info.agent_version)
        log.info("call %s: agent %s version %s (epoch %d)", info.call_id, spec.name, spec.version, epoch)
        endpoint = self.endpoint.with_model(spec.model) if spec.model else self.endpoint
        self.bus.set_epoch(info.call_id, epoch)
        if info.carrier == SIP_CARRIER:  # accepted through the calls API, served over its sideband
            call: Call = SidebandCall(self.bus, spec, info, endpoint, self.options, takeover=takeover,
                                      api_url=self.settings.effective_openai_api_url)
        else:
            call = Call(self.bus, spec, info, endpoint, self.options, takeover=takeover)
        call.position.lapsed_owner = previous
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
            if not call.handed_over:
                await self.ownership.release(call.call_id)

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
