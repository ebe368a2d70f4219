"""Spans for batch consumers: one span per batch, *linked* (not parented) to each message's trace.

A JetStream consumer that stores a batch of messages from many calls (the recorder) belongs to none of their
traces, so parenting would be wrong; OTel's messaging conventions model this as a span with one link per
message (https://opentelemetry.io/docs/specs/semconv/messaging/messaging-spans/#batch-receiving). The W3C
``traceparent`` of each message is extracted here, in the bus package, so consumers contain no tracing code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Final

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind

__all__ = ["MAX_LINKS", "batch_span", "links_for"]

MAX_LINKS: Final = 128
"""Links recorded per batch span (the OTel SDK's default span link limit); the rest are counted only."""

_tracer = trace.get_tracer("switchboard.bus")


def links_for(headers: Iterable[Mapping[str, str]], limit: int = MAX_LINKS) -> list[Link]:
    """One link per distinct valid ``traceparent`` among ``headers`` (first ``limit``; messages without one
    are skipped)."""
    links: list[Link] = []
    seen: set[tuple[int, int]] = set()
    raw_seen: set[tuple[str | None, str | None]] = set()
    for h in headers:
        raw = (h.get("traceparent"), h.get("tracestate"))
        if raw in raw_seen:  # a call's messages mostly share one traceparent: extract each value once
            continue
        raw_seen.add(raw)
        ctx = trace.get_current_span(propagate.extract(h)).get_span_context()
        key = (ctx.trace_id, ctx.span_id)
        if not ctx.is_valid or key in seen:
            continue
        seen.add(key)
        links.append(Link(ctx))
        if len(links) >= limit:
            break
    return links


@contextlib.contextmanager
def batch_span(operation: str, destination: str, headers: Sequence[Mapping[str, str]]) -> Iterator[trace.Span]:
    """A CONSUMER span ``<operation> <destination>`` for a batch, linked to the messages' traces.

    Args:
        operation: messaging operation name, e.g. ``"persist"``.
        destination: stream or subject template, e.g. ``"RT"``.
        headers: each message's headers (``traceparent`` read from them).
    """
    attributes: dict[str, str | int] = {"messaging.system": "nats", "messaging.destination.name": destination,
                  "messaging.operation.type": "process", "messaging.operation.name": operation,
                  "messaging.batch.message_count": len(headers)}
    with _tracer.start_as_current_span(f"{operation} {destination}", context=trace.set_span_in_context(
            trace.INVALID_SPAN), kind=SpanKind.CONSUMER, links=links_for(headers),
            attributes=attributes) as span:
        yield span
