"""HTML of the console pages (server-rendered; every value escaped with :func:`html.escape`).

Pure functions from already-loaded data to HTML strings; the routes (:mod:`.routes`) load the data. Assets
(``console.css``, ``console.js``, ``live.js``) are served from the package under ``/ui/static/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import urlencode

from services.recorder.ui.svg import bar_chart

__all__ = ["call_page", "calls_page", "kpis_page", "layout"]

_AUDIO_TYPES = ("input_audio_buffer.append", "response.output_audio.delta", "carrier.mark")
"""Event types left out of the call page's timeline (audio and its playback marks)."""


def _e(value: Any) -> str:
    return "" if value is None else escape(str(value))


def _when(ns: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ns / 1e9)) if ns else "-"


def _secs(ms: float | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.1f} s"


def _cost(call: Mapping[str, Any]) -> str:
    if call.get("cost_usd") is not None:
        return f"${call['cost_usd']:.4f} (estimate)"
    return "unpriced model" if call.get("projected_ns") else "-"


def disclosure_text(call: Mapping[str, Any]) -> str:
    """The disclosure column of a call: its status and the ms confirmed played (``-``: none logged yet)."""
    status = call.get("disclosure_status")
    if not status:
        return "-"
    played = call.get("disclosure_played_ms")
    return f"{status} ({played / 1000:.1f} s)" if isinstance(played, int) and status != "completed" else str(status)


def layout(title: str, body: str, *, token_q: str = "", scripts: Sequence[str] = ()) -> str:
    """A full page: header with navigation, ``body``, page scripts (``/ui/static/<name>``, deferred, in order)."""
    tags = "".join(f'<script src="/ui/static/{name}{token_q}" defer></script>' for name in scripts)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)} — Switchboard</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="stylesheet" href="/ui/static/console.css{token_q}">{tags}</head><body>'
            f'<header><a class="brand" href="/ui/{token_q}">Switchboard</a><nav>'
            f'<a href="/ui/{token_q}">Calls</a><a href="/ui/kpis{token_q}">KPIs</a>'
            f'<a href="/docs">API</a></nav></header><main>{body}</main></body></html>')


def _select(name: str, label: str, values: Sequence[str], current: str | None) -> str:
    opts = "".join(f'<option value="{_e(v)}"{" selected" if v == current else ""}>{_e(v)}</option>'
                   for v in values)
    return (f'<label>{_e(label)}<select name="{name}"><option value="">any</option>{opts}</select></label>')


