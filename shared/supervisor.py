"""``switchboard up``: embedded NATS plus every service as a supervised child process.

Start order: nats-server (unless ``SWITCHBOARD_NATS_URL`` is set) → localmodel (only when neither
``OPENAI_API_KEY`` nor ``SWITCHBOARD_REALTIME_URL`` is set) → tools → recorder → session → gateway. Each child
is ``python -m services.<name>`` with URLs and ports passed by environment, its output in
``<data dir>/logs/<name>.log``. Ready means HTTP ``/readyz`` answers 200 (HTTP services) or the nats.micro
service ``switchboard-<name>`` answers ``$SRV.PING``. A child that dies is reported and restarted with
backoff (0.5 s doubling to 30 s). Stop (Ctrl-C / SIGTERM): children in reverse order with SIGTERM (drain),
SIGKILL after a grace period, then NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared import natsserver
from shared.config import Settings

__all__ = ["SERVICE_ORDER", "ServiceState", "Supervisor"]

log = logging.getLogger(__name__)

SERVICE_ORDER = ("localmodel", "tools", "recorder", "session", "gateway")
"""Start order (stop order is the reverse)."""


@dataclass
class ServiceState:
    """A supervised service: its process, readiness, restarts and where it listens."""

    name: str
    present: bool
    enabled: bool
    url: str = ""
    ready_url: str | None = None
    process: asyncio.subprocess.Process | None = None
    ready: bool = False
    restarts: int = 0
    log_path: Path | None = None
    started_at: float = 0.0
    note: str = ""
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def status(self) -> str:
        """``absent``, ``disabled``, ``starting``, ``ready`` or ``exited``."""
        if not self.present:
            return "absent"
        if not self.enabled:
            return "disabled"
        if self.process is None or self.process.returncode is not None:
            return "exited"
        return "ready" if self.ready else "starting"


def _service_present(name: str) -> bool:
    return importlib.util.find_spec(f"services.{name}.__main__") is not None


class Supervisor:
    """Starts, watches and stops NATS and the services for one ``switchboard up``/``demo``."""

    def __init__(self, settings: Settings, *, on_event: Callable[[str], None] | None = None,
                 extra_env: dict[str, str] | None = None, only: set[str] | None = None) -> None:
        self.settings = settings
        self.only = only
        """When set, start only these services (names from :data:`SERVICE_ORDER`); NATS always starts."""
        self.nats: natsserver.EmbeddedNats | None = None
        self.nats_url = settings.effective_nats_url
        self.services: dict[str, ServiceState] = {}
        self._stopping = False
        self._on_event = on_event or (lambda line: log.info("%s", line))
        self._extra_env = extra_env or {}

    # --- environment -----------------------------------------------------------------------------------

    def child_env(self) -> dict[str, str]:
        """The environment every child gets: the parent's plus resolved URLs, ports and data dir."""
        s = self.settings
        env = dict(os.environ)
        env.update({
            "SWITCHBOARD_NATS_URL": self.nats_url,
            "SWITCHBOARD_DATA_DIR": str(s.data_dir.resolve()),
            "SWITCHBOARD_DATABASE_URL": s.effective_database_url,
            "SWITCHBOARD_GATEWAY_PORT": str(s.gateway_port),
            "SWITCHBOARD_RECORDER_PORT": str(s.recorder_port),
            "SWITCHBOARD_LOCALMODEL_PORT": str(s.localmodel_port),
            "SWITCHBOARD_AGENT": str(s.agent.resolve()) if s.agent.exists() else str(s.agent),
            "PYTHONUNBUFFERED": "1",
        })
        if s.uses_local_model:
            env["SWITCHBOARD_REALTIME_URL"] = s.effective_realtime_url
        env.update(self._extra_env)
        return env

    def _plan(self) -> None:
        s = self.settings
        http = {
            "gateway": s.gateway_port,
            "recorder": s.recorder_port,
            "localmodel": s.localmodel_port,
        }
        for name in SERVICE_ORDER:
            enabled = (name != "localmodel" or s.uses_local_model) and (self.only is None or name in self.only)
            state = ServiceState(name, present=_service_present(name), enabled=enabled)
            if name in http:
                base = f"http://{s.host}:{http[name]}"
                state.url = base if name != "localmodel" else f"ws://{s.host}:{http[name]}/v1/realtime"
                state.ready_url = f"{base}/readyz"
            else:
                state.url = f"$SRV.PING.switchboard-{name}"
            if self.only is not None and name not in self.only:
                state.note = "not selected (--only)"
            elif not enabled:
                state.note = "OPENAI_API_KEY or SWITCHBOARD_REALTIME_URL set"
            self.services[name] = state

    # --- start -----------------------------------------------------------------------------------------

    async def start(self, *, ready_timeout: float = 90.0) -> None:
        """Start NATS and every present, enabled service; return when all are ready.

        Raises:
            RuntimeError: a service did not become ready within ``ready_timeout`` seconds (its log tail is
                quoted).
        """
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        (s.data_dir / "logs").mkdir(exist_ok=True)
        if s.nats_url is None:
            self.nats = await asyncio.to_thread(natsserver.start, s.data_dir / "nats", port=s.nats_port)
            self.nats_url = self.nats.url
            self._on_event(f"nats-server started at {self.nats_url}")
        self._plan()
        for state in self.services.values():
            if not (state.present and state.enabled):
                continue
            await self._spawn(state)
            await self._wait_ready(state, ready_timeout)
            state.watcher = asyncio.create_task(self._watch(state))

    async def _spawn(self, state: ServiceState) -> None:
        assert state.log_path is None or state.log_path.parent.exists()
        state.log_path = self.settings.data_dir / "logs" / f"{state.name}.log"
        log_file = await asyncio.to_thread(state.log_path.open, "ab")
        try:
            state.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"services.{state.name}",
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                env=self.child_env(), start_new_session=True,
            )
        finally:
            log_file.close()
        state.ready = False
        state.started_at = time.monotonic()
        self._on_event(f"{state.name}: started (pid {state.process.pid})")

    async def _probe(self, state: ServiceState, client: httpx.AsyncClient, nc: object | None) -> bool:
        if state.ready_url:
            try:
                response = await client.get(state.ready_url, timeout=1.0)
                return response.status_code == 200
            except httpx.HTTPError:
                return False
        from nats.aio.client import Client as NATS

        assert isinstance(nc, NATS)
        try:
            await nc.request(f"$SRV.PING.switchboard-{state.name}", b"", timeout=1.0)
            return True
        except Exception:
            return False

    async def _wait_ready(self, state: ServiceState, timeout: float) -> None:
        import nats

        deadline = time.monotonic() + timeout
        nc = None if state.ready_url else await nats.connect(servers=self.nats_url.split(","), connect_timeout=5)
        try:
            async with httpx.AsyncClient() as client:
                while time.monotonic() < deadline:
                    assert state.process is not None
                    if state.process.returncode is not None:
                        break
                    if await self._probe(state, client, nc):
                        state.ready = True
                        self._on_event(f"{state.name}: ready ({time.monotonic() - state.started_at:.1f}s)")
                        return
                    await asyncio.sleep(0.2)
        finally:
            if nc is not None:
                await nc.close()
        tail = self.log_tail(state.name)
        raise RuntimeError(f"service {state.name} did not become ready: {tail}")

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last ``lines`` lines of a service's log."""
        state = self.services.get(name)
        if state is None or state.log_path is None or not state.log_path.exists():
            return ""
        return "\n".join(state.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def _watch(self, state: ServiceState) -> None:
        backoff = 0.5
        while not self._stopping:
            assert state.process is not None
            code = await state.process.wait()
            if self._stopping:
                return
            state.ready = False
            self._on_event(f"{state.name}: exited with code {code}; restarting in {backoff:.1f}s")
            await asyncio.sleep(backoff)
            if self._stopping:
                return
            backoff = min(backoff * 2, 30.0)
            state.restarts += 1
            await self._spawn(state)
            with contextlib.suppress(RuntimeError):
                await self._wait_ready(state, 60.0)
            if state.ready and time.monotonic() - state.started_at > 0:
                backoff = 0.5 if state.restarts == 0 else backoff

    # --- stop ------------------------------------------------------------------------------------------

    async def stop(self, grace: float = 10.0) -> None:
        """Stop the services in reverse start order (SIGTERM, then SIGKILL after ``grace`` s), then NATS."""
        self._stopping = True
        for name in reversed(SERVICE_ORDER):
            state = self.services.get(name)
            if state is None:
                continue
            if state.watcher is not None:
                state.watcher.cancel()
            proc = state.process
            if proc is None or proc.returncode is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            self._on_event(f"{name}: stopped (exit {proc.returncode})")
        if self.nats is not None:
            code = await asyncio.to_thread(self.nats.stop)
            self._on_event(f"nats-server stopped (exit {code})")

    def table(self) -> list[dict[str, str]]:
        """One row per service (and NATS): name, status, url, pid, restarts, note."""
        rows = [{"name": "nats", "status": "ready" if self.nats or self.settings.nats_url else "absent",
                 "url": self.nats_url, "pid": str(self.nats.process.pid) if self.nats else "-",
                 "restarts": "0", "note": "embedded" if self.nats else "external"}]
        for state in self.services.values():
            rows.append({
                "name": state.name, "status": state.status, "url": state.url,
                "pid": str(state.process.pid) if state.process else "-",
                "restarts": str(state.restarts), "note": state.note,
            })
        return rows

    def write_state(self) -> Path:
        """Write ``<data dir>/up.json`` (URLs of the running system) for other CLI commands."""
        path = self.settings.data_dir / "up.json"
        path.write_text(json.dumps({"nats_url": self.nats_url, "services": self.table()}, indent=2))
        return path
