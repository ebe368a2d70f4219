"""``switchboard dial +1555… --agent receptionist [--carrier twilio] [--from +1…] [--amd] [--gateway URL]
[--json]`` — place an outbound call through the gateway's ``POST /calls/outbound`` (the carrier's REST API then
calls the number; the callee's answer connects the call to the agent).

Sends ``SWITCHBOARD_API_TOKEN`` as the Bearer token. Prints our call id (follow it with ``switchboard tail``) and
the carrier's id for the call.

Exit codes: 0 the carrier accepted the call; 1 the gateway or the carrier refused it (the gateway's error is
printed); 2 the gateway was unreachable or the configuration is invalid.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from switchboard.caller.carriers import CARRIERS

__all__ = ["dial", "register"]

console = Console()


def _error_of(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    if isinstance(body, dict) and isinstance(body.get("detail"), list):  # FastAPI validation errors
        return "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in body["detail"])
    return response.text[:200]


def dial(
    to: Annotated[str, typer.Argument(help="The number to call, E.164 (+15551234567).")],
    agent: Annotated[str, typer.Option(help="The agent spec the call runs (a name in agents/).")],
    carrier: Annotated[str, typer.Option(help="Carrier to call through: " + ", ".join(CARRIERS) + ".")] = "twilio",
    from_: Annotated[str | None, typer.Option("--from", help="Caller ID, E.164 (default: SWITCHBOARD_OUTBOUND_FROM"
                                                              " on the gateway).")] = None,
    amd: Annotated[bool, typer.Option(help="Ask the carrier for answering-machine detection.")] = False,
    gateway: Annotated[str | None, typer.Option(help="Gateway base URL (default http://127.0.0.1:<gateway_port>).")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the gateway's answer as JSON.")] = False,
) -> None:
    """Call TO through CARRIER and connect the callee to AGENT."""
    from switchboard.cli.up import settings_or_exit

    settings = settings_or_exit()
    base = gateway or f"http://127.0.0.1:{settings.gateway_port}"
    headers = {"Authorization": f"Bearer {settings.api_token}"} if settings.api_token else {}
    body: dict[str, Any] = {"to": to, "agent": agent, "carrier": carrier, "machine_detection": amd}
    if from_:
        body["from"] = from_
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30.0) as client:
            response = client.post("/calls/outbound", json=body)
    except httpx.HTTPError as exc:
        console.print(f"[red]gateway at {base} unreachable: {exc}[/red]")
        raise typer.Exit(2) from None
    if response.status_code != 201:
        console.print(f"[red]{response.status_code}: {_error_of(response)}[/red]", highlight=False)
        raise typer.Exit(1)
    created = response.json()
    if as_json:
        typer.echo(json.dumps(created, indent=2))
        return
    console.print(f"[green]dialling[/green] {created['to']} from {created['from']} via {created['carrier']}: call "
                  f"{created['call_id']} (carrier id {created.get('carrier_call_id') or 'not given'}), agent "
                  f"{created['agent']}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``dial`` to the ``switchboard`` app."""
    app.command("dial")(dial)