def calls_page(rows: Sequence[Mapping[str, Any]], total: int, *, params: Mapping[str, str],
               values: Mapping[str, Sequence[str]], page: int, per_page: int, token_q: str,
               analytics: bool) -> str:
    """The calls list: filter form, table (newest first) and paging links."""
    form = ('<form class="filters" method="get" action="/ui/">'
            f'<label>from<input type="date" name="from" value="{_e(params.get("from"))}"></label>'
            f'<label>to<input type="date" name="to" value="{_e(params.get("to"))}"></label>'
            + _select("agent_version", "version", values.get("agent_version", []), params.get("agent_version"))
            + _select("status", "status", values.get("status", []), params.get("status"))
            + _select("end_reason", "end reason", values.get("end_reason", []), params.get("end_reason"))
            + _select("carrier", "carrier", values.get("carrier", []), params.get("carrier"))
            + f'<label>caller<input name="caller" value="{_e(params.get("caller"))}" placeholder="+1555"></label>'
            + (f'<input type="hidden" name="access_token" value="{_e(params["access_token"])}">'
               if params.get("access_token") else "")
            + '<button type="submit">Filter</button></form>')
    head = "".join(f"<th>{h}</th>" for h in ("started", "call", "caller", "carrier", "agent", "version", "status",
                                              "end reason", "disclosure", "duration", "turns", "tools",
                                              "cost"))
    body = []
    for r in rows:
        link = f'/ui/calls/{_e(r["call_id"])}{token_q}'
        body.append(
            f'<tr class="call-row" data-call-id="{_e(r["call_id"])}"><td>{_when(r.get("started_ns"))}</td>'
            f'<td><a href="{link}">{_e(r["call_id"])}</a></td><td>{_e(r.get("from_number"))}</td>'
            f'<td>{_e(r.get("carrier"))}</td><td>{_e(r.get("agent"))}</td><td>{_e(r.get("agent_version"))}</td>'
            f'<td>{"erased" if r.get("erased_ns") else _e(r.get("status"))}</td><td>{_e(r.get("end_reason"))}</td>'
            f'<td class="disclosure">{_e(disclosure_text(r))}</td>'
            f'<td>{_secs(r.get("duration_ms"))}</td>'
            f'<td>{_e(r.get("turns"))}</td><td>{_e(r.get("tool_call_count"))}</td><td>{_cost(r)}</td></tr>')
    pages = max(1, -(-total // per_page))
    keep = {k: v for k, v in params.items() if v and k != "page"}

    def page_link(n: int, text: str) -> str:
        return f'<a href="/ui/?{escape(urlencode({**keep, "page": str(n)}))}">{text}</a>'

    nav = (f'<div class="paging">{page_link(page - 1, "← newer") if page > 1 else ""} '
           f'page {page} of {pages} ({total} calls) '
           f'{page_link(page + 1, "older →") if page < pages else ""}</div>')
    note = "" if analytics else ('<p class="note">Agent versions need the analytics service '
                                 '(<code>services/analytics</code>) on this database.</p>')
    table = (f'<table class="calls"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
             if rows else '<p class="empty">No calls match.</p>')
    return layout("Calls", f"<h1>Calls</h1>{form}{note}{table}{nav}", token_q=token_q)


def _transcript(turns: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]) -> str:
    items: list[tuple[float, int, str]] = []
    for i, t in enumerate(turns):
        start, end = t.get("start_ms"), t.get("end_ms")
        who = "caller" if t["role"] == "user" else "agent"
        cut = ' <span class="cut">(interrupted)</span>' if t.get("interrupted") else ""
        items.append((start if start is not None else 1e18, i,
                      f'<div class="turn {_e(t["role"])}" data-start="{_e(start)}" data-end="{_e(end)}">'
                      f'<span class="at">{_secs(start)}</span><span class="role">{who}</span>'
                      f'<span class="text">{_e(t.get("text"))}</span>{cut}</div>'))
    for i, c in enumerate(tools):
        at = c.get("requested_ms")
        result = (f'<div class="result error">error: {_e(c.get("error"))}</div>' if c.get("error")
                  else f'<div class="result">→ {_e(c.get("output"))}</div>' if c.get("output") is not None
                  else '<div class="result pending">(no result)</div>')
        items.append((at if at is not None else 1e18, len(turns) + i,
                      f'<div class="turn tool" data-start="{_e(at)}" data-end="{_e(c.get("completed_ms"))}">'
                      f'<span class="at">{_secs(at)}</span><span class="role">tool</span>'
                      f'<code>{_e(c.get("name"))}({_e(c.get("arguments"))})</code>{result}</div>'))
    items.sort(key=lambda x: (x[0], x[1]))
    return "".join(html for _, _, html in items) or '<p class="empty">No transcript.</p>'


def _times(row: Mapping[str, Any]) -> str:
    count = int(row.get("count", 1))
    return f" ×{count}" if count > 1 else ""


def _timeline(rows: Sequence[Mapping[str, Any]]) -> str:
    shown = [r for r in rows if r["type"] not in _AUDIO_TYPES]
    body = "".join(f'<tr><td>{r["rel_ms"]:.0f}</td><td>{_e(r["direction"])}</td><td>{_e(r["source"])}#'
                   f'{_e(r["seq"])}</td><td>{_e(r["type"])}{_times(r)}'
                   f'</td><td>{_e(r["summary"])}</td></tr>' for r in shown[:3000])
    more = f'<p class="note">{len(shown) - 3000} more events not shown.</p>' if len(shown) > 3000 else ""
    audio = sum(int(r.get("count", 1)) for r in rows if r["type"] in _AUDIO_TYPES)
    return (f'<p class="note">{audio} audio events filtered out.</p>'
            f'<table class="timeline"><thead><tr><th>ms</th><th>dir</th><th>source#seq</th><th>type</th>'
            f'<th>summary</th></tr></thead><tbody>{body}</tbody></table>{more}')


def _waterfall(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return '<p class="empty">No spans for this call.</p>'
    end = max((r["offset_ms"] + r["duration_ms"] for r in rows), default=1.0) or 1.0
    out = []
    for r in rows:
        left, width = 100 * r["offset_ms"] / end, max(0.3, 100 * r["duration_ms"] / end)
        out.append(f'<div class="span-row"><span class="span-name" style="padding-left:{r["depth"] * 12}px">'
                   f'{_e(r["name"])} <small>{_e(r["service"])}</small></span><span class="span-track">'
                   f'<span class="span-bar {"err" if r.get("status") == "ERROR" else ""}" '
                   f'style="left:{left:.2f}%;width:{width:.2f}%" title="{r["offset_ms"]:.1f} ms + '
                   f'{r["duration_ms"]:.1f} ms"></span></span><span class="span-ms">{r["duration_ms"]:.1f} ms'
                   f'</span></div>')
    return f'<div class="waterfall">{"".join(out)}</div>'


def _kpi_panel(kpis: Mapping[str, Any] | None) -> str:
    if kpis is None:
        return '<p class="note">No KPI row (the analytics service has not seen this call).</p>'
    lat = kpis.get("first_response_ms") or []
    rows = [("agent version", kpis.get("agent_version")),
            ("first-response latency (ms)", ", ".join(f"{v:.0f}" for v in lat) or "-"),
            ("interruptions (stopped/all)", f'{kpis.get("interruptions_stopped")}/{kpis.get("interruptions")}'),
            ("tool calls (errors)", f'{kpis.get("tool_calls")} ({kpis.get("tool_errors")})'),
            ("task completed", kpis.get("task_completed")), ("escalated", kpis.get("escalated")),
            ("dropped", kpis.get("dropped"))]
    return '<table class="kv">' + "".join(f"<tr><th>{k}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"


def call_page(call: Mapping[str, Any], *, turns: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]],
              timeline: Sequence[Mapping[str, Any]], waterfall: Sequence[Mapping[str, Any]],
              audit: Mapping[str, Any], kpis: Mapping[str, Any] | None, token_q: str) -> str:
    """One call: summary, recording + transcript (the player follows the transcript), live view while in
    progress, tool calls with results, event timeline without audio, trace waterfall, audit, cost, KPIs."""
    cid = _e(call["call_id"])
    ended = call.get("status") == "ended"
    summary = [("status", call.get("status")), ("end reason", call.get("end_reason")),
               ("disclosure", disclosure_text(call)),
               ("carrier", call.get("carrier")), ("caller", call.get("from_number")), ("to", call.get("to_number")),
               ("agent", call.get("agent")), ("version", (kpis or {}).get("agent_version")),
               ("started", _when(call.get("started_ns"))), ("duration", _secs(call.get("duration_ms"))),
               ("model cost", _cost(call)),
               ("tokens in/out", f'{call.get("input_tokens", 0)}/{call.get("output_tokens", 0)}')]
    kv = '<table class="kv">' + "".join(f"<tr><th>{k}</th><td>{_e(v)}</td></tr>" for k, v in summary) + "</table>"
    erased = (f'<p class="note erased">Erased {_when(call.get("erased_ns"))} by {_e(call.get("erased_by"))} '
              f'({_e(call.get("erase_reason"))}): the recording, transcript, tool arguments and outputs are '
              'destroyed; the events keep their sealed content and the hash chains still verify.</p>'
              if call.get("erased_ns") else None)
    if erased:
        kv = kv.replace(f"<td>{_e(call.get('status'))}</td>", "<td>erased</td>", 1)
    audio = erased or (
        f'<audio id="player" controls preload="metadata" src="/calls/{cid}/recording.wav{token_q}"></audio>'
        '<p class="note">Stereo: caller left, agent right. The transcript follows the player; click a line '
        'to jump there.</p>' if call.get("projected_ns") else
        '<p class="note">The recording is available once the call has ended.</p>')
    live = "" if ended else (f'<section id="live" data-call-id="{cid}" data-token="{_e(token_q[14:])}">'
                             '<h2>Live transcript <small>(<span id="live-status">connecting…</span>)</small></h2>'
                             '<div id="live-log"></div>'
                             '</section>')
    problems = audit.get("problems") or []
    audit_html = ('<p class="ok">hash chains intact (' + _e(json.dumps(audit.get("records"))) + ')</p>'
                  if audit.get("ok") else '<p class="bad">audit FAILED</p><ul>'
                  + "".join(f"<li>{_e(json.dumps(p))}</li>" for p in problems) + "</ul>")
    body = (f'<h1>Call <code>{cid}</code></h1><div class="cols"><div>{kv}</div><div><h2>KPIs</h2>'
            f'{_kpi_panel(kpis)}<h2>Audit</h2>{audit_html}</div></div>{live}'
            f'<section><h2>Recording and transcript</h2>{audio}<div id="transcript">{_transcript(turns, tools)}'
            f'</div></section><section><h2>Trace</h2>{_waterfall(waterfall)}</section>'
            f'<section><h2>Events</h2>{_timeline(timeline)}</section>'
            f'<p><a href="/calls/{cid}{token_q}">JSON</a> · <a href="/calls/{cid}/events{token_q}">events (NDJSON)</a>'
            f' · <a href="/calls/{cid}/live{token_q}">live page</a></p>')
    return layout(f"Call {call['call_id']}", body, token_q=token_q, scripts=("live.js", "console.js"))


def _rate_cell(rate: Mapping[str, Any]) -> str:
    value = "-" if rate["value"] is None else f"{rate['value']:.0%}"
    return f"<td>{value} <small>({rate['numerator']}/{rate['denominator']})</small></td>"


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}"


