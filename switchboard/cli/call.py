"""``switchboard call SCENARIO [--gateway URL] [--nats URL] [--wav OUT] [--speed N]`` — the caller simulator.

Exit codes: 0 when every expectation of the scenario held, 1 when one failed (or the call could not be
placed), 2 for a bad scenario file or configuration.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from shared.errors import BusError
from switchboard.caller import CallResult, run_scenario
from switchboard.cli.up import settings_or_exit
from switchboard.scenario import ScenarioError, load_scenario

__all__ = ["register"]

console = Console()


def _print_result(result: CallResult) -> None:
    console.print(f"[bold]{result.scenario}[/bold] call {result.call_id} — {result.duration_ms / 1000:.1f}s, "
                  f"ended by {result.ended_by}")
    for call in result.tool_calls:
        console.print(f"  tool: {call['name']}({call['args']})")
    if result.wav:
        console.print(f"  recording: {result.wav}")
    if result.ok:
        console.print("[green]expectations met[/green]")
    for failure in result.failures:
        console.print(f"[red]FAIL[/red] {failure}")


def call(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file (see scenarios/).")],
    gateway: Annotated[str | None, typer.Option(help="Gateway base URL (default http://127.0.0.1:<gateway_port>).")]
    = None,
    nats: Annotated[str | None, typer.Option(help="NATS URL (default: the configured / embedded one).")] = None,
    wav: Annotated[Path | None, typer.Option(help="Write a stereo WAV (caller left, agent right).")] = None,
    speed: Annotated[float, typer.Option(min=0.1, max=50.0, help="Pace audio N times real time (tests only).")]
    = 1.0,
    twiml: Annotated[bool, typer.Option(help="Fetch POST /twilio/voice first to learn the stream URL.")] = True,
) -> None:
    """Place a simulated Twilio call that speaks SCENARIO's lines and check its expectations against the log."""
    settings = settings_or_exit()
    try:
        spec = load_scenario(scenario)
    except ScenarioError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    gateway_url = gateway or f"http://127.0.0.1:{settings.gateway_port}"
    nats_url = nats or settings.effective_nats_url
    try:
        result = asyncio.run(run_scenario(spec, gateway_url=gateway_url, nats_url=nats_url, speed=speed, wav=wav,
                                          twiml=twiml, out=console.print))
    except BusError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    _print_result(result)
    raise typer.Exit(0 if result.ok else 1)


def register(app: typer.Typer) -> None:
    """Add ``call`` to the ``switchboard`` app."""
    app.command("call")(call)
