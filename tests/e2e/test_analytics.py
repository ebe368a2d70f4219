"""Analytics through the real processes with the repository's two-version rollout (agents/rollout.yaml): calls
from callers the rollout sends to version 1 and to version 2 appear in ``GET /kpis`` per version, in
``switchboard kpis --by version`` (with its comparison) and in the console's calls list."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import httpx
import pytest

from shared import rollout
from switchboard.caller import run_scenario
from switchboard.scenario import Scenario, load_scenario
from tests.e2e.conftest import ROOT, SPEED, System
from tests.e2e.test_scenarios import archived

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def caller_for(version: str) -> str:
    """A caller number the repository's rollout sends to ``version`` of the receptionist."""
    for i in range(1000):
        number = f"+1555777{i:04d}"
        if rollout.choose(ROOT / "agents", "receptionist", number).version == version:
            return number
    raise AssertionError(f"no caller number maps to version {version}")


def with_caller(scenario: Scenario, number: str) -> Scenario:
    return scenario.model_copy(update={"caller": scenario.caller.model_copy(update={"from_": number})})


async def kpis(system: System, **params: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=system.analytics_url, timeout=10) as client:
        response = await client.get("/kpis", params=params)
        response.raise_for_status()
        return dict(response.json())


async def test_two_versions_in_kpis_cli_and_console(system: System) -> None:
    scenario = load_scenario(ROOT / "scenarios" / "unknown-request.yaml")  # changes no data: repeatable
    placed: dict[str, str] = {}
    for version in ("1", "2"):
        lines: list[str] = []
        result = await run_scenario(with_caller(scenario, caller_for(version)), gateway_url=system.gateway_url,
                                    nats_url=system.nats_url, speed=SPEED, out=lines.append)
        assert result.ok and result.call_id, f"{result.failures}\n" + "\n".join(lines)
        await archived(system, result.call_id)
        placed[version] = result.call_id

    async with asyncio.timeout(60):
        while True:
            groups = {g["key"]: g for g in (await kpis(system, group_by="agent_version"))["groups"]}
            if all(groups.get(v, {}).get("calls", 0) >= 1 for v in placed):
                break
            await asyncio.sleep(0.5)
    async with httpx.AsyncClient(base_url=system.analytics_url, timeout=10) as client:
        for version, call_id in placed.items():
            row = (await client.get(f"/kpis/calls/{call_id}")).json()
            assert row["agent_version"] == version and row["end_reason"] == "agent_hangup"
            assert row["tool_calls"] >= 1 and row["tool_errors"] == 0 and row["first_response_ms"]
            assert row["cost_usd"] == 0.0  # the local model
    for version in placed:
        g = groups[version]
        assert g["tool_success"]["numerator"] >= 1 and g["first_response_p50_ms"] > 0
    by_day = (await kpis(system, group_by="day"))["groups"]
    assert sum(g["calls"] for g in by_day) >= 2

    env = {**system.env, "SWITCHBOARD_ANALYTICS_PORT": str(system.settings.analytics_port)}
    out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "switchboard.cli", "kpis", "--by", "version",
                                                   "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert {"1", "2"} <= {g["key"] for g in report["groups"]}
    compared = {c["kpi"] for c in report["comparisons"]}
    assert {"task_completion", "first_response_p50_ms", "cost_per_call_usd"} <= compared
    assert all(isinstance(c["significant"], bool) for c in report["comparisons"])
    table = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "switchboard.cli", "kpis", "--by", "version"],
        env=env, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "significant" in table.stdout

    async with httpx.AsyncClient(base_url=system.analytics_url, timeout=10) as client:
        metrics = (await client.get("/metrics")).text
    assert 'switchboard_analytics_first_response_seconds_count{agent_version="1"}' in metrics
    assert 'switchboard_analytics_calls_ended_total{agent_version="2",outcome=' in metrics

    # the version-1 call rerun against version 2 makes the same tool calls (v2 only speaks faster)
    rerun = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "switchboard.cli", "replay", placed["1"], "--rerun", "--agent-version", "2", "--json",
        "--api", system.recorder_url], env=system.env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["equivalent"] is True
    missing = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "switchboard.cli", "replay", placed["1"], "--rerun", "--agent-version", "9",
        "--api", system.recorder_url], env=system.env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert missing.returncode == 2 and "no version '9'" in " ".join(missing.stdout.split())  # rich wraps

    async with httpx.AsyncClient(base_url=system.recorder_url, timeout=10) as client:
        page = (await client.get("/ui/")).text
        assert all(call_id in page for call_id in placed.values())
        v2 = (await client.get("/ui/", params={"agent_version": "2"})).text
        assert placed["2"] in v2 and placed["1"] not in v2
