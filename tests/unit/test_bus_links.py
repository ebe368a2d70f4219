"""Batch spans are linked to every stored message's trace and parented by none of them."""

from __future__ import annotations

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.bus import batch_span, links_for
from shared.telemetry import setup_telemetry


def test_batch_span_links_each_distinct_message_trace() -> None:
    exporter = InMemorySpanExporter()
    setup_telemetry("switchboard-test").add_span_processor(SimpleSpanProcessor(exporter))
    tracer = trace.get_tracer("test")
    headers: list[dict[str, str]] = []
    producers = []
    for name in ("call A", "call B"):
        with tracer.start_as_current_span(name) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            headers += [carrier, dict(carrier)]  # two messages from the same span: one link
            producers.append(span.get_span_context())
    headers.append({"Nats-Msg-Id": "no-trace"})
    with tracer.start_as_current_span("unrelated"), batch_span("persist", "RT", headers):
        pass
    batch = next(s for s in exporter.get_finished_spans() if s.name == "persist RT")
    assert batch.parent is None  # a root: the batch belongs to no single call's trace
    assert [(link.context.trace_id, link.context.span_id) for link in batch.links] == [
        (p.trace_id, p.span_id) for p in producers]
    assert batch.attributes is not None and batch.attributes["messaging.batch.message_count"] == 5
    assert len(links_for(headers, limit=1)) == 1
