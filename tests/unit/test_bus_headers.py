"""Bus._headers: reused trace injection for untraced publishes always matches the current context."""

from __future__ import annotations

from typing import Any

from opentelemetry import baggage, propagate
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider

from shared.bus import Bus, Headers


class _NoConnection:
    def jetstream(self) -> None:
        return None


def _bus() -> Bus:
    nc: Any = _NoConnection()
    return Bus(nc, source="gateway")


def _fresh() -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def test_reused_injection_equals_a_fresh_one_in_every_context() -> None:
    bus = _bus()
    tracer = TracerProvider().get_tracer("test")
    assert Headers.TRACEPARENT not in bus._headers("c1", None, reuse_context=True)  # no span: nothing
    seen = set()
    for _ in range(3):
        with tracer.start_as_current_span("call"):
            for _ in range(5):  # the same context: the cached headers
                headers = bus._headers("c1", None, reuse_context=True)
                assert {k: headers[k] for k in _fresh()} == _fresh()
            seen.add(headers[Headers.TRACEPARENT])
            token = otel_context.attach(baggage.set_baggage("tenant", "acme"))  # a new context object
            try:
                headers = bus._headers("c1", None, reuse_context=True)
                assert headers.get("baggage") == "tenant=acme" == _fresh()["baggage"]
            finally:
                otel_context.detach(token)
            assert "baggage" not in bus._headers("c1", None, reuse_context=True)
    assert len(seen) == 3  # each span's own traceparent, never a stale one
    assert Headers.TRACEPARENT not in bus._headers("c1", None, reuse_context=True)


def test_the_cache_is_bounded() -> None:
    from shared.bus.client import INJECTION_CACHE_SIZE

    bus = _bus()
    tracer = TracerProvider().get_tracer("test")
    for _ in range(INJECTION_CACHE_SIZE * 2):
        with tracer.start_as_current_span("s"):
            bus._headers(None, None, reuse_context=True)
    assert len(bus._injections) <= INJECTION_CACHE_SIZE
