"""``switchboard calls``, ``replay``, ``tail``, ``trace`` and ``audit verify`` — the archive from the command line.

These commands read the archive through the recorder's REST API (``--api``, default
``http://127.0.0.1:<SWITCHBOARD_RECORDER_PORT>``, Bearer ``SWITCHBOARD_API_TOKEN`` when set), so they work
against a remote deployment; ``audit verify --database URL`` reads the database directly instead (useful when
the recorder is down, or to audit a copy); it cross-checks JetStream (``--nats``, default the configured/embedded
URL; ``--no-nats`` skips it) and verifies the chains only when NATS is not reachable. ``tail`` follows live
events on NATS (``--nats``, default the configured/embedded URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import time
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from shared.config import Settings, load_settings
from switchboard.cli.audit_checkpoints import check_calls

__all__ = ["print_waterfall", "register"]

console = Console()
audit_app = typer.Typer(help="Verify the archive's hash chains.", no_args_is_help=True)


def _settings() -> Settings:
    from switchboard.cli.up import settings_or_exit

    return settings_or_exit()


def _client(api: str | None) -> httpx.Client:
    settings = _settings()
    base = api or f"http://127.0.0.1:{settings.recorder_port}"
    headers = {"Authorization": f"Bearer {settings.api_token}"} if settings.api_token else {}
    return httpx.Client(base_url=base, headers=headers, timeout=30.0)


def _get(client: httpx.Client, path: str, **params: Any) -> Any:
    try:
        response = client.get(path, params=params or None)
    except httpx.HTTPError as exc:
        console.print(f"[red]recorder API at {client.base_url} unreachable: {exc}[/red]")
        raise typer.Exit(2) from None
    if response.status_code == 404:
        console.print(f"[red]{response.json().get('detail', 'not found')}[/red]")
        raise typer.Exit(1)
    if response.status_code >= 400:
        console.print(f"[red]{response.status_code}: {response.text}[/red]")
        raise typer.Exit(2)
    return response


def _when(ns: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9)) if ns else "-"


def _disclosure(r: dict[str, Any]) -> str:
    """``completed``, or the other status with the seconds the carrier confirmed played; ``-``: none logged."""
    status, played = r.get("disclosure_status"), r.get("disclosure_played_ms")
    if not status:
        return "-"
    return f"{status} ({played / 1000:.1f} s)" if isinstance(played, int) and status != "completed" else str(status)


def calls(api: str | None = typer.Option(None, help="Recorder API base URL"),
          limit: int = typer.Option(20, min=1, max=1000), as_json: bool = typer.Option(False, "--json")) -> None:
    """Recent calls (table)."""
    with _client(api) as client:
        rows = _get(client, "/calls", limit=limit).json()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="Recent calls")
    for column in ("call id", "started", "carrier", "from", "to", "agent", "status", "end reason", "disclosure",
                   "duration", "turns", "tools", "cost est."):
        table.add_column(column)
    for r in rows:
        duration = f"{r['duration_ms'] / 1000:.1f} s" if r.get("duration_ms") else "-"
        # None once projected = the model is not in the price table (shared/pricing.py)
        cost = (f"${r['cost_usd']:.4f}" if r.get("cost_usd") is not None
                else "unpriced" if r.get("projected_ns") else "-")
        table.add_row(r["call_id"], _when(r.get("started_ns")), r.get("carrier") or "-", r.get("from_number") or "-",
                      r.get("to_number") or "-", r.get("agent") or "-", "erased" if r.get("erased_ns") else r["status"],
                      r.get("end_reason") or "-",
                      _disclosure(r), duration, str(r.get("turns", 0)), str(r.get("tool_call_count", 0)), cost)
    console.print(table)


def _events(client: httpx.Client, call_id: str) -> list[Any]:
    from services.recorder.public import ArchivedEvent

    response = _get(client, f"/calls/{call_id}/events")
    return [ArchivedEvent.from_dict(json.loads(line)) for line in response.text.splitlines() if line.strip()]


def replay(call_id: str = typer.Argument(..., help="The call id"),
           as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table"),
           all_events: bool = typer.Option(False, "--all", help="Do not collapse runs of audio events"),
           rerun_: bool = typer.Option(False, "--rerun", help="Feed the caller audio to a fresh session"),
           speed: float = typer.Option(1.0, help="--rerun pace (× real time)"),
           min_similarity: float = typer.Option(0.0, help="--rerun: also require this user-transcript similarity"),
           logged_session: bool = typer.Option(False, "--logged-session",
                                               help="--rerun with the call's logged session.update instead of "
                                                    "the current agent's"),
           agent_version: str | None = typer.Option(
               None, "--agent-version", help="--rerun against this version of the call's agent (agents/rollout.yaml)"),
           api: str | None = typer.Option(None, help="Recorder API base URL")) -> None:
    """The call's timeline from the log; with --rerun, exit 0 when a fresh session makes the same tool calls."""
    from services.recorder.public import timeline

    with _client(api) as client:
        events = _events(client, call_id)
    if not rerun_:
        rows = timeline(events, collapse=not all_events)
        if as_json:
            for row in rows:
                typer.echo(json.dumps(row.to_dict()))
            return
        table = Table(title=f"Call {call_id}: {len(events)} events")
        for column in ("ms", "dir", "source#seq", "type", "summary"):
            table.add_column(column, overflow="fold")
        arrows = {"client": "→ model", "server": "← model", "call": "call"}
        for row in rows:
            table.add_row(f"{row.rel_ms:9.1f}", arrows.get(row.direction, row.direction),
                          f"{row.source}#{row.seq}", row.type, row.summary)
        console.print(table)
        return
    if any(e.type == "erased" and e.direction is None for e in events):  # its caller audio reads [erased]
        console.print(f"[red]call {call_id} is erased: nothing to rerun[/red]")
        raise typer.Exit(1)
    raise typer.Exit(_rerun(events, speed, min_similarity, as_json, logged_session, agent_version))


