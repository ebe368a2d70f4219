"""Tracing, metrics and JSON logs for every service (OpenTelemetry SDK).

- One :class:`~opentelemetry.sdk.trace.TracerProvider` per process with ``service.name`` = the service;
  OTLP/HTTP export when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (the standard ``OTEL_*`` variables apply).
  On the embedded defaults (no endpoint) finished spans are published to ``otel.spans`` by
  :class:`NatsSpanExporter` once a bus is attached, and the recorder stores them.
- A :class:`~opentelemetry.sdk.metrics.MeterProvider` with a Prometheus reader (``/metrics`` on HTTP services)
  and, with an endpoint, an OTLP metric exporter.
- Logs are JSON lines with ``trace_id``, ``span_id`` and ``call_id`` (from :data:`current_call_id`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

__all__ = [
    "MAX_SPANS_PER_MESSAGE",
    "NatsSpanExporter",
    "Telemetry",
    "current_call_id",
    "get_tracer",
    "setup_logging",
    "setup_telemetry",
    "span_to_dict",
]

current_call_id: ContextVar[str | None] = ContextVar("switchboard_call_id", default=None)
"""The call a task is working on; set by the bus on receive, read by the log formatter."""

_state: Telemetry | None = None


@dataclass
class Telemetry:
    """What :func:`setup_telemetry` installed for this process."""

    service_name: str
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    otlp: bool

    def add_span_processor(self, processor: SpanProcessor) -> None:
        """Add a span processor (tests add an in-memory exporter)."""
        self.tracer_provider.add_span_processor(processor)

    def shutdown(self) -> None:
        """Flush and stop exporters (spans pending in batch processors are exported first)."""
        self.tracer_provider.force_flush(5000)
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def setup_telemetry(service_name: str) -> Telemetry:
    """Install tracer and meter providers for ``service_name`` (idempotent: the first call wins).

    Returns:
        The :class:`Telemetry` in force for this process.
    """
    global _state
    if _state is not None:
        return _state
    resource = Resource.create({"service.name": service_name, "service.namespace": "switchboard"})
    otlp = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or
                os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    tracer_provider = TracerProvider(resource=resource)
    readers: list[MetricReader] = []
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        readers.append(PrometheusMetricReader())
    except ImportError:  # pragma: no cover - dependency declared in pyproject
        pass
    if otlp:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    _state = Telemetry(service_name, tracer_provider, meter_provider, otlp)
    return _state


def get_tracer(name: str = "switchboard") -> trace.Tracer:
    """The tracer for Switchboard instrumentation (no-op until :func:`setup_telemetry`)."""
    return trace.get_tracer(name)


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as the JSON record published on ``otel.spans``.

    Shape: ``trace_id`` / ``span_id`` / ``parent_span_id`` (lower-case hex), ``name``, ``kind``
    (``SERVER``, ``CLIENT``, ``PRODUCER``, ``CONSUMER``, ``INTERNAL``), ``start_ns`` / ``end_ns`` (unix ns),
    ``service`` (``service.name``), ``attributes``, ``events`` (name, ts_ns, attributes), ``links``
    (trace_id, span_id), ``status`` (``UNSET``/``OK``/``ERROR``) and ``status_message``. Sequence attribute
    values stay tuples, which every JSON encoder writes as arrays.
    """
    ctx = span.get_span_context()
    parent = span.parent
    status = span.status
    return {
        "trace_id": format(ctx.trace_id, "032x") if ctx else "",
        "span_id": format(ctx.span_id, "016x") if ctx else "",
        "parent_span_id": format(parent.span_id, "016x") if parent else None,
        "name": span.name,
        "kind": _KIND_NAMES[span.kind],
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "service": span.resource.attributes.get("service.name", ""),
        "attributes": _attribute_dict(span.attributes),
        "events": [
            {"name": e.name, "ts_ns": e.timestamp, "attributes": _attribute_dict(e.attributes)}
            for e in span.events
        ],
        "links": [
            {"trace_id": format(link.context.trace_id, "032x"), "span_id": format(link.context.span_id, "016x")}
            for link in span.links
        ],
        "status": _STATUS_NAMES[status.status_code],
        "status_message": status.description,
    }


