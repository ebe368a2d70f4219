"""One OpenTelemetry trace per call across gateway, session and tools processes (issue: one trace per call).

The booking call's spans, exported by each process to ``otel.spans`` and stored by the recorder, are read back
from ``GET /calls/{id}/trace`` and rebuilt into a tree from their real parent ids. The assertion is an indented
tree string of the structural spans (``name [service]``); per-event log spans (``publish rt.*`` /
``process rt.*``), FastAPI's internal spans and barge-in clears are left out, and repeated siblings are
listed once, in order of first appearance, so the string does not depend on how many responses a turn took.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ROOT, System
from tests.e2e.test_scenarios import placed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

HIDDEN = ("publish rt.", "process rt.", "fastapi.", "publish call.{call_id}.command.clear",
          "process call.{call_id}.command.clear")
"""Left out of the tree: per-event log spans, FastAPI internals, and barge-in clears (whether the caller's
speech overlapped agent audio in this call depends on timing; the barge-in scenario checks clears)."""

EXPECTED = """\
WS /twilio/media [switchboard-gateway]
  twilio call [switchboard-gateway]
    publish call.{call_id}.started [switchboard-gateway]
      process call.{call_id}.started [switchboard-session]
        realtime gpt-realtime [switchboard-session]
          chat gpt-realtime [switchboard-session]
            execute_tool book_appointment [switchboard-session]
              send tools.book_appointment [switchboard-session]
                process tools.book_appointment [switchboard-tools]
                  execute_tool book_appointment [switchboard-tools]
            execute_tool end_call [switchboard-session]
              send tools.end_call [switchboard-session]
                process tools.end_call [switchboard-tools]
                  execute_tool end_call [switchboard-tools]
        publish call.{call_id}.session.model_connected [switchboard-session]
        publish call.{call_id}.command.hangup [switchboard-session]
          process call.{call_id}.command.hangup [switchboard-gateway]
        publish call.{call_id}.session.summary [switchboard-session]
    publish call.{call_id}.ended [switchboard-gateway]
      process call.{call_id}.ended [switchboard-session]"""


def tree(spans: list[dict[str, Any]]) -> str:
    """The indented tree of ``spans`` (structural ones; each distinct child line once, first-seen order).

    A hidden span's children are attached to its nearest shown ancestor."""
    by_id = {s["span_id"]: s for s in spans}
    shown = [s for s in spans if not str(s["name"]).startswith(HIDDEN)]

    def shown_parent(span: dict[str, Any]) -> str | None:
        parent = by_id.get(span.get("parent_span_id") or "")
        while parent is not None and str(parent["name"]).startswith(HIDDEN):
            parent = by_id.get(parent.get("parent_span_id") or "")
        return parent["span_id"] if parent is not None else None

    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in sorted(shown, key=lambda s: s["offset_ms"]):
        children.setdefault(shown_parent(span), []).append(span)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        merged: dict[str, list[str]] = {}
        for span in children.get(parent, []):
            merged.setdefault(f"{span['name']} [{span.get('service')}]", []).append(span["span_id"])
        for label, ids in merged.items():
            lines.append("  " * depth + label)
            # the children of every same-labelled sibling, merged
            for sid in ids:
                for child in children.get(sid, []):
                    children.setdefault(f"merged:{ids[0]}", []).append(child)
            walk(f"merged:{ids[0]}", depth + 1)

    walk(None, 0)
    return "\n".join(lines)


async def test_one_trace_spans_gateway_session_and_tools(system: System) -> None:
    result, call = await placed(system, ROOT / "scenarios" / "book-appointment.yaml")
    async with httpx.AsyncClient(base_url=system.recorder_url, timeout=30) as client:
        data = (await client.get(f"/calls/{result.call_id}/trace")).json()
    spans = data["waterfall"]
    assert {s["trace_id"] for s in spans} == {call["trace_id"]}, "more than one trace for the call"
    assert {s["service"] for s in spans} >= {"switchboard-gateway", "switchboard-session", "switchboard-tools"}
    actual = tree(spans)
    # the disclosure (played while the model connects, so its place among model_connected's siblings varies):
    # under the session's call span, its audio handed to the gateway, then the proof
    lines = actual.splitlines()
    played = [f"{' ' * 8}publish call.{{call_id}}.command.play [switchboard-session]",
              f"{' ' * 10}process call.{{call_id}}.command.play [switchboard-gateway]",
              f"{' ' * 8}publish call.{{call_id}}.session.disclosure [switchboard-session]"]
    at = [lines.index(line) for line in played]
    assert at == sorted(at) and at[1] == at[0] + 1, "\n" + actual
    actual = "\n".join(line for line in lines if line not in played)
    assert actual == EXPECTED, "\n" + actual
    tool_span = next(s for s in spans if s["name"] == "execute_tool book_appointment"
                     and s["service"] == "switchboard-tools")
    assert tool_span["status"] != "ERROR" and tool_span["kind"] == "INTERNAL"
    model = next(s for s in data["spans"] if s["name"] == "chat gpt-realtime")
    assert model["kind"] == "CLIENT"
    assert model["attributes"]["gen_ai.provider.name"] == "openai"
    assert model["attributes"]["gen_ai.request.model"] == "gpt-realtime"
    assert {"server.address", "server.port", "gen_ai.response.id"} <= set(model["attributes"])
