"""Faults on a nats-server of a test's own: freeze it (SIGSTOP) and know when the kernel has stopped it."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path


async def freeze(pid: int) -> None:
    """SIGSTOP ``pid`` and wait (bounded) until the kernel shows it stopped (``T`` in /proc/<pid>/stat)."""
    os.kill(pid, signal.SIGSTOP)
    stat = Path(f"/proc/{pid}/stat")
    for _ in range(200):
        if (await asyncio.to_thread(stat.read_text)).rsplit(")", 1)[1].split()[0] == "T":
            return
        await asyncio.sleep(0.01)
