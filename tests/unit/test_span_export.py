"""Finished spans go to ``otel.spans`` batched: one JSON array per call per export batch."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from opentelemetry import trace

from services.recorder.archive import _span_row
from services.recorder.records import Incoming
from shared.telemetry import MAX_SPANS_PER_MESSAGE, NatsSpanExporter, setup_telemetry, span_to_dict


def test_spans_are_grouped_by_call_and_capped_per_message() -> None:
    setup_telemetry("switchboard-test")
    tracer = trace.get_tracer("test")
    spans: list[Any] = []
    for i in range(MAX_SPANS_PER_MESSAGE + 5):
        with tracer.start_as_current_span("a", attributes={"switchboard.call_id": "CAone"}) as span:
            pass
        spans.append(span)
        if i < 3:
            with tracer.start_as_current_span("b", attributes={"switchboard.call_id": "CAtwo"}) as other:
                pass
            spans.append(other)
    with tracer.start_as_current_span("no call") as loose:
        pass
    spans.append(loose)
    sent: list[tuple[bytes, str | None]] = []

    async def publish(records: list[tuple[bytes, str | None]]) -> None:
        sent.extend(records)

    async def run() -> None:
        exporter = NatsSpanExporter(publish, asyncio.get_running_loop())
        await asyncio.to_thread(exporter.export, spans)  # the batch processor calls export from its thread
        for _ in range(100):
            if sent:
                break
            await asyncio.sleep(0.01)

    asyncio.run(run())
    by_call: dict[str | None, list[int]] = {}
    for payload, call_id in sent:
        records = json.loads(payload)
        assert isinstance(records, list) and 1 <= len(records) <= MAX_SPANS_PER_MESSAGE
        assert all(r["attributes"].get("switchboard.call_id") == call_id for r in records)
        by_call.setdefault(call_id, []).append(len(records))
    assert by_call == {"CAone": [MAX_SPANS_PER_MESSAGE, 5], "CAtwo": [3], None: [1]}


def test_recorder_reads_a_record_from_a_batched_message() -> None:
    setup_telemetry("switchboard-test")
    with trace.get_tracer("test").start_as_current_span("x", attributes={"switchboard.call_id": "CAr"}) as span:
        pass
    record = span_to_dict(span)  # type: ignore[arg-type]
    msg = Incoming("TRACES", 1, 1, "otel.spans", {"Switchboard-Call-Id": "CAr"}, json.dumps([record]).encode())
    row = _span_row(msg, record)
    assert row["call_id"] == "CAr" and row["name"] == "x" and len(row["span_id"]) == 16


def test_span_record_carries_every_attribute_and_sequences_as_arrays() -> None:
    setup_telemetry("switchboard-test")
    with trace.get_tracer("test").start_as_current_span(
            "x", attributes={"switchboard.call_id": "CAa", "messaging.message.body.size": 80,
                             "tags": ("a", "b")}) as span:
        span.add_event("e", {"n": 1})
    record = json.loads(json.dumps(span_to_dict(span)))  # type: ignore[arg-type]
    assert record["attributes"] == {"switchboard.call_id": "CAa", "messaging.message.body.size": 80,
                                    "tags": ["a", "b"]}
    assert [(e["name"], e["attributes"]) for e in record["events"]] == [("e", {"n": 1})]
    assert record["kind"] == "INTERNAL" and record["status"] == "UNSET"
