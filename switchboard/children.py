"""The state of one supervised child of ``switchboard up`` (:class:`ServiceState`) and its restart delays
(:class:`Backoff`); :mod:`switchboard.supervisor` starts, probes and restarts the children.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from switchboard import natsserver

__all__ = ["HEALTHY_RESET_S", "Backoff", "ServiceState"]

HEALTHY_RESET_S = 60.0
"""A child ready for this long before it dies restarts after the initial backoff again."""


class Backoff:
    """Restart delays: ``start`` s doubling to ``cap`` s; back to ``start`` after ``reset_after`` s of health."""

    def __init__(self, start: float = 0.5, cap: float = 30.0, reset_after: float = HEALTHY_RESET_S) -> None:
        self.start = start
        self.cap = cap
        self.reset_after = reset_after
        self._next = start

    def delay(self, healthy_for: float) -> float:
        """The delay before the next restart of a child that was ready for ``healthy_for`` s before it died
        (0 when it never became ready)."""
        if healthy_for >= self.reset_after:
            self._next = self.start
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay


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
    embedded: natsserver.EmbeddedNats | None = field(default=None, repr=False)
    """The nats-server process (the ``nats`` entry only)."""
    healthy_since: float | None = None
    """``time.monotonic()`` since when the child has been ready without a break (None: not ready)."""
    was_ready: bool = False
    """The current process has been ready at least once."""
    longest_health: float = 0.0
    """The longest finished stretch (s) of readiness of the current process."""
    external: bool = False
    """Not ours to run (an external NATS): probed only."""
    backoff: Backoff = field(default_factory=Backoff, repr=False)
    monitor: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        """The child's pid, if it has one."""
        if self.embedded is not None:
            return self.embedded.process.pid
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        """The child process exists and has not exited."""
        if self.external:
            return True
        if self.embedded is not None:
            return self.embedded.process.poll() is None
        return self.process is not None and self.process.returncode is None

    @property
    def status(self) -> str:
        """``absent``, ``disabled``, ``starting``, ``ready``, ``unready`` (was ready, now fails its probe) or
        ``exited``."""
        if not self.present:
            return "absent"
        if not self.enabled:
            return "disabled"
        if not self.running:
            return "exited"
        if self.ready:
            return "ready"
        return "unready" if self.was_ready else "starting"

    def mark(self, ready: bool) -> bool:
        """Record a probe result; returns whether readiness changed."""
        changed = ready != self.ready
        self.ready = ready
        if ready:
            self.was_ready = True
            if self.healthy_since is None:
                self.healthy_since = time.monotonic()
        elif self.healthy_since is not None:
            self.longest_health = max(self.longest_health, time.monotonic() - self.healthy_since)
            self.healthy_since = None
        return changed

    def new_process(self) -> None:
        """Forget the readiness history of the previous process (a new one was started)."""
        self.mark(False)
        self.was_ready = False
        self.longest_health = 0.0
        self.started_at = time.monotonic()

    def healthy_for(self) -> float:
        """The longest time (s) the current process has been ready without a break (0 when never ready)."""
        current = 0.0 if self.healthy_since is None else time.monotonic() - self.healthy_since
        return max(self.longest_health, current)
