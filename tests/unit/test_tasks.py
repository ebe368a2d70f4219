"""shared.tasks.TaskSet: tasks held until they end, failures logged, cancel on stop."""

from __future__ import annotations

import asyncio
import logging

import pytest

from shared.tasks import TaskSet

log = logging.getLogger("test_tasks")


async def test_a_failed_task_is_logged_with_its_owner_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet("call call_x", log)

    async def boom() -> None:
        raise RuntimeError("kaput")

    task = tasks.spawn(boom(), name="boom")
    with caplog.at_level(logging.ERROR, logger="test_tasks"):
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert len(tasks) == 0
    assert any("call call_x: task boom failed" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_cancel_stops_what_is_left_and_returns_it() -> None:
    tasks = TaskSet("session", log)
    finished = tasks.spawn(asyncio.sleep(0))
    await finished
    await asyncio.sleep(0)
    waiting = tasks.spawn(asyncio.sleep(3600))
    assert list(tasks) == [waiting]
    left = tasks.cancel()
    assert left == [waiting]
    await asyncio.wait(left)
    assert waiting.cancelled()
    await asyncio.sleep(0)
    assert len(tasks) == 0
