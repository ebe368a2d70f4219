"""The OpenTelemetry instruments Switchboard records, defined once (names and units in one place).

Instruments are created on the global meter (a proxy until :func:`shared.telemetry.setup_telemetry` installs
the SDK provider), so modules may import them at import time. Units follow UCUM (``ms``, ``{event}``).
Exposed in Prometheus text format on each HTTP service's ``/metrics`` (dots become underscores).
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

FIRST_AUDIO = _meter.create_histogram(
    "switchboard.response.first_audio.duration", unit="ms",
    description="End of caller speech (speech_stopped) to the first model audio delta")
TOOL_ROUND_TRIP = _meter.create_histogram(
    "switchboard.tool.duration", unit="ms", description="Tool request to reply, as seen by the caller side")
BARGE_IN = _meter.create_histogram(
    "switchboard.barge_in.duration", unit="ms",
    description="input_audio_buffer.speech_started received to command.clear sent")
BUS_HOP = _meter.create_histogram(
    "switchboard.bus.hop.duration", unit="ms",
    description="Switchboard-Ts at publish to handler start in the consumer")
PUBLISH_FAILURES = _meter.create_counter(
    "switchboard.bus.publish.failures", unit="{message}",
    description="JetStream publishes not acknowledged after every retry (surfaced, not dropped)")
PUBLISH_RETRIES = _meter.create_counter(
    "switchboard.bus.publish.retries", unit="{message}", description="JetStream publish retries")
EVENTS_PERSISTED = _meter.create_counter(
    "switchboard.events.persisted", unit="{event}", description="Events committed to the SQL archive")
ACTIVE_CALLS = _meter.create_up_down_counter(
    "switchboard.calls.active", unit="{call}",
    description="Calls held by this session process (counted by the session only, once per call)")
OUTBOUND_DROPPED = _meter.create_counter(
    "switchboard.gateway.outbound.dropped", unit="{frame}",
    description="Outbound carrier frames dropped because a slow carrier socket's queue was full")
