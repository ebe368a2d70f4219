"""Fault drills, short versions (``bench/chaos.py`` runs the long ones and prints a table).

Each drill runs 20 concurrent echo calls plus the book-appointment scenario through the real processes while
a fault is injected, then accounts for every message JetStream acknowledged against the recorder's archive
(:mod:`tests.drills_support`). Every loss figure must be 0: nothing lost, nothing archived twice, every call ended in
the archive, every hash chain verifying, no model session left talking after its call ended, no booking after a
tool call failed. The scenario's expectations are reported, not required (see ``_assert_clean``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests import drills_support as drills

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CALLS = 20
SECONDS = 12.0


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[drills.Stack]:
    async with drills.Stack(tmp_path_factory.mktemp("drills")) as s:
        yield s


def _assert_clean(result: drills.DrillResult) -> None:
    """Every loss figure 0 and every call (the scenario's included) ended in the archive. The scenario's own
    expectations are reported in the row, not required: under 20 concurrent calls on 2 cores the local model
    sometimes mishears the scripted caller (issue 27), and speech said during a NATS outage is not heard."""
    row = result.row()
    assert result.loss_free, f"{row} notes: {result.notes}"
    assert result.acked > 0 and result.archived == result.acked, row


async def test_recorder_killed_during_calls_loses_nothing(stack: drills.Stack) -> None:
    result = await drills.run_drill("recorder-kill", stack, calls=CALLS, seconds=SECONDS,
                                    fault=drills.kill_recorder(2, every=1.0), fault_after=2.0)
    _assert_clean(result)


async def test_cancelled_live_streams_never_break_the_recorder(stack: drills.Stack) -> None:
    result = await drills.run_drill("live-cancel", stack, calls=CALLS, seconds=SECONDS,
                                    fault=drills.cancel_streams(500), fault_after=2.0)
    _assert_clean(result)


async def test_nats_server_paused_loses_nothing(stack: drills.Stack) -> None:
    result = await drills.run_drill("nats-stop", stack, calls=CALLS, seconds=SECONDS,
                                    fault=drills.stop_nats(5.0), fault_after=2.0)
    _assert_clean(result)


async def test_nats_server_killed_and_restarted_loses_nothing(stack: drills.Stack) -> None:
    result = await drills.run_drill("nats-kill", stack, calls=CALLS, seconds=SECONDS,
                                    fault=drills.kill_nats(), fault_after=2.0)
    _assert_clean(result)


async def test_stalled_tools_worker_books_nothing_after_its_deadline(stack: drills.Stack) -> None:
    result = await drills.run_tools_stall(stack, calls=CALLS, seconds=SECONDS)
    _assert_clean(result)
    assert result.scenario_call, result.row()  # the scenario's call was placed: its bookings were counted


async def test_start_then_stop_calls_all_end(stack: drills.Stack) -> None:
    result = await drills.run_start_stop(stack, 60)
    _assert_clean(result)


async def test_cluster_node_killed_mid_call_loses_nothing(tmp_path: Path) -> None:
    cluster = drills.Cluster(tmp_path / "cluster")
    await cluster.start()
    try:
        async with drills.Stack(tmp_path / "data", nats_url=cluster.url, js_replicas=3) as s:
            result = await drills.run_drill("cluster-node", s, calls=CALLS, seconds=SECONDS,
                                            fault=drills.kill_cluster_node(cluster), fault_after=3.0)
    finally:
        await cluster.stop()
    _assert_clean(result)