_KIND_NAMES = {kind: kind.name for kind in SpanKind}
_STATUS_NAMES = {code: code.name for code in StatusCode}


def _attribute_dict(attributes: Mapping[str, object] | None) -> dict[str, object]:
    """Attributes as a plain dict.

    The SDK's ``BoundedAttributes`` keeps its items in a ``_dict``; copying that dict is one C call, where
    ``dict(attributes)`` goes through the Mapping protocol in Python per key.
    Anything else is copied through the Mapping protocol.
    """
    if not attributes:
        return {}
    items = getattr(attributes, "_dict", None)
    return dict(items) if isinstance(items, dict) else dict(attributes)


MAX_SPANS_PER_MESSAGE = 200
"""Spans per ``otel.spans`` message at most (a span record is ~0.5–1 KiB; NATS' default max payload is 1 MiB)."""


class NatsSpanExporter(SpanExporter):
    """Publishes finished spans to ``otel.spans`` (core NATS) for the embedded store, batched.

    Each message's payload is a JSON array of span records (:func:`span_to_dict`) of ONE call (header
    ``Switchboard-Call-Id`` when the spans carry ``switchboard.call_id``), at most
    :data:`MAX_SPANS_PER_MESSAGE` each. One message per call per export batch instead of one per span: every
    traced bus message produces two spans, and publishing (and storing in the TRACES stream) a message per span
    tripled the messages of the traced path. Consumers accept a single record object too.

    ``publish`` is a coroutine function ``(records: list[tuple[bytes, str | None]]) -> None`` (payload and call
    id per message) run on ``loop``. The batch processor calls :meth:`export` from its own thread; the batch is
    serialized there (with orjson, far cheaper than ``json.dumps``: that thread holds the GIL the event loop
    needs, so export cost shows up in message latency tails) and handed to the loop as ONE coroutine
    (``run_coroutine_threadsafe``), so the event loop pays one wake-up per batch. Publishing spans is not itself
    traced (no recursion).
    """

    def __init__(self, publish: Callable[[list[tuple[bytes, str | None]]], Any],
                 loop: asyncio.AbstractEventLoop) -> None:
        self._publish = publish
        self._loop = loop
        self._closed = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Serialize ``spans`` (grouped by call) and hand them to the event loop; never blocks on the network."""
        if self._closed or self._loop.is_closed():
            return SpanExportResult.FAILURE
        by_call: dict[str | None, list[dict[str, Any]]] = {}
        for span in spans:
            record = span_to_dict(span)
            call_id = record["attributes"].get("switchboard.call_id")
            by_call.setdefault(call_id if isinstance(call_id, str) else None, []).append(record)
        messages: list[tuple[bytes, str | None]] = []
        for call_id, records in by_call.items():
            for i in range(0, len(records), MAX_SPANS_PER_MESSAGE):
                chunk = records[i:i + MAX_SPANS_PER_MESSAGE]
                messages.append((orjson.dumps(chunk), call_id))
        try:
            asyncio.run_coroutine_threadsafe(self._publish(messages), self._loop)
        except RuntimeError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Stop exporting."""
        self._closed = True


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, service, trace_id, span_id, call_id (+ exc)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line with the current trace and call ids."""
        ctx = trace.get_current_span().get_span_context()
        line: dict[str, Any] = {
            "ts": round(time.time(), 6),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "service": self.service,
        }
        if ctx.is_valid:
            line["trace_id"] = format(ctx.trace_id, "032x")
            line["span_id"] = format(ctx.span_id, "016x")
        call_id = getattr(record, "call_id", None) or current_call_id.get()
        if call_id:
            line["call_id"] = call_id
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_logging(service: str, level: str | None = None) -> None:
    """Send JSON log lines to stderr (level from ``SWITCHBOARD_LOG_LEVEL``, default INFO)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("SWITCHBOARD_LOG_LEVEL", "INFO"))
