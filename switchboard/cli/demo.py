"""``switchboard demo`` — start everything, place the demo call, and show what the system recorded about it.

Steps: the supervisor starts embedded NATS (unless ``SWITCHBOARD_NATS_URL`` is set) and every service as in
``switchboard up`` (the local model only without ``OPENAI_API_KEY`` / ``SWITCHBOARD_REALTIME_URL``); the caller
simulator places ``scenarios/book-appointment.yaml`` through the gateway exactly as Twilio would; once the
recorder has archived and projected the call, the demo prints the call id, both sides of the transcript, the
tool calls with arguments and results, event counts by type, the trace waterfall, the recording's path and
the end-of-speech → first-audio figures; then it stops everything.

Exit code: 0 only when the scenario's expectations held (checked against the log) and the archive has the
call; 1 otherwise; 2 for a bad configuration or scenario file.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from shared.callfigures import FirstAudio
from shared.config import Settings
from switchboard.caller import CallResult, run_scenario
from switchboard.scenario import ScenarioError, load_scenario
from switchboard.supervisor import Supervisor

__all__ = ["first_audio_latencies_ms", "register", "wait_archived"]

console = Console(width=None if sys.stdout.isatty() else 140)
"""Piped output (``make demo | tee``, CI logs) gets 140 columns instead of Rich's 80, so tables stay readable."""
DEMO_SCENARIO = Path("scenarios/book-appointment.yaml")
LOGGED_EVENT_SPANS = ("publish rt.", "process rt.")
"""Span-name prefixes of one logged Realtime event each, left out of the demo's waterfall."""
ARCHIVE_TIMEOUT_S = 60.0
"""How long the demo waits for the recorder to archive, project and record the finished call."""


def first_audio_latencies_ms(events: list[dict[str, Any]]) -> list[float]:
    """End of caller speech → first model audio, per user turn (ms), from archived events in log order.

    The figure is :class:`shared.callfigures.FirstAudio` over the events' ``Switchboard-Ts`` publish stamps
    (``ts_ns``), so it is what the session saw: the model's turn latency, excluding the VAD's silence wait
    (which ends at speech_stopped). Events without ``ts_ns`` are skipped.
    """
    out: list[float] = []
    state = FirstAudio()
    for event in events:
        if not event.get("ts_ns"):
            continue
        state, latency = state.observe((event.get("direction"), str(event.get("type"))), int(event["ts_ns"]))
        if latency is not None:
            out.append(latency)
    return out