def _agent_path(events: list[Any], settings: Settings, version: str | None) -> Any:
    """The spec to rerun with: the current agent, or ``version`` of the call's agent per the rollout file."""
    from shared import rollout

    if version is None:
        return settings.agent
    started = next((e.json() for e in events if e.direction is None and e.type == "started"), None) or {}
    agent = str(started.get("agent") or settings.agent.stem)
    try:
        path = rollout.spec_path(settings.agent.parent, agent, version)
    except rollout.RolloutError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if path is None:
        console.print(f"[red]{settings.agent.parent / rollout.ROLLOUT_FILE} lists no version {version!r} of "
                      f"agent {agent!r}[/red]")
        raise typer.Exit(2)
    return path


def _rerun(events: list[Any], speed: float, min_similarity: float, as_json: bool, logged_session: bool,
           agent_version: str | None = None) -> int:
    from services.recorder import public as recorder

    settings = _settings()
    logged = recorder.logged_session_update(events)
    session_update = logged
    if not logged_session:
        agent_path = _agent_path(events, settings, agent_version)
        try:
            session_update = asyncio.run(recorder.agent_session_update(
                agent_path, settings.effective_nats_url, audio_format=recorder.logged_audio_format(events),
                model=settings.model if not settings.uses_local_model else None, logged=logged))
        except (ValueError, ImportError) as exc:
            console.print(f"[yellow]current agent unavailable ({exc}); using the logged session.update[/yellow]")
    headers: dict[str, str] = {}
    if settings.openai_api_key and not settings.realtime_url:
        headers["Authorization"] = f"Bearer {settings.openai_api_key}"
    elif settings.localmodel_token:
        headers["Authorization"] = f"Bearer {settings.localmodel_token}"
    result = asyncio.run(recorder.rerun(events, settings.effective_realtime_url, headers=headers, speed=speed,
                                        session_update=session_update))
    verdict = recorder.compare(recorder.extract_run(events), result, min_similarity=min_similarity)
    if as_json:
        typer.echo(json.dumps(verdict.to_dict()))
    else:
        colour = "green" if verdict.equivalent else "red"
        console.print(f"[{colour}]{'equivalent' if verdict.equivalent else 'different'}[/{colour}] "
                      f"(user transcript similarity {verdict.user_similarity:.2f}, "
                      f"agent {verdict.agent_similarity:.2f})")
        for line in verdict.differences:
            console.print(f"  {line}")
    return 0 if verdict.equivalent else 1


def tail(call: str | None = typer.Option(None, "--call", help="Only this call id"),
         type_glob: str | None = typer.Option(None, "--type", help="Event type glob, e.g. 'response.*'"),
         nats_url: str | None = typer.Option(None, "--nats", help="NATS URL")) -> None:
    """Live events from the bus (Ctrl-C stops)."""
    settings = _settings()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_tail(nats_url or settings.effective_nats_url, call, type_glob))


