"""The OpenTelemetry instruments Switchboard records, defined once (names and units in one place).

Instruments are created on the global meter (a proxy until :func:`shared.telemetry.setup_telemetry` installs
the SDK provider), so modules may import them at import time. Units follow UCUM, durations in seconds (``s``)
as the OpenTelemetry semantic conventions (https://opentelemetry.io/docs/specs/semconv/general/metrics/) and
Prometheus (https://prometheus.io/docs/practices/naming/#base-units) both ask; counts in ``{event}``-style
annotations. Exposed in Prometheus text format on every service's ``/metrics`` (dots become underscores and the
unit a suffix: ``switchboard.tool.duration`` → ``switchboard_tool_duration_seconds``): the HTTP services on their
own port (:mod:`shared.http`), session and tools on a metrics-only port (:mod:`shared.metrics_http`).
"""

from __future__ import annotations

from opentelemetry import metrics

__all__ = [
    "ACTIVE_CALLS",
    "BARGE_IN",
    "BUS_HOP",
    "EVENTS_PERSISTED",
    "FIRST_AUDIO",
    "OUTBOUND_DROPPED",
    "PUBLISH_FAILURES",
    "PUBLISH_RETRIES",
    "TOOL_ROUND_TRIP",
]

_meter = metrics.get_meter("switchboard")

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
"""Bucket bounds (seconds) of the call-path latencies: the OTel HTTP duration advice, which spans a barge-in
(tens of ms) to a slow tool (seconds)."""
HOP_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
"""Bucket bounds (seconds) of the bus hop: sub-millisecond on a healthy bus, so finer at the low end."""

FIRST_AUDIO = _meter.create_histogram(
    "switchboard.response.first_audio.duration", unit="s",
    description="End of caller speech (speech_stopped) to the first model audio delta",
    explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S)
TOOL_ROUND_TRIP = _meter.create_histogram(
    "switchboard.tool.duration", unit="s", description="Tool request to reply, as seen by the caller side",
    explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S)
BARGE_IN = _meter.create_histogram(
    "switchboard.barge_in.duration", unit="s",
    description="input_audio_buffer.speech_started received to command.clear sent",
    explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S)
BUS_HOP = _meter.create_histogram(
    "switchboard.bus.hop.duration", unit="s",
    description="Switchboard-Ts at publish to handler start in the consumer",
    explicit_bucket_boundaries_advisory=HOP_BUCKETS_S)
PUBLISH_FAILURES = _meter.create_counter(
    "switchboard.bus.publish.failures", unit="{message}",
    description="JetStream publishes not acknowledged after every retry (surfaced, not dropped)")
PUBLISH_RETRIES = _meter.create_counter(
    "switchboard.bus.publish.retries", unit="{message}", description="JetStream publish retries")
EVENTS_PERSISTED = _meter.create_counter(
    "switchboard.events.persisted", unit="{event}", description="Events committed to the SQL archive")
ACTIVE_CALLS = _meter.create_up_down_counter(
    "switchboard.calls.active", unit="{call}", description="Calls in progress in this process")
OUTBOUND_DROPPED = _meter.create_counter(
    "switchboard.gateway.outbound.dropped", unit="{frame}",
    description="Outbound carrier frames dropped because a slow carrier socket's queue was full")
