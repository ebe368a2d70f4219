"""KPI definitions (services/analytics/kpis.py): per-call figures from scripted events, and aggregation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.analytics.kpis import CallFigures, GroupSums, KpiEvent, aggregate, apply, percentile
from shared.contracts import CallEnded, CallErased, CallStarted, SessionModelConnected

MS = 1_000_000
CID = "call_x"
STARTED = CallStarted(call_id=CID, agent="receptionist", carrier="twilio", audio_format="audio/pcmu",
                      started_at="2023-11-14T22:13:20+00:00").encode()  # the Script's time 0


class Script:
    """Builds a call's events with explicit times (ms from 0) and sequences."""

    def __init__(self) -> None:
        self.seq = 0
        self.events: list[KpiEvent] = []

    def calls(self, at_ms: int, type_: str, **body: Any) -> None:
        self.seq += 1
        self.events.append(KpiEvent("CALLS", None, type_, body, 1_700_000_000_000 * MS + at_ms * MS, self.seq))

    def rt(self, at_ms: int, direction: str, type_: str, **body: Any) -> None:
        self.seq += 1
        self.events.append(KpiEvent("RT", direction, type_, body, 1_700_000_000_000 * MS + at_ms * MS, self.seq))

    def run(self) -> tuple[CallFigures, list[float]]:
        fig = CallFigures("call_x")
        latencies = [v for ev in self.events if (v := apply(fig, ev)) is not None]
        return fig, latencies


def _usage(audio_out: int) -> dict[str, Any]:
    return {"input_tokens": 10, "output_tokens": audio_out,
            "input_token_details": {"text_tokens": 10, "audio_tokens": 0, "cached_tokens": 0},
            "output_token_details": {"text_tokens": 0, "audio_tokens": audio_out}}


def booking_call(*, billed: bool = True, model: str = "gpt-realtime") -> Script:
    s = Script()
    s.calls(0, "started", **CallStarted(call_id=CID, agent="receptionist", agent_version="2", carrier="twilio",
                                         audio_format="audio/pcmu", from_="+15550001",
                                         started_at="2026-12-07T10:00:00+00:00").encode())
    s.rt(10, "server", "session.created", session={"model": model})
    s.calls(20, "session.model_connected", **SessionModelConnected(
        call_id=CID, billed=billed, agent="receptionist", agent_version="2").encode())
    # turn 1: 400 ms to first audio, then a tool call that succeeds
    s.rt(1000, "server", "input_audio_buffer.speech_stopped")
    s.rt(1100, "server", "response.created")
    s.rt(1400, "server", "response.output_audio.delta")
    s.rt(1500, "server", "response.function_call_arguments.done", name="book_appointment", call_id="fc1",
         arguments="{}")
    s.rt(1510, "server", "response.done", response={"status": "completed", "usage": _usage(100)})
    s.rt(1600, "client", "conversation.item.create",
         item={"type": "function_call_output", "call_id": "fc1", "output": json.dumps({"status": "booked"})})
    # turn 2: interrupted while the response is in progress; the model cancels
    s.rt(3000, "server", "input_audio_buffer.speech_stopped")
    s.rt(3050, "server", "response.created")
    s.rt(3650, "server", "response.output_audio.delta")
    s.rt(3700, "server", "input_audio_buffer.speech_started")
    s.rt(3710, "server", "response.done", response={"status": "cancelled", "usage": _usage(50)})
    # a failing tool, then caller speech over audio still playing after response.done (truncated)
    s.rt(4000, "server", "response.created")
    s.rt(4100, "server", "response.function_call_arguments.done", name="check_availability", call_id="fc2")
    s.rt(4110, "server", "response.done", response={"status": "completed"})
    s.rt(4200, "client", "conversation.item.create",
         item={"type": "function_call_output", "call_id": "fc2", "output": json.dumps({"error": "closed"})})
    s.rt(4500, "server", "input_audio_buffer.speech_started")
    s.rt(4510, "client", "conversation.item.truncate", item_id="x", audio_end_ms=300)
    s.rt(5000, "server", "response.function_call_arguments.done", name="end_call", call_id="fc3")
    s.rt(5010, "client", "conversation.item.create",
         item={"type": "function_call_output", "call_id": "fc3", "output": "{}"})
    s.calls(6000, "ended", **CallEnded(reason="agent_hangup").encode())
    return s


