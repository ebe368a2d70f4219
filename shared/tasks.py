"""A set of background tasks owned by one object (a call, a model session, a service): each task stays
referenced until it ends, a failure is logged instead of lost, and the owner cancels what is left when it stops.

asyncio keeps only weak references to tasks (https://docs.python.org/3/library/asyncio-task.html#creating-tasks),
so a task nobody holds can vanish mid-run; this is the one place that holds them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterator
from typing import Any

__all__ = ["TaskSet"]


class TaskSet:
    """Background tasks of one owner.

    Args:
        label: names the owner in the log line of a failed task (e.g. ``"call call_01…"``).
        logger: where failures are logged (ERROR, with the traceback).
    """

    def __init__(self, label: str, logger: logging.Logger) -> None:
        self.label = label
        self._log = logger
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Awaitable[Any], *, name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` as a task held by this set until it ends; returns the task."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        if name:
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error("%s: task %s failed", self.label, task.get_name(), exc_info=task.exception())

    def cancel(self) -> list[asyncio.Task[Any]]:
        """Cancel every task still running; returns them (to await, if the owner waits for them to unwind)."""
        left = list(self._tasks)
        for task in left:
            task.cancel()
        return left

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)
