"""A trace as a waterfall: spans ordered depth-first from the roots, with offsets and durations in ms."""

from __future__ import annotations

from typing import Any

__all__ = ["waterfall"]


def waterfall(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows ``{depth, offset_ms, duration_ms, name, service, kind, status, span_id, parent_span_id,
    trace_id}`` in depth-first order (children by start time); spans whose parent is absent are roots.

    ``offset_ms`` counts from the earliest span start.
    """
    if not spans:
        return []
    t0 = min(int(s["start_ns"]) for s in spans)
    ids = {s["span_id"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans:
        parent = span.get("parent_span_id")
        children.setdefault(parent if parent in ids else None, []).append(span)
    for group in children.values():
        group.sort(key=lambda s: (int(s["start_ns"]), s["span_id"]))
    rows: list[dict[str, Any]] = []
    stack: list[tuple[dict[str, Any], int]] = [(s, 0) for s in reversed(children.get(None, []))]
    seen: set[str] = set()
    while stack:
        span, depth = stack.pop()
        if span["span_id"] in seen:
            continue
        seen.add(span["span_id"])
        rows.append({
            "depth": depth, "offset_ms": (int(span["start_ns"]) - t0) / 1e6,
            "duration_ms": (int(span["end_ns"]) - int(span["start_ns"])) / 1e6, "name": span["name"],
            "service": span.get("service"), "kind": span.get("kind"), "status": span.get("status"),
            "span_id": span["span_id"], "parent_span_id": span.get("parent_span_id"),
            "trace_id": span.get("trace_id"),
        })
        stack.extend((c, depth + 1) for c in reversed(children.get(span["span_id"], [])))
    return rows
