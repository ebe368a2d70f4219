"""Session tracing hooks: span names, parentage and OTel semantic-convention attributes (in-memory export)."""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.session.telemetry import SessionHooks, model_attributes
from shared.telemetry import setup_telemetry


def _exporter() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    setup_telemetry("switchboard-test").add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def _by_name(spans: tuple[ReadableSpan, ...], call_id: str) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans if s.attributes and s.attributes.get("switchboard.call_id") == call_id}


def test_connection_response_and_tool_spans() -> None:
    exporter = _exporter()
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("call.started") as root:
        hooks = SessionHooks("CAhooks1", "receptionist")
    hooks.call_started()
    hooks.model_connecting("ws://127.0.0.1:1/v1/realtime?model=gpt-realtime", 0)
    hooks.speech_stopped()
    time.sleep(0.01)
    hooks.response_created("resp_1")
    hooks.output_audio()
    with hooks.tool_call("book_appointment", "call_1"):
        hooks.tool_result(False, {"error": {"code": 504, "message": "slow"}})
    hooks.response_done("completed", {"input_tokens": 12, "output_tokens": 34})
    hooks.call_ended()
    spans = _by_name(exporter.get_finished_spans(), "CAhooks1")
    connect, response = spans["realtime gpt-realtime"], spans["chat gpt-realtime"]
    tool = spans["execute_tool book_appointment"]
    trace_id = root.get_span_context().trace_id
    assert {connect.context.trace_id, response.context.trace_id, tool.context.trace_id} == {trace_id}
    assert connect.parent is not None and connect.parent.span_id == root.get_span_context().span_id
    assert response.parent is not None and response.parent.span_id == connect.context.span_id
    assert tool.parent is not None and tool.parent.span_id == response.context.span_id
    assert connect.kind == response.kind == SpanKind.CLIENT and tool.kind == SpanKind.INTERNAL
    assert connect.attributes is not None and response.attributes is not None
    for span in (connect, response):
        assert span.attributes is not None
        assert span.attributes["gen_ai.provider.name"] == "openai"
        assert span.attributes["gen_ai.request.model"] == "gpt-realtime"
        assert span.attributes["server.address"] == "127.0.0.1"
        assert span.attributes["server.port"] == 1
    assert connect.attributes["gen_ai.operation.name"] == "realtime"
    assert response.attributes["gen_ai.operation.name"] == "chat"
    assert response.attributes["gen_ai.response.id"] == "resp_1"
    assert response.attributes["gen_ai.usage.input_tokens"] == 12
    assert response.attributes["gen_ai.usage.output_tokens"] == 34
    assert float(str(response.attributes["switchboard.first_audio_s"])) >= 0.01
    assert tool.attributes is not None
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "book_appointment"
    assert tool.attributes["gen_ai.tool.call.id"] == "call_1"
    assert tool.attributes["error.type"] == "504"
    assert len(hooks.first_audio_ms) == 1


def test_first_audio_is_counted_once_per_turn() -> None:
    _exporter()
    hooks = SessionHooks("CAhooks2", "receptionist")
    hooks.response_created("resp_greeting")  # no speech before it: not a first-audio sample
    hooks.output_audio()
    hooks.response_done("completed", None)
    hooks.speech_stopped()
    hooks.response_created("resp_2")
    hooks.output_audio()
    hooks.output_audio()
    hooks.response_done("completed", None)
    assert len(hooks.first_audio_ms) == 1


def test_tool_span_belongs_to_the_response_that_called_it_even_after_that_response_ended() -> None:
    exporter = _exporter()
    hooks = SessionHooks("CAhooks3", "receptionist")
    hooks.model_connecting("ws://127.0.0.1:1/v1/realtime?model=gpt-realtime", 0)
    hooks.response_created("resp_fc")
    parent = hooks.tool_parent()  # taken when the function call is dispatched
    hooks.response_done("completed", None)  # the response ends before the tool task starts its span
    with hooks.tool_call("book_appointment", "call_2", parent):
        pass
    hooks.model_disconnected(None)
    spans = _by_name(exporter.get_finished_spans(), "CAhooks3")
    tool, response = spans["execute_tool book_appointment"], spans["chat gpt-realtime"]
    assert tool.parent is not None and tool.parent.span_id == response.context.span_id


def test_model_attributes_follow_the_genai_conventions() -> None:
    assert model_attributes("wss://api.openai.com/v1/realtime?model=gpt-realtime", None) == {
        "gen_ai.provider.name": "openai", "server.address": "api.openai.com", "server.port": 443,
        "gen_ai.request.model": "gpt-realtime"}
    azure = model_attributes("wss://acme.openai.azure.com/openai/v1/realtime", "gpt-realtime-mini")
    assert azure["gen_ai.provider.name"] == "azure.ai.openai" and azure["server.port"] == 443
    assert azure["gen_ai.request.model"] == "gpt-realtime-mini"
    local = model_attributes("ws://127.0.0.1:8765/v1/realtime", None)
    assert local == {"gen_ai.provider.name": "openai", "server.address": "127.0.0.1", "server.port": 8765}


def test_span_name_without_a_model_is_the_operation() -> None:
    exporter = _exporter()
    hooks = SessionHooks("CAhooks2", "receptionist")
    hooks.model_connecting("ws://127.0.0.1:8765/v1/realtime", 0)
    hooks.response_created("resp_2")
    hooks.response_done("completed", None)
    hooks.call_ended()
    assert set(_by_name(exporter.get_finished_spans(), "CAhooks2")) == {"realtime", "chat"}