async def wait_archived(client: httpx.AsyncClient, call_id: str,
                        timeout: float = ARCHIVE_TIMEOUT_S) -> dict[str, Any]:
    """``GET /calls/{call_id}`` from the recorder API at ``client`` once the call is ended, projected and
    recorded; what the recorder has (possibly ``{}``) when that does not happen within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    call: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = await client.get(f"/calls/{call_id}")
        if response.status_code == 200:
            call = response.json()
            if call.get("status") == "ended" and call.get("projected_ns") and call.get("recording_path"):
                return call
        await asyncio.sleep(0.5)
    return call


def _show(result: CallResult, call: dict[str, Any], transcript: dict[str, Any], events: list[dict[str, Any]],
          trace: dict[str, Any], recorder_url: str) -> None:
    from switchboard.cli.archive import print_waterfall

    console.rule(f"[bold]call {result.call_id}")
    table = Table(title="Transcript (from the archive)")
    for column in ("start ms", "who", "text"):
        table.add_column(column, overflow="fold")
    for turn in transcript.get("turns", []):
        table.add_row(f"{turn.get('start_ms') or 0:.0f}", turn["role"], turn["text"])
    console.print(table)
    tools = Table(title="Tool calls")
    for column in ("tool", "arguments", "result", "latency ms"):
        tools.add_column(column, overflow="fold")
    for call_row in transcript.get("tool_calls", []):
        outcome = call_row.get("error") or call_row.get("output") or "-"
        latency = call_row.get("latency_ms")
        tools.add_row(call_row["name"], str(call_row.get("arguments")), str(outcome),
                      f"{latency:.1f}" if isinstance(latency, (int, float)) else "-")
    console.print(tools)
    counts = Counter(f"{e['direction'] or 'call'} {e['type']}" for e in events)
    table = Table(title=f"Events archived: {len(events)} ({', '.join(f'{k} {v}' for k, v in call['events'].items())})")
    table.add_column("direction and type")
    table.add_column("count", justify="right")
    for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(kind, str(n))
    console.print(table)
    spans = trace.get("waterfall", [])
    shown = [r for r in spans if not str(r.get("name", "")).startswith(LOGGED_EVENT_SPANS)]
    print_waterfall(str(result.call_id), shown)
    if len(shown) < len(spans):
        console.print(f"[dim]{len(spans) - len(shown)} messaging spans of single logged Realtime events hidden; "
                      f"`switchboard trace {result.call_id}` shows all {len(spans)}[/dim]")
    console.print(f"recording: [bold]{call.get('recording_path')}[/bold] (caller left, agent right)")
    latencies = first_audio_latencies_ms(events)
    if latencies:
        console.print(f"end of speech → first model audio over {len(latencies)} turns: "
                      f"p50 {statistics.median(latencies):.0f} ms, max {max(latencies):.0f} ms "
                      f"({', '.join(f'{v:.0f}' for v in latencies)})")
    console.print(f"[dim]look further: switchboard calls | switchboard replay {result.call_id} | "
                  f"switchboard trace {result.call_id} | switchboard audit verify {result.call_id} | "
                  f"{recorder_url}/calls/{result.call_id}/live (while `switchboard up` runs)[/dim]")


async def run_demo(settings: Settings, scenario_path: Path, speed: float) -> int:
    """Start the system, place ``scenario_path``, print the report; the exit code (see the module docstring)."""
    try:
        scenario = load_scenario(scenario_path)
    except ScenarioError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    supervisor = Supervisor(settings, on_event=lambda line: console.print(f"[dim]{line}[/dim]"))
    started = time.monotonic()
    try:
        await supervisor.start()
        supervisor.write_state()
        if "operator" in supervisor.seeds:  # the caller simulator below connects as the operator (first run too)
            os.environ["SWITCHBOARD_NATS_NKEY_SEED"] = str(supervisor.seeds["operator"].resolve())
        console.print(f"[bold]system ready in {time.monotonic() - started:.1f} s[/bold]; placing {scenario.name}")
        result = await run_scenario(scenario, gateway_url=f"http://127.0.0.1:{settings.gateway_port}",
                                    nats_url=supervisor.nats_url, speed=speed, out=console.print)
        if result.call_id is None:
            console.print("[red]the call could not be placed[/red]")
            for failure in result.failures:
                console.print(f"[red]FAIL[/red] {failure}")
            return 1
        headers = {"Authorization": f"Bearer {settings.api_token}"} if settings.api_token else {}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.recorder_port}", headers=headers,
                                     timeout=30.0) as client:
            call = await wait_archived(client, result.call_id)
            transcript = (await client.get(f"/calls/{result.call_id}/transcript")).json()
            lines = (await client.get(f"/calls/{result.call_id}/events")).text.splitlines()
            events = [json.loads(line) for line in lines if line.strip()]
            trace = (await client.get(f"/calls/{result.call_id}/trace")).json()
        archived = call.get("status") == "ended" and bool(events)
        if archived:
            _show(result, call, transcript, events, trace, f"http://127.0.0.1:{settings.recorder_port}")
        else:
            result.failures.append(f"the recorder did not archive the ended call within {ARCHIVE_TIMEOUT_S:.0f} s")
        for failure in result.failures:
            console.print(f"[red]FAIL[/red] {failure}")
        if result.ok:
            console.print(f"[green bold]demo passed[/green bold]: expectations of {scenario.name} hold "
                          f"({time.monotonic() - started:.0f} s in all)")
        return 0 if result.ok else 1
    except RuntimeError as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    finally:
        console.print("[dim]stopping…[/dim]")
        await supervisor.stop()


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the ``switchboard`` app."""

    @app.command()
    def demo(
        scenario: Annotated[Path, typer.Option(help="Scenario to place")] = DEMO_SCENARIO,
        speed: Annotated[float, typer.Option(min=0.5, max=10.0, help="Caller pace (× real time)")] = 1.0,
    ) -> None:
        """Start everything, place the demo call through the gateway as Twilio would, and report on it."""
        from switchboard.cli.up import settings_or_exit

        raise typer.Exit(asyncio.run(run_demo(settings_or_exit(), scenario, speed)))
