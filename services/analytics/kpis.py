"""KPI definitions: the per-call figures computed from a call's events, and the formulas that aggregate them.

This module is the one place the KPIs are defined (the analytics service, ``GET /kpis``, ``switchboard kpis``
and the console all use it). Pure code, no I/O. Event shapes: docs/events.asyncapi.yaml
for ``call.<id>.*`` and https://platform.openai.com/docs/api-reference/realtime (Realtime GA) for ``rt.<id>.*``.

Per-call figures (:class:`CallFigures`, updated one event at a time by :func:`apply`, in stream order per
stream):

- **first-response latency** (ms, one value per caller turn): the first-audio figure of
  :class:`shared.callfigures.FirstAudio` (``speech_stopped`` → the next ``response.output_audio.delta``), by
  the ``Switchboard-Ts`` publish times (the session's clock).
- **interruptions**: ``speech_started`` while a response is in progress (``response.created`` seen, its
  ``response.done`` not yet), plus every ``conversation.item.truncate`` the session sends without such a
  ``speech_started`` (caller speech over agent audio still playing after ``response.done``). An interruption
  **succeeds** when the agent stops: that response ends with ``status: cancelled`` or the session truncates
  the agent's audio (``conversation.item.truncate``) before the next response starts.
- **tool calls / tool errors**: ``response.function_call_arguments.done`` / the session's
  ``function_call_output`` whose output is a JSON object with an ``error`` key.
- **escalated**: ``transfer_to_human`` was called, or the call ended with reason ``transfer``.
- **task completed**: ended with ``agent_hangup`` (the agent closed the conversation), not escalated, and at
  least one tool other than ``end_call``/``transfer_to_human`` succeeded.
- **dropped**: ended with a reason in :data:`DROP_REASONS` (the call broke rather than finished).
- **cost** (USD estimate): :class:`shared.callfigures.CallCost` — the summed ``response.done`` usage priced
  for the call's model; 0 when the session was not billed (the local model); None for an unknown model.

Aggregates over the ended calls of a group (:func:`aggregate`), each with its numerator and denominator so
confidence intervals can be computed:

========================== ===========================================================================
first_response_p50/p95_ms  50th/95th percentile (linear interpolation, numpy) of every first-response
                           latency of the group's calls
interruption_success       Σ interruptions stopped / Σ interruptions
task_completion            calls with task completed / calls
escalation_rate            calls escalated / calls
drop_rate                  calls dropped / calls
tool_success               (Σ tool calls − Σ tool errors) / Σ tool calls
cost_per_call_usd          Σ cost / priced calls (unpriced calls are counted apart, never as 0)
========================== ===========================================================================
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from shared.callfigures import CallCost, FirstAudio
from shared.contracts import CallEnded, CallStarted, ContractError, SessionModelConnected
from shared.pricing import Usage

__all__ = ["DROP_REASONS", "RATES", "Aggregate", "CallFigures", "KpiEvent", "Rate", "aggregate", "apply"]

DROP_REASONS = frozenset({"carrier_silent", "protocol_error", "drain_timeout", "session_lost", "lost"})
"""End reasons that mean the call broke (docs/gateway.md, "End reasons")."""
_NOT_TASKS = frozenset({"end_call", "transfer_to_human"})
RATES = ("interruption_success", "task_completion", "escalation_rate", "drop_rate", "tool_success")
"""The rate KPIs (:class:`Rate` values of an :class:`Aggregate`)."""


@dataclass(frozen=True, slots=True)
class KpiEvent:
    """One event as the KPIs see it: ``stream`` (CALLS/RT), ``direction`` (client/server; None on CALLS),
    ``type`` (Realtime type, or the CALLS subject tail such as ``started``), JSON ``body``, ``ts_ns`` (unix ns)
    and ``stream_seq``."""

    stream: str
    direction: str | None
    type: str
    body: dict[str, Any]
    ts_ns: int
    stream_seq: int


@dataclass(slots=True)
class CallFigures:
    """The KPI figures of one call (see the module docstring); ``state`` holds what :func:`apply` needs
    between events (JSON-serialisable)."""

    call_id: str
    agent: str | None = None
    agent_version: str | None = None
    carrier: str | None = None
    from_number: str | None = None
    started_ns: int | None = None
    ended_ns: int | None = None
    end_reason: str | None = None
    model: str | None = None
    billed: bool = True
    responses: int = 0
    interruptions: int = 0
    interruptions_stopped: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    tasks_ok: int = 0
    transfer_called: bool = False
    usage: Usage = field(default_factory=Usage)
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        """True once ``call.<id>.ended`` was seen."""
        return self.ended_ns is not None

    @property
    def day(self) -> str | None:
        """UTC date of the start, ``YYYY-MM-DD``."""
        if self.started_ns is None:
            return None
        return datetime.fromtimestamp(self.started_ns / 1e9, UTC).strftime("%Y-%m-%d")

    @property
    def escalated(self) -> bool:
        """``transfer_to_human`` called or ended by ``transfer``."""
        return self.transfer_called or self.end_reason == "transfer"

    @property
    def dropped(self) -> bool:
        """Ended with one of :data:`DROP_REASONS`."""
        return self.end_reason in DROP_REASONS

    @property
    def task_completed(self) -> bool:
        """Ended by the agent, not escalated, at least one task tool succeeded."""
        return self.end_reason == "agent_hangup" and not self.escalated and self.tasks_ok > 0

    @property
    def cost_usd(self) -> float | None:
        """Estimated USD (None: unpriced model); see the module docstring."""
        return CallCost(self.usage, self.model, self.billed).cost_usd

    def usage_json(self) -> str:
        """The usage as JSON (stored)."""
        return json.dumps(asdict(self.usage))

    def state_json(self) -> str:
        """:attr:`state` as JSON (stored)."""
        return json.dumps(self.state)


def _started(fig: CallFigures, body: dict[str, Any], ts_ns: int) -> None:
    """``call.<id>.started`` (:class:`~shared.contracts.CallStarted`); one that does not match its contract
    gives only the start time (the event's)."""
    fig.started_ns = ts_ns
    try:
        started = CallStarted.parse(body)
    except ContractError:
        return
    fig.agent = started.agent or fig.agent
    fig.agent_version = started.agent_version or fig.agent_version
    fig.carrier = started.carrier or fig.carrier
    fig.from_number = started.from_ if started.from_ is not None else fig.from_number
    fig.started_ns = int(datetime.fromisoformat(started.started_at).timestamp() * 1e9)


def _calls_event(fig: CallFigures, ev: KpiEvent) -> None:
    body = ev.body
    if ev.type == "started":
        _started(fig, body, ev.ts_ns)
    elif ev.type == "ended":
        fig.ended_ns = ev.ts_ns
        try:
            fig.end_reason = CallEnded.parse(body).reason or "unknown"
        except ContractError:
            fig.end_reason = "unknown"
    elif ev.type == "erased":  # the recorder destroyed the call's data key: the caller's number goes too
        fig.from_number = None
    elif ev.type == "session.model_connected":
        try:
            connected = SessionModelConnected.parse(body)
        except ContractError:
            return
        if connected.agent_version and not fig.agent_version:
            fig.agent_version = connected.agent_version
        _cost(fig, ev)


def _tool_output(fig: CallFigures, item: dict[str, Any]) -> None:
    name = fig.state.setdefault("open_tools", {}).pop(str(item.get("call_id")), None)
    if name is None:
        return
    try:
        output = json.loads(str(item.get("output")))
    except ValueError:
        output = None
    if isinstance(output, dict) and output.get("error") is not None:
        fig.tool_errors += 1
    elif name not in _NOT_TASKS:
        fig.tasks_ok += 1


def _cost(fig: CallFigures, ev: KpiEvent) -> None:
    """Fold ``ev`` into the call's :class:`~shared.callfigures.CallCost` (kept in ``fig``'s columns)."""
    cost = CallCost(fig.usage, fig.model, fig.billed, bool(fig.state.get("model_from_client")))
    cost = cost.observe((ev.direction, ev.type), ev.body)
    fig.usage, fig.model, fig.billed = cost.usage, cost.model, cost.billed
    if cost.model_from_client:
        fig.state["model_from_client"] = True


def _first_audio(fig: CallFigures, ev: KpiEvent) -> float | None:
    """Fold ``ev`` into the call's :class:`~shared.callfigures.FirstAudio` (kept as ``state["stopped_ns"]``,
    with the open turn's RT sequence as ``state["stopped_seq"]``: :mod:`services.analytics.turns`)."""
    stopped = fig.state.get("stopped_ns")
    state, latency = FirstAudio(stopped if isinstance(stopped, int) else None).observe(
        (ev.direction, ev.type), ev.ts_ns)
    if state.stopped_ns is None:
        fig.state.pop("stopped_ns", None)
        fig.state.pop("stopped_seq", None)
    else:
        fig.state["stopped_ns"] = state.stopped_ns
        fig.state["stopped_seq"] = ev.stream_seq
    return latency


def _rt_event(fig: CallFigures, ev: KpiEvent) -> float | None:
    st, body = fig.state, ev.body
    kind = (ev.direction, ev.type)
    if kind in (("server", "input_audio_buffer.speech_stopped"), ("server", "response.output_audio.delta")):
        return _first_audio(fig, ev)
    if kind == ("server", "input_audio_buffer.speech_started"):
        if st.get("responding") and not st.get("interrupted"):
            fig.interruptions += 1
            st["interrupted"] = True
    elif kind == ("server", "response.created"):
        st["responding"], st["interrupted"] = True, False
    elif kind == ("client", "conversation.item.truncate"):
        if not st.pop("interrupted", False):  # caller speech over audio still playing after response.done
            fig.interruptions += 1
        fig.interruptions_stopped += 1
    elif kind == ("server", "response.done"):
        response = body.get("response") if isinstance(body.get("response"), dict) else {}
        assert isinstance(response, dict)
        fig.responses += 1
        _cost(fig, ev)
        if st.pop("interrupted", False) and response.get("status") == "cancelled":
            fig.interruptions_stopped += 1
        st["responding"] = False
    elif kind == ("server", "response.function_call_arguments.done"):
        fig.tool_calls += 1
        name = str(body.get("name") or "")
        fig.transfer_called = fig.transfer_called or name == "transfer_to_human"
        st.setdefault("open_tools", {})[str(body.get("call_id"))] = name
    elif kind == ("client", "conversation.item.create"):
        item = body.get("item")
        if isinstance(item, dict) and item.get("type") == "function_call_output":
            _tool_output(fig, item)
    elif kind in (("server", "session.created"), ("client", "session.update")):
        _cost(fig, ev)
    return None


def apply(fig: CallFigures, ev: KpiEvent) -> float | None:
    """Update ``fig`` with one event; returns a first-response latency (ms) when this event completes one."""
    if ev.stream == "CALLS":
        _calls_event(fig, ev)
        return None
    return _rt_event(fig, ev)


@dataclass(frozen=True, slots=True)
class Rate:
    """``numerator / denominator`` (``value`` None when the denominator is 0)."""

    numerator: int
    denominator: int

    @property
    def value(self) -> float | None:
        """The rate, or None without a denominator."""
        return self.numerator / self.denominator if self.denominator else None

    def to_dict(self) -> dict[str, Any]:
        """``{"value", "numerator", "denominator"}``."""
        return {"value": self.value, "numerator": self.numerator, "denominator": self.denominator}


@dataclass(slots=True)
class Aggregate:
    """The KPIs of one group of ended calls (formulas in the module docstring)."""

    key: str
    calls: int
    first_response_p50_ms: float | None
    first_response_p95_ms: float | None
    first_responses: int
    rates: dict[str, Rate]
    cost_total_usd: float
    priced_calls: int
    unpriced_calls: int

    @property
    def cost_per_call_usd(self) -> float | None:
        """Σ cost / priced calls (None without a priced call)."""
        return self.cost_total_usd / self.priced_calls if self.priced_calls else None

    def to_dict(self) -> dict[str, Any]:
        """JSON shape of one ``GET /kpis`` group."""
        return {"key": self.key, "calls": self.calls,
                "first_response_p50_ms": self.first_response_p50_ms,
                "first_response_p95_ms": self.first_response_p95_ms, "first_responses": self.first_responses,
                **{name: rate.to_dict() for name, rate in self.rates.items()},
                "cost_per_call_usd": self.cost_per_call_usd, "cost_total_usd": round(self.cost_total_usd, 6),
                "priced_calls": self.priced_calls, "unpriced_calls": self.unpriced_calls}


@dataclass(frozen=True, slots=True)
class GroupSums:
    """SQL ``GROUP BY`` sums for one group (the inputs of :func:`aggregate`)."""

    key: str
    calls: int
    interruptions: int
    interruptions_stopped: int
    task_completed: int
    escalated: int
    dropped: int
    tool_calls: int
    tool_errors: int
    cost_total_usd: float
    priced_calls: int


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0–100, linear interpolation) of ``values``; None when empty."""
    if not values:
        return None
    return round(float(np.percentile(np.asarray(values, dtype=float), q)), 1)


def aggregate(sums: GroupSums, latencies_ms: Iterable[float]) -> Aggregate:
    """The group's KPIs from its sums and all its first-response latencies (ms)."""
    lat = list(latencies_ms)
    rates = {
        "interruption_success": Rate(sums.interruptions_stopped, sums.interruptions),
        "task_completion": Rate(sums.task_completed, sums.calls),
        "escalation_rate": Rate(sums.escalated, sums.calls),
        "drop_rate": Rate(sums.dropped, sums.calls),
        "tool_success": Rate(sums.tool_calls - sums.tool_errors, sums.tool_calls),
    }
    return Aggregate(sums.key, sums.calls, percentile(lat, 50), percentile(lat, 95), len(lat), rates,
                     sums.cost_total_usd, sums.priced_calls, sums.calls - sums.priced_calls)
