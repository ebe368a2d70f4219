"""``switchboard up`` and ``switchboard status``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from shared.config import ConfigError, Settings, load_settings
from switchboard.supervisor import SERVICE_ORDER, Supervisor

console = Console()


def settings_or_exit() -> Settings:
    """Settings from the environment, or exit 2 with the variable named."""
    try:
        return load_settings()
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def services_table(rows: list[dict[str, str]]) -> Table:
    """A Rich table of the supervisor's rows."""
    table = Table(title="Switchboard")
    for column in ("name", "status", "url", "pid", "restarts", "note"):
        table.add_column(column)
    colours = {"ready": "green", "starting": "yellow", "unready": "red", "exited": "red", "absent": "dim",
               "disabled": "dim"}
    for row in rows:
        colour = colours.get(row["status"], "white")
        table.add_row(row["name"], f"[{colour}]{row['status']}[/{colour}]", row["url"], row["pid"],
                      row["restarts"], row["note"])
    return table


async def _up(settings: Settings, only: set[str] | None = None) -> int:
    supervisor = Supervisor(settings, on_event=lambda line: console.print(f"[dim]{line}[/dim]"), only=only)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await supervisor.start()
        supervisor.write_state()
        console.print(services_table(supervisor.table()))
        console.print("[bold]Ctrl-C stops everything.[/bold]")
        await stop.wait()
        return 0
    except RuntimeError as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    finally:
        console.print("stopping…")
        await supervisor.stop()


async def _status(nats_url: str) -> list[dict[str, Any]]:
    import nats

    nc = await nats.connect(nats_url, connect_timeout=3, **load_settings().nats_options(identity="operator"))
    try:
        infos: dict[str, dict[str, Any]] = {}
        stats: dict[str, dict[str, Any]] = {}
        for verb, sink in (("INFO", infos), ("STATS", stats)):
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            await nc.publish(f"$SRV.{verb}", b"", reply=inbox)
            with contextlib.suppress(asyncio.TimeoutError):
                while True:
                    msg = await sub.next_msg(timeout=0.5)
                    data = json.loads(msg.data)
                    sink[data["id"]] = data
            await sub.unsubscribe()
        rows = []
        for sid, info in sorted(infos.items(), key=lambda kv: kv[1].get("name", "")):
            st = stats.get(sid, {})
            requests = sum(e.get("num_requests", 0) for e in st.get("endpoints", []) or [])
            errors = sum(e.get("num_errors", 0) for e in st.get("endpoints", []) or [])
            rows.append({"name": info.get("name", ""), "id": sid, "version": info.get("version", ""),
                         "endpoints": len(info.get("endpoints", []) or []), "requests": requests,
                         "errors": errors, "started": st.get("started", "")})
        return rows
    finally:
        await nc.close()


async def _webhook_status(nats_url: str) -> dict[str, Any] | None:
    """The analytics service's webhook counters (``switchboard.analytics.webhook``), None when none answers."""
    import nats

    from shared import subjects

    nc = await nats.connect(nats_url, connect_timeout=3, **load_settings().nats_options(identity="operator"))
    try:
        reply = await nc.request(subjects.webhook_status(), b"", timeout=1.0)
        data = json.loads(reply.data)
        return data if isinstance(data, dict) and "url" in data else None
    except Exception:  # no webhook configured (no responder) or no analytics service
        return None
    finally:
        await nc.close()


ONLY_HELP = "comma-separated services to start (default: all; `nats` alone: only NATS)"


def register(app: typer.Typer) -> None:
    """Add ``up`` and ``status`` to ``app``."""

    @app.command()
    def up(only: str = typer.Option("", "--only", help=ONLY_HELP)) -> None:
        """Start embedded NATS (unless SWITCHBOARD_NATS_URL is set) and every service; Ctrl-C stops all."""
        selected = {name.strip() for name in only.split(",") if name.strip()} or None
        unknown = (selected or set()) - {"nats", *SERVICE_ORDER}
        if unknown:
            console.print(f"[red]unknown services: {', '.join(sorted(unknown))}[/red]")
            raise typer.Exit(2)
        raise typer.Exit(asyncio.run(_up(settings_or_exit(), selected)))

    @app.command()
    def status(nats: str = typer.Option(None, "--nats", help="NATS URL (default: the configured one)")) -> None:
        """The supervised children of a running ``switchboard up`` (from ``up.json``: status, pid, restarts),
        then each service's instances, from $SRV.INFO / $SRV.STATS."""
        settings = settings_or_exit()
        state_file = settings.data_dir / "up.json"
        if state_file.is_file():
            with contextlib.suppress(ValueError, KeyError, OSError):
                console.print(services_table(json.loads(state_file.read_text())["services"]))
        try:
            rows = asyncio.run(_status(nats or settings.effective_nats_url))
        except Exception as exc:
            console.print(f"[red]cannot reach NATS: {exc}[/red]")
            raise typer.Exit(1) from None
        table = Table(title="Switchboard services")
        for column in ("name", "id", "version", "endpoints", "requests", "errors", "started"):
            table.add_column(column)
        for row in rows:
            table.add_row(*(str(row[c]) for c in ("name", "id", "version", "endpoints", "requests", "errors",
                                                   "started")))
        console.print(table)
        if not rows:
            console.print("no services answered")
            raise typer.Exit(1)
        webhook = asyncio.run(_webhook_status(nats or settings.effective_nats_url))
        if webhook is not None:
            colour = "red" if webhook.get("failed") or not webhook.get("configured") else "green"
            console.print(f"[{colour}]post-call webhook {webhook.get('url')}: {webhook.get('delivered', 0)} delivered, "
                          f"{webhook.get('retried', 0)} retried, {webhook.get('failed', 0)} failed[/{colour}]"
                          + (f"; last error {webhook.get('last_error_at') or ''} {webhook['last_error']}"
                             if webhook.get("last_error") else ""))
