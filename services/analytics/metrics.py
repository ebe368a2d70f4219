"""Prometheus metrics of the analytics service (``/metrics`` on its port), in seconds and counts.

Updated after each committed batch, from what that batch changed (a restart does not re-count: the batch
outcome only holds events applied for the first time). Labels: ``agent_version``; ``outcome`` is one of
``completed``, ``escalated``, ``dropped``, ``other`` (kpis.py definitions).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from services.analytics.kpis import CallFigures
from services.analytics.store import BatchOutcome

__all__ = ["CALLS_ENDED", "CALL_COST", "CALL_DURATION", "EVENTS", "FIRST_RESPONSE", "TOOL_CALLS", "observe"]

FIRST_RESPONSE = Histogram(
    "switchboard_analytics_first_response_seconds",
    "End of caller speech (speech_stopped) to the first model audio delta, per caller turn",
    ["agent_version"], buckets=(0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0))
CALLS_ENDED = Counter("switchboard_analytics_calls_ended", "Ended calls by outcome",
                      ["agent_version", "outcome"])
CALL_DURATION = Histogram("switchboard_analytics_call_duration_seconds", "Call start to end",
                          ["agent_version"], buckets=(5, 10, 20, 30, 60, 120, 300, 600, 1800))
TOOL_CALLS = Counter("switchboard_analytics_tool_calls", "Tool calls of ended calls by result",
                     ["agent_version", "result"])
CALL_COST = Counter("switchboard_analytics_cost_usd", "Estimated model cost of ended, priced calls (USD)",
                    ["agent_version"])
EVENTS = Counter("switchboard_analytics_events", "Events applied to the KPIs (redeliveries excluded)",
                 ["stream"])


def _outcome(fig: CallFigures) -> str:
    if fig.task_completed:
        return "completed"
    if fig.escalated:
        return "escalated"
    return "dropped" if fig.dropped else "other"


def observe(stream: str, outcome: BatchOutcome) -> None:
    """Record one committed batch's changes."""
    EVENTS.labels(stream).inc(outcome.applied)
    for version, ms in outcome.latencies:
        FIRST_RESPONSE.labels(version).observe(ms / 1000.0)
    for fig in outcome.ended:
        version = fig.agent_version or "unknown"
        CALLS_ENDED.labels(version, _outcome(fig)).inc()
        if fig.started_ns is not None and fig.ended_ns is not None and fig.ended_ns >= fig.started_ns:
            CALL_DURATION.labels(version).observe((fig.ended_ns - fig.started_ns) / 1e9)
        TOOL_CALLS.labels(version, "ok").inc(fig.tool_calls - fig.tool_errors)
        TOOL_CALLS.labels(version, "error").inc(fig.tool_errors)
        cost = fig.cost_usd
        if cost:
            CALL_COST.labels(version).inc(cost)