async def _tail(url: str, call_id: str | None, type_glob: str | None) -> None:
    from services.recorder.public import ArchivedEvent, classify, summarize
    from shared import subjects
    from shared.bus import Bus, Envelope

    bus = await Bus.connect(url, name="switchboard-tail", source="cli", connect_timeout=10)

    async def show(env: Envelope) -> None:
        cid, direction, kind = classify(env.subject, env.headers)
        if kind == "audio.in" or (type_glob and not fnmatch.fnmatchcase(kind, type_glob)):
            return
        ev = ArchivedEvent("", 0, cid, 0, env.subject, direction, kind, env.source, env.seq, env.msg_id,
                           env.ts_ns, time.time_ns(), None, env.headers, env.data)
        stamp = time.strftime("%H:%M:%S", time.localtime((env.ts_ns or time.time_ns()) / 1e9))
        console.print(f"{stamp} [cyan]{cid}[/cyan] {direction or 'call':6} [bold]{kind}[/bold] {summarize(ev)}",
                      markup=True, highlight=False)

    try:
        if call_id:
            await bus.subscribe(subjects.rt_all(call_id), show, dedupe=False, traced=False)
            await bus.subscribe(subjects.call_all(call_id), show, dedupe=False, traced=False)
        else:
            await bus.subscribe(subjects.rt_wildcard(), show, dedupe=False, traced=False)
            await bus.subscribe(subjects.all_call_events(), show, dedupe=False, traced=False)
        console.print(f"[dim]following {call_id or 'every call'} on {url} (Ctrl-C stops)[/dim]")
        await asyncio.Event().wait()
    finally:
        await bus.close()


