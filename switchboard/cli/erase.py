"""``switchboard erase CALL_ID`` — erase a call by crypto-shredding, through the recorder API.

Sends ``DELETE /calls/{id}`` (``--api``, default ``http://127.0.0.1:<SWITCHBOARD_RECORDER_PORT>``, Bearer
``SWITCHBOARD_API_TOKEN`` when set) with ``X-Switchboard-Actor: cli:<user>@<host>`` so the audited
``call.<id>.erased`` names who asked. The recorder destroys the call's data key, deletes its transcripts and
recording and archives the erasure (services/recorder/erasure.py). Exit 0 when erased (or erased before),
1 when there is no such call, 2 when the recorder could not erase it.
"""

from __future__ import annotations

import getpass
import json
import socket
import time

import httpx
import typer
from rich.console import Console

__all__ = ["erase", "register"]

console = Console()


def erase(call_id: str = typer.Argument(..., help="The call id"),
          api: str | None = typer.Option(None, help="Recorder API base URL"),
          yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation"),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Destroy the call's data key: its audio, transcripts, tool arguments and outputs become unreadable
    everywhere and its recording is deleted; the hash chains still verify. Irreversible."""
    from switchboard.cli.up import settings_or_exit

    settings = settings_or_exit()
    if not yes and not typer.confirm(f"Erase call {call_id}? Its content cannot be recovered."):
        raise typer.Exit(1)
    base = api or f"http://127.0.0.1:{settings.recorder_port}"
    headers = {"X-Switchboard-Actor": f"cli:{getpass.getuser()}@{socket.gethostname()}"}
    if settings.api_token:
        headers["Authorization"] = f"Bearer {settings.api_token}"
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=60.0) as client:
            response = client.delete(f"/calls/{call_id}")
    except httpx.HTTPError as exc:
        console.print(f"[red]recorder API at {base} unreachable: {exc}[/red]")
        raise typer.Exit(2) from None
    if response.status_code in (400, 404):
        console.print(f"[red]{response.json().get('detail', 'not found')}[/red]")
        raise typer.Exit(1)
    if response.status_code >= 300:
        console.print(f"[red]{response.status_code}: {response.text}[/red]")
        raise typer.Exit(2)
    done = response.json()
    if as_json:
        typer.echo(json.dumps(done, indent=2))
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(done["erased_ns"] / 1e9))
    if done.get("already"):
        console.print(f"{call_id} was already erased at {when} by {done['erased_by']} ({done['reason']})",
                      highlight=False)
    else:
        console.print(f"[green]erased[/green] {call_id} at {when} by {done['erased_by']}; "
                      f"{len(done['recordings_deleted'])} recording file(s) deleted", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``erase`` to the ``switchboard`` app."""
    app.command("erase")(erase)