def kpis_page(by_version: Sequence[Mapping[str, Any]], by_day: Sequence[Mapping[str, Any]], *, token_q: str,
              analytics: bool) -> str:
    """The KPI dashboard: charts and a table per agent version and per day (definitions: services/analytics)."""
    if not analytics:
        return layout("KPIs", '<h1>KPIs</h1><p class="note">No analytics tables in this database: run the '
                      'analytics service (<code>python -m services.analytics</code>, started by '
                      '<code>switchboard up</code>).</p>', token_q=token_q)
    rates = ("task_completion", "tool_success", "interruption_success", "escalation_rate", "drop_rate")

    def charts(groups: Sequence[Mapping[str, Any]], what: str) -> str:
        keys = [str(g["key"]) for g in groups]
        rate_chart = bar_chart(f"Rates per {what}", keys, {r.replace("_", " "): [g[r]["value"] for g in groups]
                                                            for r in rates}, percent=True, width=760)
        lat_chart = bar_chart(f"First-response latency per {what} (ms)", keys,
                              {"p50": [g["first_response_p50_ms"] for g in groups],
                               "p95": [g["first_response_p95_ms"] for g in groups]})
        cost_chart = bar_chart(f"Cost per call per {what} (USD, estimate)", keys,
                               {"cost/call": [g["cost_per_call_usd"] for g in groups]})
        head = "".join(f"<th>{h}</th>" for h in (what, "calls", "p50 ms", "p95 ms", *rates, "cost/call",
                                                   "unpriced"))
        body = "".join(
            f'<tr><td>{_e(g["key"])}</td><td>{g["calls"]}</td><td>{_e(g["first_response_p50_ms"])}</td>'
            f'<td>{_e(g["first_response_p95_ms"])}</td>'
            + "".join(_rate_cell(g[r]) for r in rates)
            + f'<td>{_usd(g["cost_per_call_usd"])}</td><td>{g["unpriced_calls"]}</td></tr>' for g in groups)
        table = f'<table class="kpis"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        return f'<div class="charts">{rate_chart}{lat_chart}{cost_chart}</div>{table}'

    body = ('<h1>KPIs</h1><p class="note">Ended calls. Definitions and formulas: docs/analytics.md '
            '(<code>services/analytics/kpis.py</code>). Compare versions with confidence intervals: '
            '<code>switchboard kpis --by version</code>.</p>'
            f'<section id="by-version"><h2>Per agent version</h2>{charts(by_version, "version")}</section>'
            f'<section id="by-day"><h2>Per day</h2>{charts(by_day, "day")}</section>')
    return layout("KPIs", body, token_q=token_q)