def trace(call_id: str = typer.Argument(..., help="The call id"),
          api: str | None = typer.Option(None, help="Recorder API base URL"),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """The call's trace as a waterfall."""
    with _client(api) as client:
        data = _get(client, f"/calls/{call_id}/trace").json()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    if not data["waterfall"]:
        console.print("[yellow]no spans archived for this call (TRACES keeps spans for at most an hour)[/yellow]")
        raise typer.Exit(1)
    print_waterfall(call_id, data["waterfall"])


def print_waterfall(call_id: str, rows: list[dict[str, Any]], width: int = 40) -> None:
    """Print a trace waterfall: ``rows`` as served by ``GET /calls/{id}/trace`` (``name, service, depth,
    offset_ms, duration_ms, status``), one bar per span scaled to the whole trace."""
    if not rows:
        console.print(f"[yellow]no spans archived for {call_id}[/yellow]")
        return
    total = max(r["offset_ms"] + r["duration_ms"] for r in rows) or 1.0
    table = Table(title=f"Trace of {call_id} ({len(rows)} spans, {total:.0f} ms)")
    for column in ("span", "service", "start ms", "dur ms", "waterfall"):
        table.add_column(column, overflow="fold")
    for r in rows:
        start = int(r["offset_ms"] / total * width)
        length = max(1, int(r["duration_ms"] / total * width))
        colour = "red" if r.get("status") == "ERROR" else "green"
        bar = " " * start + f"[{colour}]" + "█" * min(length, width - start) + f"[/{colour}]"
        table.add_row("  " * r["depth"] + r["name"], r.get("service") or "", f"{r['offset_ms']:.1f}",
                      f"{r['duration_ms']:.1f}", bar)
    console.print(table)


@audit_app.command("verify")
def audit_verify(call_id: str | None = typer.Argument(None, help="The call id; omitted: every call"),
                 api: str | None = typer.Option(None, help="Recorder API base URL"),
                 database: str | None = typer.Option(None, help="Read this database directly instead of the API"),
                 nats_url: str | None = typer.Option(None, "--nats",
                                                     help="NATS URL for the JetStream cross-check (default: the "
                                                          "configured/embedded one)"),
                 no_nats: bool = typer.Option(False, "--no-nats", help="Verify the chains only"),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Recompute the call's hash chains and projections, cross-check them with JetStream and the latest signed
    checkpoint; exit 1 naming any altered, missing or reordered record, gap, stale projection, message JetStream
    holds that the archive lacks, or disagreement with the checkpoint. Without a call id: every call's chains
    and projections, the stream-level gaps and each stream's state against the archive."""
    if call_id is None:
        raise typer.Exit(_verify_all(api, database, None if no_nats else nats_url or _settings().effective_nats_url,
                                     as_json))
    if database:
        report, archived = asyncio.run(_verify_direct(database, call_id))
    else:
        with _client(api) as client:
            report = _get(client, f"/calls/{call_id}/audit").json()
            archived = _archived_seqs(client, call_id)
    if not no_nats:
        url = nats_url or _settings().effective_nats_url
        report["jetstream"] = asyncio.run(_crosscheck(url, call_id, archived))
        report["ok"] = report["ok"] and report["jetstream"].get("ok", True)
        with _client(api) as client:
            report["checkpoint"] = check_calls(_settings(), url, [call_id], _connect, database=database,
                                               client=client)[call_id]
        report["ok"] = report["ok"] and report["checkpoint"].get("ok", True)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_report(call_id, report)
    if not report["ok"]:
        raise typer.Exit(1)


def _print_report(call_id: str, report: dict[str, Any]) -> None:
    checkpoint = report.get("checkpoint") or {}
    if checkpoint.get("skipped"):
        console.print(f"[yellow]signed checkpoints not checked: {checkpoint['skipped']}[/yellow]", highlight=False)
    if checkpoint.get("present") and checkpoint.get("ok"):
        kind = "final" if checkpoint.get("final") else "latest"
        console.print(f"  matches the {kind} signed checkpoint", highlight=False)
    jetstream = report.get("jetstream")
    if jetstream is not None and not jetstream["reachable"]:
        console.print(f"[yellow]JetStream at {jetstream['url']} not reachable ({jetstream['error']}): "
                      f"verifying the archive's chains only[/yellow]", highlight=False)
    erased = report.get("erased")
    if erased:
        console.print(f"  erased at {_when(erased['erased_ns'])} by {erased['erased_by']} ({erased['reason']}): "
                      "content unreadable, the chains cover the stored ciphertext", highlight=False)
    if report["ok"]:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(report["records"].items()))
        checked = " and everything JetStream holds is archived" if jetstream and jetstream["reachable"] else ""
        console.print(f"[green]OK[/green] {call_id}: every chain intact ({counts}){checked}")
    else:
        problems = [p["description"] for p in report["problems"]]
        problems += [f"signed checkpoint: {line}" for line in checkpoint.get("problems", [])]
        for stream in (jetstream or {}).get("streams", []):
            problems += [f"{stream['stream']} stream_seq {m['stream_seq']} ({m['subject']}) is in JetStream but "
                         f"not in the archive" for m in stream["missing"]]
        console.print(f"[red]FAILED[/red] {call_id}: {len(problems)} problem(s)")
        for line in problems:
            console.print(f"  {line}", highlight=False)
    for stream in (jetstream or {}).get("streams", []):
        console.print(f"  {stream['stream']}: {stream['in_stream']} message(s) in JetStream (last seq "
                      f"{stream['stream_last_seq']}), {stream['archived']} archived (last seq "
                      f"{stream['archived_last_seq']})", highlight=False)


def _archived_seqs(client: httpx.Client, call_id: str) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for line in _get(client, f"/calls/{call_id}/events", body="false").text.splitlines():
        if line.strip():
            event = json.loads(line)
            out.setdefault(event["stream"], set()).add(int(event["stream_seq"]))
    return out


async def _connect(url: str) -> Any:
    """A NATS connection for the audit, or the exception that prevented it."""
    import nats

    async def quiet(_: Exception) -> None:
        """nats-py logs every failed attempt with a traceback by default; the outcome is reported once."""

    try:  # nats-py retries the initial connect until told otherwise: bound it
        return await asyncio.wait_for(nats.connect(url, connect_timeout=2, allow_reconnect=False,
                                                   max_reconnect_attempts=1, error_cb=quiet,
                                                   name="switchboard-audit",
                                                   **load_settings().nats_options(identity="operator")), 5)
    except Exception as exc:
        return exc


async def _crosscheck(url: str, call_id: str, archived: dict[str, set[int]]) -> dict[str, Any]:
    """The JetStream cross-check as a JSON-able dict: ``url, reachable, error, ok, streams``."""
    from services.recorder.public import crosscheck

    nc = await _connect(url)
    if isinstance(nc, Exception):
        return {"url": url, "reachable": False, "error": str(nc) or type(nc).__name__, "streams": []}
    try:
        checks = await asyncio.wait_for(crosscheck(nc.jetstream(), call_id, archived), 120)
    except Exception as exc:
        return {"url": url, "reachable": False, "error": f"JetStream unreadable: {exc or type(exc).__name__}",
                "streams": []}
    finally:
        await nc.close()
    return {"url": url, "reachable": True, "error": None, "ok": all(c.ok for c in checks),
            "streams": [c.to_dict() for c in checks]}


async def _verify_direct(url: str, call_id: str) -> tuple[dict[str, Any], dict[str, set[int]]]:
    from services.recorder import public as recorder

    settings = _settings()
    engine = recorder.open_archive(url)
    try:
        vault = recorder.open_vault(settings.archive_key, settings.data_dir)
        report = await recorder.verify_call(engine, call_id, vault=vault)
        archived = await recorder.archived_sequences(engine, call_id)
    finally:
        await engine.dispose()
    if not report.records:
        console.print(f"[red]no archived events for call {call_id}[/red]")
        raise typer.Exit(1)
    return report.to_dict(), archived


def _verify_all(api: str | None, database: str | None, nats_url: str | None, as_json: bool) -> int:
    """``audit verify`` without a call id; returns the exit code (1 on any failing call or stream-level gap)."""
    if database:
        facts, reports = asyncio.run(_all_direct(database))
    else:
        with _client(api) as client:
            facts = _get(client, "/audit/streams").json()
            reports = [_get(client, f"/calls/{c}/audit").json() for c in facts["calls"]]
    jetstream = asyncio.run(_stream_states(nats_url)) if nats_url else None
    if nats_url:
        with _client(api) as client:
            signed = check_calls(_settings(), nats_url, [r["call_id"] for r in reports], _connect,
                                 database=database, client=client)
        for report in reports:
            report["checkpoint"] = signed[report["call_id"]]
            report["ok"] = report["ok"] and report["checkpoint"].get("ok", True)
    failing = [r for r in reports if not r["ok"]]
    ok = not failing and not facts["gaps"]
    if as_json:
        typer.echo(json.dumps({"ok": ok, "calls": len(reports), "failing": failing, "gaps": facts["gaps"],
                               "positions": facts["positions"], "jetstream": jetstream}, indent=2))
        return 0 if ok else 1
    for report in failing:
        lines = [p["description"] for p in report["problems"]]
        lines += [f"signed checkpoint: {line}" for line in report.get("checkpoint", {}).get("problems", [])]
        console.print(f"[red]FAILED[/red] {report['call_id']}: {len(lines)} problem(s)")
        for line in lines:
            console.print(f"  {line}", highlight=False)
    for gap in facts["gaps"]:
        console.print(f"[red]GAP[/red] {gap['stream']} stream sequences {gap['first_seq']}..{gap['last_seq']} were "
                      f"never archived ({gap['reason']})", highlight=False)
    if jetstream is not None and not jetstream["reachable"]:
        console.print(f"[yellow]JetStream at {jetstream['url']} not reachable ({jetstream['error']}): "
                      f"verifying the archive only[/yellow]", highlight=False)
    for name, state in (jetstream or {}).get("streams", {}).items():
        position = facts["positions"].get(name, 0)
        behind = f", {state['last_seq'] - position} not yet archived" if state["last_seq"] > position else ""
        console.print(f"  {name}: JetStream holds {state['messages']} message(s), sequences {state['first_seq']}.."
                      f"{state['last_seq']}; archived up to {position}{behind}", highlight=False)
    colour, word = ("green", "OK") if ok else ("red", "FAILED")
    console.print(f"[{colour}]{word}[/{colour}] {len(reports)} call(s) verified, {len(failing)} failing, "
                  f"{len(facts['gaps'])} stream-level gap(s)")
    return 0 if ok else 1


async def _all_direct(url: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from services.recorder import public as recorder

    engine = recorder.open_archive(url)
    try:
        ids = await recorder.call_ids(engine)
        facts: dict[str, Any] = {"positions": await recorder.positions(engine),
                                 "gaps": await recorder.stream_gaps(engine), "calls": ids}
        reports = [(await recorder.verify_call(engine, c)).to_dict() for c in ids]
    finally:
        await engine.dispose()
    return facts, reports


async def _stream_states(url: str) -> dict[str, Any]:
    """CALLS and RT stream states (``messages, first_seq, last_seq``) as a JSON-able dict."""
    nc = await _connect(url)
    if isinstance(nc, Exception):
        return {"url": url, "reachable": False, "error": str(nc) or type(nc).__name__, "streams": {}}
    streams: dict[str, Any] = {}
    try:
        for name in ("CALLS", "RT"):
            state = (await nc.jetstream().stream_info(name)).state
            streams[name] = {"messages": int(state.messages or 0), "first_seq": int(state.first_seq or 0),
                             "last_seq": int(state.last_seq or 0)}
    except Exception as exc:
        return {"url": url, "reachable": False, "error": f"JetStream unreadable: {exc or type(exc).__name__}",
                "streams": {}}
    finally:
        await nc.close()
    return {"url": url, "reachable": True, "error": None, "streams": streams}


def register(app: typer.Typer) -> None:
    """Add the archive commands to the ``switchboard`` app."""
    app.command("calls")(calls)
    app.command("replay")(replay)
    app.command("tail")(tail)
    app.command("trace")(trace)
    app.add_typer(audit_app, name="audit")