def test_per_call_figures() -> None:
    fig, latencies = booking_call().run()
    assert latencies == [400.0, 650.0]  # speech_stopped -> first audio delta, per turn
    assert (fig.agent, fig.agent_version, fig.carrier, fig.from_number) == ("receptionist", "2", "twilio",
                                                                           "+15550001")
    assert fig.day == "2026-12-07"
    assert (fig.interruptions, fig.interruptions_stopped) == (2, 2)
    assert (fig.tool_calls, fig.tool_errors, fig.tasks_ok) == (3, 1, 1)
    assert fig.task_completed and not fig.escalated and not fig.dropped
    assert fig.usage.output_audio_tokens == 150
    # 10 text in x $4 twice + 150 audio out x $64, per 1M tokens (gpt-realtime)
    assert fig.cost_usd == pytest.approx((2 * 10 * 4 + 150 * 64) / 1e6)


def test_erasure_clears_the_callers_number_and_keeps_the_figures() -> None:
    script = booking_call()
    script.calls(7000, "erased", **CallErased(call_id=CID, erased_ns=1, erased_by="retention",
                                              reason="retention").encode())
    fig, latencies = script.run()
    assert fig.from_number is None
    assert latencies == [400.0, 650.0] and fig.task_completed and fig.end_reason == "agent_hangup"


def test_local_model_costs_nothing_and_unknown_model_is_unpriced() -> None:
    free, _ = booking_call(billed=False).run()
    assert free.cost_usd == 0.0
    unknown, _ = booking_call(model="some-other-model").run()
    assert unknown.cost_usd is None
    dated, _ = booking_call(model="gpt-realtime-mini-2025-10-06").run()
    assert dated.cost_usd == pytest.approx((2 * 10 * 0.60 + 150 * 20) / 1e6)


def test_interruption_that_fails_escalation_and_drop() -> None:
    s = Script()
    s.calls(0, "started", **STARTED)
    s.rt(100, "server", "response.created")
    s.rt(200, "server", "input_audio_buffer.speech_started")  # the agent talks on
    s.rt(900, "server", "response.done", response={"status": "completed"})
    s.rt(1000, "server", "response.function_call_arguments.done", name="transfer_to_human", call_id="t")
    s.calls(2000, "ended", **CallEnded(reason="transfer").encode())
    fig, _ = s.run()
    assert (fig.interruptions, fig.interruptions_stopped) == (1, 0)
    assert fig.escalated and not fig.task_completed
    s2 = Script()
    s2.calls(0, "started", **STARTED)
    s2.calls(100, "ended", **CallEnded(reason="carrier_silent").encode())
    dropped, _ = s2.run()
    assert dropped.dropped and not dropped.task_completed


def test_aggregate_formulas() -> None:
    sums = GroupSums("2", calls=4, interruptions=5, interruptions_stopped=4, task_completed=3, escalated=1,
                     dropped=0, tool_calls=10, tool_errors=1, cost_total_usd=0.3, priced_calls=3)
    agg = aggregate(sums, [100.0, 200.0, 300.0, 400.0, 1000.0])
    assert agg.first_response_p50_ms == 300.0
    assert agg.first_response_p95_ms == pytest.approx(880.0)  # linear interpolation between 400 and 1000
    assert agg.rates["task_completion"].value == 0.75
    assert agg.rates["tool_success"].to_dict() == {"value": 0.9, "numerator": 9, "denominator": 10}
    assert agg.rates["interruption_success"].value == 0.8
    assert agg.cost_per_call_usd == pytest.approx(0.1) and agg.unpriced_calls == 1
    assert percentile([], 50) is None
