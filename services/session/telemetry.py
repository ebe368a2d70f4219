"""Tracing hooks of the session service, so call/model/tool handlers contain no tracing code.

Spans follow the OpenTelemetry GenAI semantic conventions
(https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/, and for OpenAI
https://opentelemetry.io/docs/specs/semconv/gen-ai/openai/); all are children of the trace carried by
``call.<id>.started``:

- ``realtime {model}`` per model connection (CLIENT; ``gen_ai.operation.name="realtime"``);
- ``chat {model}`` per model response (CLIENT; ``gen_ai.operation.name="chat"``), from ``speech_stopped`` (or
  ``response.created`` when no speech preceded it) to ``response.done``, with ``gen_ai.response.id``,
  ``gen_ai.usage.input_tokens`` / ``gen_ai.usage.output_tokens`` and ``switchboard.first_audio_s``;
- ``execute_tool {tool name}`` per tool call (INTERNAL; ``gen_ai.tool.name``, ``gen_ai.tool.call.id``,
  ``gen_ai.tool.type``); the bus request span is its child.

Model spans carry ``gen_ai.provider.name`` (:func:`provider_name`), ``gen_ai.request.model``, and
``server.address`` / ``server.port`` as two attributes. Metrics recorded here (seconds): ``FIRST_AUDIO``
(speech_stopped → first output audio delta), ``BARGE_IN`` and ``ACTIVE_CALLS``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from shared import metrics

__all__ = ["SessionHooks", "model_attributes", "provider_name"]

_tracer = trace.get_tracer("switchboard.session")
_DEFAULT_PORTS = {"wss": 443, "https": 443, "ws": 80, "http": 80}


def provider_name(host: str) -> str:
    """``gen_ai.provider.name`` for a Realtime endpoint on ``host``: ``azure.ai.openai`` for an Azure OpenAI host
    (``*.openai.azure.com``), else ``openai``. Every endpoint the session talks to speaks the OpenAI Realtime
    protocol, and the attribute names the telemetry flavour as best the client knows it; ``server.address``
    tells which server answered (https://opentelemetry.io/docs/specs/semconv/registry/attributes/gen-ai/)."""
    return "azure.ai.openai" if host.endswith(".openai.azure.com") else "openai"


def model_attributes(url: str, model: str | None) -> dict[str, Any]:
    """The GenAI client attributes of a Realtime endpoint ``url`` (``ws[s]://host[:port]/...?model=``).

    Returns ``gen_ai.provider.name``, ``server.address`` (host), ``server.port`` (int; the scheme's default
    when the URL has none) and ``gen_ai.request.model`` (``model``, else the URL's ``model`` query parameter;
    left out when neither is known)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    attrs: dict[str, Any] = {"gen_ai.provider.name": provider_name(host), "server.address": host}
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    if port is not None:
        attrs["server.port"] = port
    requested = model or next(iter(parse_qs(parts.query).get("model", [])), None)
    if requested:
        attrs["gen_ai.request.model"] = requested
    return attrs


def _span_name(operation: str, attrs: dict[str, Any]) -> str:
    model = attrs.get("gen_ai.request.model")
    return f"{operation} {model}" if model else operation


class SessionHooks:
    """Per-call tracing and metrics hooks; create one per call inside the ``started`` message's context."""

    def __init__(self, call_id: str, agent: str) -> None:
        self.call_id = call_id
        self.agent = agent
        self._parent = otel_context.get_current()
        self._connection: Span | None = None
        self._response: Span | None = None
        self._speech_stopped_at: float | None = None
        self._first_audio_seen = False
        self._model: dict[str, Any] = {}
        self.first_audio_ms: list[float] = []

    def _attrs(self, **extra: Any) -> dict[str, Any]:
        return {"switchboard.call_id": self.call_id, "switchboard.agent": self.agent, **extra}

    # --- call --------------------------------------------------------------------------------------------

    def call_started(self) -> None:
        """The session took the call."""
        metrics.ACTIVE_CALLS.add(1)

    def call_ended(self) -> None:
        """The session let go of the call (ended normally or not)."""
        metrics.ACTIVE_CALLS.add(-1)
        self._end_response("call ended")
        self.model_disconnected(None)

    # --- model connection --------------------------------------------------------------------------------

    def model_connecting(self, url: str, attempt: int, model: str | None = None) -> None:
        """A model connection to ``url`` (for ``model``; default the URL's ``?model=``) is being opened."""
        self._model = model_attributes(url, model)
        self._connection = _tracer.start_span(
            _span_name("realtime", self._model), context=self._parent, kind=SpanKind.CLIENT,
            attributes=self._attrs(**{"gen_ai.operation.name": "realtime", **self._model,
                                      "switchboard.reconnect_attempt": attempt}))

    def model_disconnected(self, reason: str | None) -> None:
        """The model connection ended (None = closed by us)."""
        if self._connection is not None:
            if reason:
                self._connection.set_status(Status(StatusCode.ERROR, reason))
            self._connection.end()
            self._connection = None

    # --- responses ---------------------------------------------------------------------------------------

    def speech_stopped(self) -> None:
        """``input_audio_buffer.speech_stopped``: the clock for first audio starts."""
        self._speech_stopped_at = time.monotonic()
        self._first_audio_seen = False

    def response_created(self, response_id: str) -> None:
        """``response.created``."""
        self._end_response("superseded")
        start_ns = time.time_ns()
        if self._speech_stopped_at is not None:
            start_ns -= int((time.monotonic() - self._speech_stopped_at) * 1e9)
        parent = trace.set_span_in_context(self._connection) if self._connection else self._parent
        self._response = _tracer.start_span(
            _span_name("chat", self._model), context=parent, kind=SpanKind.CLIENT, start_time=start_ns,
            attributes=self._attrs(**{"gen_ai.operation.name": "chat", **self._model,
                                      "gen_ai.response.id": response_id}))

    def output_audio(self) -> None:
        """A ``response.output_audio.delta``: records first-audio latency once per turn."""
        if self._first_audio_seen:
            return
        self._first_audio_seen = True
        if self._speech_stopped_at is not None:
            seconds = time.monotonic() - self._speech_stopped_at
            self.first_audio_ms.append(seconds * 1000)
            metrics.FIRST_AUDIO.record(seconds, {"switchboard.agent": self.agent})
            if self._response is not None:
                self._response.set_attribute("switchboard.first_audio_s", round(seconds, 4))
            self._speech_stopped_at = None

    def response_done(self, status: str | None, usage: dict[str, Any] | None) -> None:
        """``response.done`` with its status and usage."""
        if self._response is not None:
            self._response.set_attribute("switchboard.response.status", status or "unknown")
            if usage:
                for key in ("input_tokens", "output_tokens"):
                    if isinstance(usage.get(key), int):
                        self._response.set_attribute(f"gen_ai.usage.{key}", usage[key])
        self._end_response(None)
        self._speech_stopped_at = None
        self._first_audio_seen = True  # later deltas of other responses do not count without new speech

    def _end_response(self, note: str | None) -> None:
        if self._response is not None:
            if note:
                self._response.set_attribute("switchboard.response.ended_by", note)
            self._response.end()
            self._response = None

    # --- barge-in and tools ------------------------------------------------------------------------------

    def barge_in(self, started_at: float) -> None:
        """``command.clear`` was sent for a barge-in detected at ``started_at`` (monotonic seconds)."""
        metrics.BARGE_IN.record(time.monotonic() - started_at, {"switchboard.agent": self.agent})

    def tool_parent(self) -> Context | None:
        """The context a tool call started now belongs to: the response in progress (the one that produced
        the function call), else the call's. Taken when the call is dispatched, so the ``execute_tool`` span
        is that response's child even if the response has ended before the span starts."""
        return trace.set_span_in_context(self._response) if self._response else self._parent

    @contextlib.contextmanager
    def tool_call(self, name: str, tool_call_id: str, parent: Context | None = None) -> Iterator[None]:
        """An ``execute_tool <name>`` span (INTERNAL, as the GenAI conventions define it) around one tool call;
        the bus request is its child. Under ``parent`` (from :meth:`tool_parent` at dispatch; default: now)."""
        if parent is None:
            parent = self.tool_parent()
        with _tracer.start_as_current_span(
                f"execute_tool {name}", context=parent, kind=SpanKind.INTERNAL,
                attributes=self._attrs(**{"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name,
                                          "gen_ai.tool.call.id": tool_call_id, "gen_ai.tool.type": "function"})):
            yield

    def tool_result(self, ok: bool, output: Any) -> None:
        """Mark the current ``execute_tool`` span with the outcome."""
        span = trace.get_current_span()
        if not ok:
            code = output.get("error", {}).get("code") if isinstance(output, dict) else None
            span.set_attribute("error.type", str(code))
            span.set_status(Status(StatusCode.ERROR, str(code)))
