"""The rollout drill's system: the whole stack as ``switchboard up`` runs it (``tests/drills_support.py``'s
:class:`Stack`: the supervisor, embedded NATS, every service a child process, the local model) plus, for the
drills that need them, a second session instance and a second gateway as plain processes; and
:class:`CpuMeter`, the whole path's CPU time read from ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path

import httpx
import nats
from _proc_cpu import cpu_seconds_ticks

from shared import subjects
from switchboard import natsserver
from tests.drills_support import Stack, terminate

__all__ = ["CpuMeter", "RolloutStack"]

ROOT = Path(__file__).resolve().parents[1]


class RolloutStack:
    """:class:`Stack` in ``data_dir`` with ``extra_env``, plus ``extras`` (``session`` and/or ``gateway``): one more
    instance of each, started after the stack is ready (the second gateway on its own free port)."""

    def __init__(self, data_dir: Path, *, extra_env: dict[str, str] | None = None,
                 extras: tuple[str, ...] = ()) -> None:
        unknown = set(extras) - {"session", "gateway"}
        if unknown:
            raise ValueError(f"no second instance of {', '.join(sorted(unknown))} (session and gateway only)")
        self.stack = Stack(data_dir, extra_env=extra_env)
        self.extras = extras
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.gateway2_port = natsserver.free_port()

    @property
    def gateways(self) -> list[str]:
        """Base URLs of the gateways, the supervised one first."""
        urls = [self.stack.gateway_url]
        if "gateway" in self.extras:
            urls.append(f"http://127.0.0.1:{self.gateway2_port}")
        return urls

    async def __aenter__(self) -> RolloutStack:
        await self.stack.__aenter__()
        try:
            for name in self.extras:
                env = self.stack.supervisor.child_env(name)
                if name == "gateway":
                    env["SWITCHBOARD_GATEWAY_PORT"] = str(self.gateway2_port)
                with (self.stack.settings.data_dir / "logs" / f"{name}2.log").open("ab") as out:
                    self.procs[name] = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", f"services.{name}", cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
                        stdout=out, stderr=out, start_new_session=True)
            if "gateway" in self.extras:
                await _http_ready(self.gateways[1])
            if "session" in self.extras:
                await self._sessions_ready(2)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            for proc in self.procs.values():
                await terminate(proc)
        finally:
            await self.stack.__aexit__(*exc)

    async def _sessions_ready(self, count: int, timeout: float = 90.0) -> None:
        """Wait until ``count`` session instances answer ``switchboard.ready.session`` without an error.

        Raises:
            TimeoutError: fewer answered within ``timeout`` s.
        """
        nc = await nats.connect(servers=self.stack.nats_url.split(","), connect_timeout=10,
                                **self.stack.supervisor.operator_options())
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                inbox = nc.new_inbox()
                sub = await nc.subscribe(inbox)
                await nc.publish(subjects.ready("session"), b"", reply=inbox)
                ok = 0
                with contextlib.suppress(TimeoutError):
                    while ok < count:
                        msg = await sub.next_msg(timeout=1.0)
                        ok += not (msg.headers or {}).get("Nats-Service-Error-Code")
                await sub.unsubscribe()
                if ok >= count:
                    return
            raise TimeoutError(f"{count} session instances were not ready within {timeout:.0f}s")
        finally:
            await nc.close()

    def switchboard_pids(self) -> dict[int, tuple[str, bool]]:
        """pid → (name, ready) of every Switchboard process now running: nats-server, the supervised services
        except the local model, and the extra instances (counted ready)."""
        sup = self.stack.supervisor
        out: dict[int, tuple[str, bool]] = {}
        for name, state in [("nats", sup.nats_state), *sup.services.items()]:
            if name != "localmodel" and state.pid is not None and state.running:
                out[int(state.pid)] = (name, bool(state.ready))
        for name, proc in self.procs.items():
            if proc.returncode is None:
                out[proc.pid] = (f"{name}2", True)
        return out


async def _http_ready(url: str, timeout: float = 90.0) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url + "/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} was not ready within {timeout:.0f}s")


class CpuMeter:
    """CPU seconds spent by the Switchboard processes of ``stack`` between :meth:`start` and :meth:`stop`
    (utime + stime from ``/proc/<pid>/stat``, sampled every ``interval`` s; a process that exits loses at most its
    last interval).

    A process started during the window (a restart) is counted from the sample at which the supervisor reports
    it ready; what it spent starting (interpreter, imports, connections) goes to :attr:`startup_s` instead of
    :attr:`serving_s`, so the figure compares the work of serving calls with and without a fault.
    """

    def __init__(self, stack: RolloutStack, interval: float = 0.5) -> None:
        self.stack = stack
        self.interval = interval
        self.readings: dict[int, list[float]] = {}
        """pid → [first counted reading, last reading] (s)."""
        self.names: dict[int, str] = {}
        self.startup_s = 0.0
        self._task: asyncio.Task[None] | None = None
        self._first = True

    def sample(self) -> None:
        """Read every Switchboard process once."""
        for pid, (name, ready) in self.stack.switchboard_pids().items():
            try:
                cpu = cpu_seconds_ticks(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
            reading = self.readings.get(pid)
            if reading is not None:
                reading[1] = cpu
            elif self._first:
                self.readings[pid] = [cpu, cpu]
            elif ready:
                self.readings[pid] = [cpu, cpu]
                self.startup_s += cpu
            self.names.setdefault(pid, name)
        self._first = False

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.sample()

    def start(self) -> None:
        """Take the first reading and keep sampling."""
        self.sample()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Take the last reading and stop sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()

    @property
    def serving_s(self) -> float:
        """CPU seconds counted over the window (every process, restarts' start-up excluded)."""
        return sum(last - first for first, last in self.readings.values())

    def by_name(self) -> dict[str, float]:
        """Counted CPU seconds per process name (instances of one service summed)."""
        out: dict[str, float] = {}
        for pid, (first, last) in self.readings.items():
            out[self.names[pid]] = out.get(self.names[pid], 0.0) + last - first
        return {k: round(v, 2) for k, v in sorted(out.items())}

