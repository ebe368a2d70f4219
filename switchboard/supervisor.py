"""``switchboard up``: embedded NATS plus every service as a supervised child process.

Start order: nats-server (unless ``SWITCHBOARD_NATS_URL`` is set) → localmodel (only when neither
``OPENAI_API_KEY`` nor ``SWITCHBOARD_REALTIME_URL`` is set) → tools → recorder → session → gateway. Each child
is ``python -m services.<name>`` with URLs, ports and its own NATS credential passed by environment
(``SWITCHBOARD_NATS_NKEY_SEED``: ``<data dir>/auth/<name>.nk``, generated on first start with the server's
``nats.conf`` by :func:`shared.natsauth.prepare_server`; the secrets ``SWITCHBOARD_TOKEN_SECRET`` and
``SWITCHBOARD_AUDIT_KEY`` too, and ``SWITCHBOARD_INSECURE_DEV=true`` on loopback), its output in
``<data dir>/logs/<name>.log``. Ready means HTTP ``/readyz`` answers 200 (HTTP services) or a request on
``switchboard.ready.<name>`` is answered without a service error (``shared.health``); the embedded
nats-server is ready when the supervisor's own connection to it completes a PING/PONG.

Every child is supervised the same way, nats-server included: readiness is probed every
:data:`PROBE_INTERVAL_S` seconds for as long as it runs; a child that dies is reported and restarted after a
backoff (:class:`Backoff`: 0.5 s doubling to 30 s, back to 0.5 s once the child had been ready for
:data:`HEALTHY_RESET_S` seconds before it died). nats-server restarts on the same port and store directory,
so JetStream keeps its streams and consumers and the services' connections reconnect to it. ``up.json``
(:meth:`Supervisor.write_state`) is rewritten whenever a child's pid, restarts or readiness changes. Stop
(Ctrl-C / SIGTERM): children in reverse order with SIGTERM (drain), SIGKILL after a grace period, then NATS.
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from shared import health, natsauth, subjects
from shared.config import Settings
from switchboard import natsserver
from switchboard.children import HEALTHY_RESET_S, Backoff, ServiceState

__all__ = ["HEALTHY_RESET_S", "PROBE_INTERVAL_S", "SERVICE_ORDER", "Backoff", "ServiceState", "Supervisor"]

log = logging.getLogger(__name__)

SERVICE_ORDER = ("localmodel", "tools", "recorder", "analytics", "session", "gateway")
"""Start order (stop order is the reverse)."""
PROBE_INTERVAL_S = 1.0
"""Seconds between readiness probes of a running child."""
async def _quiet_error(exc: Exception) -> None:
    """The supervisor's own connection: its outages are reported through the ``nats`` entry's readiness."""
    log.debug("supervisor's nats connection: %s", exc)


def _loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost")


def _service_present(name: str) -> bool:
    return importlib.util.find_spec(f"services.{name}.__main__") is not None


LOCAL_DRAIN_S = 5
"""``SWITCHBOARD_DRAIN_S`` of the children unless the environment sets one (below the stop grace of 10 s)."""


class Supervisor:
    """Starts, watches and stops NATS and the services for one ``switchboard up``/``demo``.

    ``healthy_reset_s`` and ``probe_interval_s`` default to :data:`HEALTHY_RESET_S` and
    :data:`PROBE_INTERVAL_S`.
    """

    def __init__(self, settings: Settings, *, on_event: Callable[[str], None] | None = None,
                 extra_env: dict[str, str] | None = None, only: set[str] | None = None,
                 healthy_reset_s: float = HEALTHY_RESET_S, probe_interval_s: float = PROBE_INTERVAL_S) -> None:
        self.settings = settings
        self.only = only
        """When set, start only these services (names from :data:`SERVICE_ORDER`); NATS always starts."""
        self.nats_url = settings.effective_nats_url
        self.nats_state = ServiceState("nats", present=True, enabled=True, url=self.nats_url,
                                       note="external" if settings.nats_url else "embedded",
                                       external=settings.nats_url is not None,
                                       backoff=Backoff(reset_after=healthy_reset_s))
        """The nats-server entry (embedded: supervised like a service; external: probed only)."""
        self.services: dict[str, ServiceState] = {}
        self.healthy_reset_s = healthy_reset_s
        self.probe_interval_s = probe_interval_s
        self._stopping = False
        self._on_event = on_event or (lambda line: log.info("%s", line))
        self._extra_env = extra_env or {}
        self._nc: Any = None
        self._nats_check: health.Check | None = None
        self._state_path: Path | None = None
        self.seeds: dict[str, Path] = {}
        """Identity → nkey seed file of the embedded server's users (empty with an external NATS)."""
        self.nats_config: Path | None = None
        self.secrets: dict[str, str] = {}
        """Generated secrets passed to every child (``SWITCHBOARD_TOKEN_SECRET``, ``SWITCHBOARD_AUDIT_KEY``)."""

    @property
    def nats(self) -> natsserver.EmbeddedNats | None:
        """The embedded nats-server now running (a new object after each restart), or None."""
        return self.nats_state.embedded

    # --- environment -----------------------------------------------------------------------------------

    def child_env(self, identity: str = "operator") -> dict[str, str]:
        """The environment of child ``identity``: the parent's plus resolved URLs, ports, data dir, secrets
        and, with the embedded NATS, ``SWITCHBOARD_NATS_NKEY_SEED`` naming that identity's seed file (the
        default, ``operator``, is for CLI commands run against this system)."""
        s = self.settings
        env = dict(os.environ)
        if self.seeds:  # a child without a NATS user of its own (the local model) gets no credential
            env.pop("SWITCHBOARD_NATS_CREDS", None)
            env.pop("SWITCHBOARD_NATS_NKEY_SEED", None)
            if identity in self.seeds:
                env["SWITCHBOARD_NATS_NKEY_SEED"] = str(self.seeds[identity].resolve())
        env.update(self.secrets)
        if _loopback(s.host) and "SWITCHBOARD_INSECURE_DEV" not in os.environ:
            env["SWITCHBOARD_INSECURE_DEV"] = "true"
        env.update({
            "SWITCHBOARD_NATS_URL": self.nats_url,
            "SWITCHBOARD_DATA_DIR": str(s.data_dir.resolve()),
            "SWITCHBOARD_DATABASE_URL": s.effective_database_url,
            "SWITCHBOARD_GATEWAY_PORT": str(s.gateway_port),
            "SWITCHBOARD_RECORDER_PORT": str(s.recorder_port),
            "SWITCHBOARD_ANALYTICS_PORT": str(s.analytics_port),
            "SWITCHBOARD_LOCALMODEL_PORT": str(s.localmodel_port),
            "SWITCHBOARD_SESSION_METRICS_PORT": str(s.session_metrics_port),
            "SWITCHBOARD_TOOLS_METRICS_PORT": str(s.tools_metrics_port),
            "SWITCHBOARD_AGENT": str(s.agent.resolve()) if s.agent.exists() else str(s.agent),
            "PYTHONUNBUFFERED": "1",
        })
        if s.uses_local_model:
            env["SWITCHBOARD_REALTIME_URL"] = s.effective_realtime_url
        # Ctrl-C stops the children within the stop grace (10 s): a gateway drains its live calls briefly
        # (then drain_timeout) instead of for the production default of an hour
        env.setdefault("SWITCHBOARD_DRAIN_S", str(LOCAL_DRAIN_S))
        env.update(self._extra_env)
        return env

    def _plan(self) -> None:
        s = self.settings
        http = {
            "gateway": s.gateway_port,
            "recorder": s.recorder_port,
            "analytics": s.analytics_port,
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
                state.url = subjects.ready(name)
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
        import nats

        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        (s.data_dir / "logs").mkdir(exist_ok=True)
        self._prepare_secrets()
        if s.nats_url is None:
            operator = natsauth.read_seed(s.nats_nkey_seed) if s.nats_nkey_seed else None
            self.nats_config, self.seeds = natsauth.prepare_server(natsauth.auth_dir(s.data_dir),
                                                                   operator_seed=operator)
            await self._start_nats(s.nats_port)
            assert self.nats is not None
            self.nats_url = self.nats_state.url = self.nats.url
            self.nats_state.watcher = asyncio.create_task(self._watch_nats())
        options = self.operator_options()
        self._nc = await nats.connect(servers=self.nats_url.split(","), connect_timeout=5, allow_reconnect=True,
                                      max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                      name="switchboard-supervisor", error_cb=_quiet_error, **options)
        self._nats_check = health.nats_connection(self._nc, timeout=2.0)
        if self.seeds:  # as the operator: the only identity allowed to update a stream's configuration
            from shared.bus import Bus

            await Bus(self._nc, source="operator").ensure_streams(s)
        self.nats_state.mark(True)
        self.nats_state.monitor = asyncio.create_task(self._monitor(self.nats_state))
        self._plan()
        for state in self.services.values():
            if not (state.present and state.enabled):
                continue
            await self._spawn(state)
            await self._wait_ready(state, ready_timeout)
            state.watcher = asyncio.create_task(self._watch(state))
            state.monitor = asyncio.create_task(self._monitor(state))

    def operator_options(self) -> dict[str, Any]:
        """``nats.connect`` arguments for the operator identity of this system (the embedded server's generated
        seed; with an external NATS, the settings' credentials)."""
        if self.seeds:
            return natsauth.client_options(nkey_seed=str(self.seeds["operator"]), identity="operator")
        return self.settings.nats_options(identity="operator")

    def _prepare_secrets(self) -> None:
        """Generate the shared secrets the settings lack into ``<data dir>/auth`` (0600, kept across starts)."""
        directory = natsauth.auth_dir(self.settings.data_dir)
        if not self.settings.token_secret:
            self.secrets["SWITCHBOARD_TOKEN_SECRET"] = natsauth.ensure_secret(directory / "token_secret")
        if not self.settings.audit_key:
            self.secrets["SWITCHBOARD_AUDIT_KEY"] = natsauth.ensure_secret(directory / "audit_key")
        if not self.settings.capture_key:
            self.secrets["SWITCHBOARD_CAPTURE_KEY"] = natsauth.ensure_secret(directory / "capture_key")

    async def _start_nats(self, port: int) -> None:
        self.nats_state.embedded = await asyncio.to_thread(natsserver.start, self.settings.data_dir / "nats",
                                                           port=port, config=self.nats_config)
        self.nats_state.new_process()
        self.nats_state.log_path = self.nats_state.embedded.log_file
        self._on_event(f"nats-server started at {self.nats_state.embedded.url} (pid {self.nats_state.pid})")

    async def _watch_nats(self) -> None:
        """Restart the embedded nats-server (same port and store dir) whenever it dies."""

        async def exited() -> int:
            while True:
                assert self.nats_state.embedded is not None
                code = self.nats_state.embedded.process.poll()
                if code is not None:
                    return code
                await asyncio.sleep(0.1)

        async def restart() -> bool:
            assert self.nats_state.embedded is not None
            starting = asyncio.ensure_future(self._start_nats(self.nats_state.embedded.port))
            try:
                await asyncio.shield(starting)  # stop() waits for a start under way, then stops that server
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await starting
                raise
            except RuntimeError as exc:  # the port is still held, the store is locked, ...: try again later
                self._on_event(f"nats-server did not restart: {exc}")
                return False
            return True

        await self._supervise(self.nats_state, "nats-server", exited, restart)

    async def _supervise(self, state: ServiceState, what: str, exited: Callable[[], Awaitable[int]],
                         restart: Callable[[], Awaitable[bool]], *, ready_timeout: float | None = None) -> None:
        """Until the supervisor stops: wait for ``exited()`` (the exit code), mark ``state`` unready, wait its
        :class:`Backoff` delay, then ``restart()`` (False: not restarted, the next exit check decides) and,
        with ``ready_timeout``, wait up to that many seconds for the new child to be ready."""
        while not self._stopping:
            code = await exited()
            if self._stopping:
                return
            healthy_for = state.healthy_for()
            self._changed(state, False)
            delay = state.backoff.delay(healthy_for)
            self._on_event(f"{what} exited with code {code}; restarting in {delay:.1f}s")
            await asyncio.sleep(delay)
            if self._stopping or not await restart():
                continue
            state.restarts += 1
            self._write_if_started()
            if ready_timeout is not None:
                with contextlib.suppress(RuntimeError):
                    await self._wait_ready(state, ready_timeout)

    async def _spawn(self, state: ServiceState) -> None:
        assert state.log_path is None or state.log_path.parent.exists()
        state.log_path = self.settings.data_dir / "logs" / f"{state.name}.log"
        log_file = await asyncio.to_thread(state.log_path.open, "ab")
        try:
            state.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"services.{state.name}",
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                env=self.child_env(state.name), start_new_session=True,
            )
        finally:
            log_file.close()
        state.new_process()
        self._on_event(f"{state.name}: started (pid {state.process.pid})")

    async def _probe(self, state: ServiceState, client: httpx.AsyncClient) -> bool:
        """One readiness probe: ``/readyz`` → 200, ``switchboard.ready.<name>`` answered without a service
        error, or (NATS) the supervisor's connection completes a PING/PONG."""
        if state is self.nats_state:
            if self._nats_check is None:
                return False
            try:
                return (await self._nats_check()).ok
            except Exception:
                return False
        if state.ready_url:
            try:
                response = await client.get(state.ready_url, timeout=2.0)
                return response.status_code == 200
            except httpx.HTTPError:
                return False
        if self._nc is None:
            return False
        try:
            reply = await self._nc.request(subjects.ready(state.name), b"", timeout=2.0)
        except Exception:
            return False
        return not (reply.headers or {}).get("Nats-Service-Error-Code")

    async def _wait_ready(self, state: ServiceState, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if not state.running:
                    break
                if await self._probe(state, client):
                    state.mark(True)
                    self._on_event(f"{state.name}: ready ({time.monotonic() - state.started_at:.1f}s)")
                    self._write_if_started()
                    return
                await asyncio.sleep(0.2)
        tail = self.log_tail(state.name)
        raise RuntimeError(f"service {state.name} did not become ready: {tail}")

    async def _monitor(self, state: ServiceState) -> None:
        """Probe a running child's readiness every ``probe_interval_s`` for as long as the supervisor runs."""
        async with httpx.AsyncClient() as client:
            while not self._stopping:
                await asyncio.sleep(self.probe_interval_s)
                if self._stopping:
                    return
                if state.running:
                    self._changed(state, await self._probe(state, client))

    def _changed(self, state: ServiceState, ready: bool) -> None:
        if state.mark(ready):
            self._on_event(f"{state.name}: {'ready' if ready else 'NOT ready'}")
            self._write_if_started()

    def _write_if_started(self) -> None:
        if self._state_path is not None and not self._stopping:
            with contextlib.suppress(OSError):
                self.write_state()

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last ``lines`` lines of a service's log."""
        state = self.services.get(name)
        if state is None or state.log_path is None or not state.log_path.exists():
            return ""
        return "\n".join(state.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def _watch(self, state: ServiceState) -> None:
        """Restart a service's child whenever it exits, then wait (up to 60 s) for it to be ready again."""

        async def exited() -> int:
            assert state.process is not None
            return await state.process.wait()

        async def restart() -> bool:
            await self._spawn(state)
            return True

        await self._supervise(state, f"{state.name}:", exited, restart, ready_timeout=60.0)

    # --- stop ------------------------------------------------------------------------------------------

    async def stop(self, grace: float = 10.0) -> None:
        """Stop the services in reverse start order (SIGTERM, then SIGKILL after ``grace`` s), then NATS."""
        self._stopping = True
        for child in (*self.services.values(), self.nats_state):
            for task in (child.watcher, child.monitor):
                if task is not None:
                    task.cancel()
        if self.nats_state.watcher is not None:
            await asyncio.gather(self.nats_state.watcher, return_exceptions=True)
        for name in reversed(SERVICE_ORDER):
            state = self.services.get(name)
            if state is None:
                continue
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
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        if self.nats is not None:
            code = await asyncio.to_thread(self.nats.stop)
            self._on_event(f"nats-server stopped (exit {code})")

    @staticmethod
    def _row(state: ServiceState) -> dict[str, str]:
        pid = state.pid
        return {"name": state.name, "status": state.status, "url": state.url,
                "pid": str(pid) if pid is not None else "-", "restarts": str(state.restarts), "note": state.note}

    def table(self) -> list[dict[str, str]]:
        """One row per service (NATS first): name, status, url, pid, restarts, note."""
        return [self._row(self.nats_state), *(self._row(state) for state in self.services.values())]

    def write_state(self) -> Path:
        """Write ``<data dir>/up.json`` (URLs, pids, restarts and readiness of the running system) for other
        CLI commands; from then on it is rewritten whenever a child's pid, restarts or readiness changes."""
        path = self.settings.data_dir / "up.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"nats_url": self.nats_url, "services": self.table()}, indent=2))
        tmp.replace(path)
        self._state_path = path
        return path
