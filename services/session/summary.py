"""The call summary published on ``call.<id>.session.summary`` when the call ends.

Fields: ``call_id``, ``agent``, ``usage`` (tokens summed from every ``response.done`` ``usage``:
``input_tokens``, ``output_tokens``, ``total_tokens``, plus ``input_token_details`` / ``output_token_details``
sums), ``turns`` (``user`` = committed caller turns, ``assistant`` = responses completed or cancelled,
``responses`` by status), ``durations`` (ms: ``call``, ``model_connected`` total, ``first_audio`` list and
p50 — the figure of :class:`shared.callfigures.FirstAudio`), ``tool_calls`` (name, tool_call_id, ok,
``duration_ms``: the tool latency of :func:`shared.callfigures.tool_latency_ms`), ``barge_ins``,
``reconnects``, ``events`` (client/server counts), ``flow_state`` and ``ended_reason``.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CallStats"]


def _add_usage(total: dict[str, Any], usage: dict[str, Any]) -> None:
    for key, value in usage.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            total[key] = total.get(key, 0) + value
        elif isinstance(value, dict):
            _add_usage(total.setdefault(key, {}), value)


@dataclass
class CallStats:
    """Counters for one call, folded into :meth:`summary`."""

    call_id: str
    agent: str
    started: float = field(default_factory=time.monotonic)
    usage: dict[str, Any] = field(default_factory=dict)
    user_turns: int = 0
    responses: Counter[str] = field(default_factory=Counter)
    barge_ins: int = 0
    reconnects: int = 0
    model_connected_s: float = 0.0
    _connected_at: float | None = None

    def on_response_done(self, response: dict[str, Any]) -> None:
        """Fold a ``response.done`` ``response`` object (status and usage)."""
        self.responses[str(response.get("status") or "unknown")] += 1
        usage = response.get("usage")
        if isinstance(usage, dict):
            _add_usage(self.usage, usage)

    def reconnected(self) -> None:
        """A model connection dropped and the session is reconnecting."""
        self.reconnects += 1

    def model_up(self) -> None:
        """The model session became usable."""
        self._connected_at = time.monotonic()

    def model_down(self) -> None:
        """The model session ended or dropped."""
        if self._connected_at is not None:
            self.model_connected_s += time.monotonic() - self._connected_at
            self._connected_at = None

    def summary(self, *, tool_calls: list[dict[str, Any]], first_audio_ms: list[float],
                events: dict[str, int], flow_state: str | None, ended_reason: str | None) -> dict[str, Any]:
        """The JSON body of ``call.<id>.session.summary``."""
        self.model_down()
        return {
            "call_id": self.call_id,
            "agent": self.agent,
            "usage": self.usage,
            "turns": {"user": self.user_turns, "assistant": sum(self.responses.values()),
                      "responses": dict(self.responses)},
            "durations": {
                "call_ms": round((time.monotonic() - self.started) * 1000, 1),
                "model_connected_ms": round(self.model_connected_s * 1000, 1),
                "first_audio_ms": [round(x, 1) for x in first_audio_ms],
                "first_audio_p50_ms": round(statistics.median(first_audio_ms), 1) if first_audio_ms else None,
            },
            "tool_calls": tool_calls,
            "barge_ins": self.barge_ins,
            "reconnects": self.reconnects,
            "events": dict(events),
            "flow_state": flow_state,
            "ended_reason": ended_reason,
        }
