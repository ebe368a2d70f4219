"""``switchboard call SCENARIO [--carrier twilio|telnyx|vonage|plivo|openai-sip] [--gateway URL] [--sip-url URL]
[--nats URL] [--wav OUT] [--speed N]`` — the caller simulator.

``--carrier openai-sip`` calls over the local model's simulated SIP trunk (``--sip-url``, default
``ws://127.0.0.1:<SWITCHBOARD_LOCALMODEL_SIP_PORT>/sip/leg``); the local model signs the gateway's webhook itself.

The carrier's webhook is signed as the carrier signs it with the keys the gateway verifies:
``SWITCHBOARD_TWILIO_AUTH_TOKEN``, ``SWITCHBOARD_VONAGE_SIGNATURE_SECRET``, ``SWITCHBOARD_PLIVO_AUTH_TOKEN``, and for
Telnyx the private half of ``SWITCHBOARD_TELNYX_PUBLIC_KEY`` (``--telnyx-key`` /
``SWITCHBOARD_CALLER_TELNYX_KEY``, base64 Ed25519 seed); without a key the request goes unsigned (accepted by a
gateway in ``SWITCHBOARD_INSECURE_DEV`` mode only).

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
from switchboard.caller.carriers import CARRIERS
from switchboard.caller.signing import CarrierKeys
from switchboard.caller.sip import CARRIER as SIP_CARRIER
from switchboard.caller.sip import sip_leg_url
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
    carrier: Annotated[str, typer.Option(help="Carrier to speak: " + ", ".join((*CARRIERS, SIP_CARRIER)) + ".")]
    = "twilio",
    sip_url: Annotated[str | None, typer.Option(help="The local model's SIP leg (openai-sip; default "
                                                     "ws://127.0.0.1:<localmodel_sip_port>/sip/leg).")] = None,
    telnyx_key: Annotated[str | None, typer.Option(envvar="SWITCHBOARD_CALLER_TELNYX_KEY", show_default=False,
                                                   help="Base64 Ed25519 private key signing Telnyx webhooks.")]
    = None,
) -> None:
    """Place a simulated call that speaks SCENARIO's lines and check its expectations against the log."""
    settings = settings_or_exit()
    try:
        spec = load_scenario(scenario)
    except ScenarioError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if carrier not in (*CARRIERS, SIP_CARRIER):
        console.print(f"[red]unknown carrier {carrier!r}; one of {', '.join((*CARRIERS, SIP_CARRIER))}[/red]")
        raise typer.Exit(2)
    if carrier == SIP_CARRIER and not sip_url and not settings.localmodel_sip_port:
        console.print("[red]openai-sip needs --sip-url or SWITCHBOARD_LOCALMODEL_SIP_PORT[/red]")
        raise typer.Exit(2)
    sip_url = sip_url or sip_leg_url(settings.localmodel_sip_port)
    keys = CarrierKeys(twilio_auth_token=settings.twilio_auth_token, telnyx_private_key=telnyx_key,
                       vonage_signature_secret=settings.vonage_signature_secret,
                       plivo_auth_token=settings.plivo_auth_token)
    gateway_url = gateway or f"http://127.0.0.1:{settings.gateway_port}"
    nats_url = nats or settings.effective_nats_url
    try:
        result = asyncio.run(run_scenario(spec, gateway_url=gateway_url, nats_url=nats_url, speed=speed, wav=wav,
                                          twiml=twiml, out=console.print, carrier=carrier, keys=keys,
                                          sip_url=sip_url))
    except BusError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    _print_result(result)
    raise typer.Exit(0 if result.ok else 1)


def register(app: typer.Typer) -> None:
    """Add ``call`` to the ``switchboard`` app."""
    app.command("call")(call)
