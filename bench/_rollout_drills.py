"""The rollout drills (``bench/rollout.py``): what each one does to the running system, and the account of a
drill — calls completed / dropped, the caller-audible gap, events lost and the whole path's CPU.

Every drill runs on a fresh system (:class:`RolloutStack`) under the same load: N echo calls
(:mod:`_rollout_load`) and one real scenario (``scenarios/book-appointment.yaml`` through the caller simulator,
real time), with the fault injected ``fault_after`` s into the calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
from _rollout_load import Balancer, EchoCall, place_echo_calls
from _rollout_stack import CpuMeter, RolloutStack

from services.recorder.recording import call_formats
from services.recorder.records import ArchivedEvent
from services.session.ownership import Owner
from shared import audio, subjects
from shared.bus import Bus
from shared.fencing import OwnerFence
from switchboard.caller import CallerSimulator
from switchboard.scenario import load_scenario
from switchboard.testing.scripted import tone
from tests import drills_support as drills

__all__ = ["DRILLS", "Drill", "DrillReport", "run_drill"]

ROOT = Path(__file__).resolve().parents[1]
SCENARIO_LEAD_S = 6.0
"""The scenario starts this long before the fault is due (its greeting and first reply take about that long)."""
LOOK_AGAIN_S = 30.0
"""When events are missing from the archive at the first look, the second look comes this much later (s)."""
OFF_PATH = frozenset({"analytics"})
"""Processes off the call path, left out of the headline CPU figure (as in ``bench/pipeline.py``'s whole path:
nats-server, gateway, session, tools, recorder); they are in ``cpu_by_process``."""
Fault = Callable[[RolloutStack], Coroutine[Any, Any, list[str]]]
"""Injects the fault while the calls run; returns notes for the report."""


@dataclass(frozen=True)
class Drill:
    """One drill: the fault (None: the no-drill baseline), the extra instances it needs and its environment."""

    name: str
    fault: Fault | None
    extras: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


def _sigterm_restart(service: str) -> Fault:
    """SIGTERM the supervised ``service``; the supervisor starts it again once it has exited."""

    async def fault(rs: RolloutStack) -> list[str]:
        t0 = time.monotonic()
        pid = rs.stack.signal(service, signal.SIGTERM)
        await rs.stack.wait_restarted(service, pid, timeout=300)
        return [f"{service} SIGTERM, back ready after {time.monotonic() - t0:.1f}s"]

    return fault


async def _gateway_drain(rs: RolloutStack) -> list[str]:
    """SIGTERM the only gateway: it drains (its calls go on, no new ones); restarted once they ended."""
    rs.stack.signal("gateway", signal.SIGTERM)
    return ["gateway SIGTERM (drain 300 s); restarted by the supervisor once its calls ended"]


async def _scenario_call(rs: RolloutStack, timeout: float = 20.0) -> str | None:
    """The live call that is not an echo call (the scenario's), from the archive."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                r = await client.get(f"{rs.stack.recorder_url}/calls", params={"limit": 200})
                for call in r.json():
                    if call.get("status") == "in_progress" and call.get("agent") != "echo":
                        return str(call["call_id"])
            await asyncio.sleep(0.5)
    return None


async def _owner_pid(rs: RolloutStack) -> tuple[int, str]:
    """The pid of the session instance that owns the scenario's call (else the one owning the most calls), and a
    note naming it."""
    target = await _scenario_call(rs)
    nc = await nats.connect(servers=rs.stack.nats_url.split(","), connect_timeout=10,
                            **rs.stack.supervisor.operator_options())
    try:
        kv = await nc.jetstream().key_value(subjects.CALL_OWNERS_BUCKET)
        owners: dict[str, Owner] = {}
        for key in await kv.keys():
            with contextlib.suppress(Exception):
                entry = await kv.get(key)
                found = Owner.decode(entry.value)
                if found is not None:
                    owners[key] = found
    finally:
        await nc.close()
    counts: dict[str, int] = {}
    for o in owners.values():
        counts[o.owner] = counts.get(o.owner, 0) + 1
    instance = owners[target].owner if target in owners else max(counts, key=lambda k: counts[k])
    pid = int(instance.rsplit(":", 2)[1])
    name = rs.switchboard_pids().get(pid, ("?", False))[0]
    return pid, (f"{name} (pid {pid}), owner of {counts.get(instance, 0)} of {len(owners)} calls"
                 f"{' incl. the scenario' if target in owners else ''}")


async def _kill9_owner(rs: RolloutStack) -> list[str]:
    """kill -9 the session instance that owns the scenario's call; the peer takes its calls over after the lapse."""
    pid, note = await _owner_pid(rs)
    os.kill(pid, signal.SIGKILL)
    return [f"kill -9 {note}"]


async def _sigterm_owner(rs: RolloutStack) -> list[str]:
    """SIGTERM the session instance that owns the scenario's call: it hands its calls over to the peer."""
    pid, note = await _owner_pid(rs)
    os.kill(pid, signal.SIGTERM)
    return [f"SIGTERM {note}"]


async def _gateway_sigterm_peer(rs: RolloutStack) -> list[str]:
    """SIGTERM the supervised gateway with a second one running (drain 1 s): its streams close with the resume
    marker and the callers follow ``<Redirect>`` to the other gateway."""
    t0 = time.monotonic()
    pid = rs.stack.signal("gateway", signal.SIGTERM)
    await rs.stack.wait_restarted("gateway", pid, timeout=120)
    return [f"gateway SIGTERM with a second gateway, back ready after {time.monotonic() - t0:.1f}s"]


async def _gateway_kill9_peer(rs: RolloutStack) -> list[str]:
    """kill -9 the supervised gateway with a second one running: the streams break without the resume marker and
    the callers follow ``<Redirect>`` as after a drain (Twilio moves on to the next verb however the stream ends)."""
    t0 = time.monotonic()
    pid = rs.stack.signal("gateway", signal.SIGKILL)
    await rs.stack.wait_restarted("gateway", pid, timeout=120)
    return [f"gateway kill -9 with a second gateway, back ready after {time.monotonic() - t0:.1f}s"]


DRILLS: dict[str, Drill] = {d.name: d for d in (
    Drill("baseline", None),
    Drill("gateway-restart", _gateway_drain, env={"SWITCHBOARD_DRAIN_S": "300"}),
    Drill("session-restart", _sigterm_restart("session")),
    Drill("tools-restart", _sigterm_restart("tools")),
    Drill("recorder-restart", _sigterm_restart("recorder")),
    Drill("session-sigterm-peer", _sigterm_owner, extras=("session",)),
    Drill("session-kill9-peer", _kill9_owner, extras=("session",)),
    Drill("gateway-sigterm-peer", _gateway_sigterm_peer, extras=("gateway",), env={"SWITCHBOARD_DRAIN_S": "1"}),
    Drill("gateway-kill9-peer", _gateway_kill9_peer, extras=("gateway",)),
)}
"""Every drill, the baseline first."""


@dataclass
class DrillReport:
    """The account of one drill."""

    name: str
    calls: int = 0
    completed: int = 0
    max_gap_s: float = 0.0
    """Longest caller-audible silence in any echo call (s)."""
    p95_gap_s: float = 0.0
    """95th percentile over the echo calls of each call's longest silence (s)."""
    reconnects: int = 0
    reconnect_s: list[float] = field(default_factory=list)
    """Each echo call's reconnect: from the stream's close to ``start`` on the new one (s, sorted)."""
    events_acked: int = 0
    events_lost: int = 0
    """Acknowledged by JetStream (RT and CALLS), not in the archive."""
    events_duplicated: int = 0
    caller_audio_missing_ms: float = 0.0
    """Caller audio sent on an open stream that the archive does not show appended (ms, summed over calls)."""
    caller_audio_surplus_ms: float = 0.0
    """Caller audio the archive shows appended beyond what was sent (replayed twice; ms, summed)."""
    frames_lost_ms: float = 0.0
    """Caller audio due while no stream was open (a reconnect; lost on the phone line, not by Switchboard)."""
    scenario: str = "-"
    """``ok`` when the scenario's expectations held (its call is counted completed when it was not cut off)."""
    scenario_end_reason: str | None = None
    call_seconds: float = 0.0
    cpu_s: float = 0.0
    """Whole-path CPU s: nats-server, gateway(s), session(s), tools, recorder; restarts' start-up excluded."""
    all_cpu_s: float = 0.0
    """The same over every Switchboard process (analytics too; the local model excluded)."""
    startup_cpu_s: float = 0.0
    cpu_by_process: dict[str, float] = field(default_factory=dict)
    end_reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        return self.calls - self.completed

    @property
    def cpu_ms_per_call_s(self) -> float:
        """Whole-path CPU ms per call-second (restarts' start-up excluded)."""
        return 1000.0 * self.cpu_s / self.call_seconds if self.call_seconds else 0.0

    @property
    def ok(self) -> bool:
        """No call dropped, no event lost, the scenario passed."""
        return self.dropped == 0 and self.events_lost == 0 and self.scenario == "ok"


async def _caller_audio_ms(client: httpx.AsyncClient, recorder_url: str, call_id: str) -> float:
    """Caller audio the archive shows appended for ``call_id`` (ms, in the session's input format), by the current
    owner: during a handover both owners append the same live audio, and the old owner's copies after the new
    owner's first append are not counted (as in the recording, :class:`~shared.fencing.OwnerFence`)."""
    events: list[ArchivedEvent] = []
    for kind in ("started", "session.update", "input_audio_buffer.append"):
        r = await client.get(f"{recorder_url}/calls/{call_id}/events", params={"type": kind}, timeout=120)
        r.raise_for_status()
        events += [ArchivedEvent.from_dict(json.loads(line)) for line in r.text.splitlines() if line.strip()]
    in_fmt, _ = call_formats(events)
    per_s = audio.bytes_for_ms(in_fmt, 1000.0)
    total = 0
    fence = OwnerFence()
    for ev in sorted(events, key=lambda e: (e.time_ns, e.stream, e.stream_seq)):
        if ev.type == "input_audio_buffer.append" and fence.current(ev.headers):
            text = str((ev.json() or {}).get("audio") or "")
            total += len(text) * 3 // 4 - text[-2:].count("=")
    return 1000.0 * total / per_s


async def _account(rs: RolloutStack, report: DrillReport, echo: list[EchoCall], scenario_call: str | None) -> None:
    """Completed calls, end reasons, events and caller audio, from the archive and JetStream."""
    sup = rs.stack.supervisor
    ids = await drills.call_ids_for(rs.stack.nats_url, {c.run_id for c in echo}, options=sup.operator_options())
    call_ids = list(ids.values()) + ([scenario_call] if scenario_call else [])
    account = drills.DrillResult(report.name, calls=len(call_ids))
    await drills.account(rs.stack, account, call_ids, settle_s=120.0)
    if account.lost:  # lost, or not archived yet? look again once the recorder had time to catch up
        report.notes.append(f"{account.lost} events not archived at the first look")
        await asyncio.sleep(LOOK_AGAIN_S)
        account = drills.DrillResult(report.name, calls=len(call_ids))
        await drills.account(rs.stack, account, call_ids, settle_s=10.0)
    report.events_acked, report.events_lost = account.acked, account.lost
    report.events_duplicated = account.duplicated
    report.notes += account.notes[:3]
    async with httpx.AsyncClient(timeout=30) as client:
        reasons: dict[str, str | None] = {}
        for call_id in call_ids:
            r = await client.get(f"{rs.stack.recorder_url}/calls/{call_id}")
            reasons[call_id] = r.json().get("end_reason") if r.status_code == 200 else None
        if scenario_call:
            report.scenario_end_reason = reasons.get(scenario_call)
        for reason in reasons.values():
            report.end_reasons[str(reason)] = report.end_reasons.get(str(reason), 0) + 1
        for call in echo:
            cid = ids.get(call.run_id)
            if cid is None:
                report.notes.append(f"echo {call.run_id}: no call.started ({call.error})")
                continue
            if call.hung_up and call.error is None and reasons[cid] == "caller_hangup":
                report.completed += 1
            elif len(report.notes) < 8:
                report.notes.append(f"echo {cid}: dropped ({call.error or 'end reason ' + str(reasons[cid])})")
            archived = await _caller_audio_ms(client, rs.stack.recorder_url, cid)
            sent = call.frames_sent * 20.0
            report.caller_audio_missing_ms += max(0.0, sent - archived)
            report.caller_audio_surplus_ms += max(0.0, archived - sent)
            report.frames_lost_ms += call.frames_lost * 20.0


async def _fault_when_mid_call(drill: Drill, rs: RolloutStack, sim: CallerSimulator, at_least: float,
                               started: float) -> list[str]:
    """Inject ``drill``'s fault once the calls have run ``at_least`` s and the scenario's call is mid-call (two
    agent responses done; 60 s at most)."""
    assert drill.fault is not None
    deadline = time.monotonic() + 60.0
    await asyncio.sleep(max(0.0, started + at_least - time.monotonic()))
    while sim.follower.responses_done < 2 and time.monotonic() < deadline:
        await sim.follower.wait_changed(0.5)
    notes = [f"fault {time.monotonic() - started:.1f}s into the calls, the scenario at "
             f"{sim.follower.responses_done} responses"]
    return notes + await drill.fault(rs)


async def run_drill(drill: Drill, *, calls: int, seconds: float, fault_after: float,
                    keep_logs: Path | None = None) -> DrillReport:
    """Run ``drill`` on a fresh system; never raises for a failed call (see :class:`DrillReport`). ``keep_logs``:
    copy the services' logs to ``keep_logs/<drill>/`` before the system's data directory is removed.

    The echo calls start at once; the scenario ``SCENARIO_LEAD_S`` s before ``fault_after``; the fault when both
    the echo calls have run ``fault_after`` s and the scenario's call is mid-call.
    """
    report = DrillReport(drill.name, calls=calls + 1)
    started = time.monotonic()
    frame_audio = tone(440, 1000, amplitude=4000)
    frames = [frame_audio[i:i + 160] for i in range(0, len(frame_audio), 160)]
    scenario = load_scenario(ROOT / "scenarios" / "book-appointment.yaml")
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f"rollout-{drill.name}-") as tmp:
        async with RolloutStack(Path(tmp) / "data", extra_env=drill.env, extras=drill.extras) as rs:
            async with contextlib.AsyncExitStack() as callers:
                bus = await Bus.connect(rs.stack.nats_url, name="rollout-caller", source="caller",
                                        connect_timeout=10)
                callers.push_async_callback(bus.close)
                balancer = await callers.enter_async_context(Balancer(rs.gateways))
                sim = CallerSimulator(scenario, gateway_url=",".join(rs.gateways), bus=bus, speed=1.0,
                                      turn_timeout=90, out=lines.append)
                meter = CpuMeter(rs)
                meter.start()
                echo = [EchoCall() for _ in range(calls)]
                t0 = time.monotonic()
                load = asyncio.create_task(place_echo_calls(balancer, echo, seconds, frames))
                await asyncio.sleep(max(0.0, fault_after - SCENARIO_LEAD_S))
                sim_task = asyncio.create_task(sim.run())
                fault_task = (asyncio.create_task(_fault_when_mid_call(drill, rs, sim, fault_after, t0))
                              if drill.fault is not None else None)
                await load
                outcome = await sim_task
                if fault_task is not None:
                    try:
                        report.notes += await fault_task
                    except Exception as exc:  # the figures are still worth having
                        report.notes.append(f"fault: {type(exc).__name__}: {exc}")
                await meter.stop()
            by_process = meter.by_name()
            report.cpu_by_process = by_process
            report.cpu_s = sum(v for k, v in by_process.items() if k not in OFF_PATH)
            report.all_cpu_s, report.startup_cpu_s = meter.serving_s, meter.startup_s
            report.call_seconds = sum(c.seconds for c in echo) + outcome.duration_ms / 1000.0
            report.scenario = "ok" if outcome.ok else "failed: " + "; ".join(outcome.failures)[:300]
            if not outcome.ok:
                report.notes.append("scenario: " + " / ".join(lines)[-600:])
            gaps = sorted(c.gaps.max_gap_s for c in echo)
            report.max_gap_s = gaps[-1] if gaps else 0.0
            report.p95_gap_s = (statistics.quantiles(gaps, n=20, method="inclusive")[-1] if len(gaps) >= 2
                                else report.max_gap_s)
            report.reconnects = sum(c.reconnects for c in echo) + sim.reconnects
            report.reconnect_s = sorted(round(x, 2) for c in echo for x in c.reconnect_s)
            await _account(rs, report, echo, outcome.call_id)
            if outcome.call_id and not any(f.startswith("call failed") for f in outcome.failures) and \
                    report.scenario_end_reason in ("agent_hangup", "caller_hangup"):
                report.completed += 1
        if keep_logs is not None:
            shutil.copytree(Path(tmp) / "data" / "logs", keep_logs / drill.name, dirs_exist_ok=True)
    report.seconds = time.monotonic() - started
    return report


def summary(report: DrillReport, baseline: DrillReport | None) -> dict[str, Any]:
    """The table row of ``report`` (CPU compared with ``baseline``'s)."""
    delta = "-"
    if baseline is not None and baseline.cpu_ms_per_call_s and report is not baseline:
        delta = f"{100.0 * (report.cpu_ms_per_call_s / baseline.cpu_ms_per_call_s - 1.0):+.1f}%"
    return {"drill": report.name, "calls": report.calls, "completed": report.completed, "dropped": report.dropped,
            "max gap s": f"{report.max_gap_s:.2f}", "p95 gap s": f"{report.p95_gap_s:.2f}",
            "reconnects": report.reconnects, "events lost": report.events_lost,
            "caller audio missing ms": f"{report.caller_audio_missing_ms:.0f}",
            "scenario": report.scenario if report.scenario == "ok" else "FAILED",
            "cpu ms/call-s": f"{report.cpu_ms_per_call_s:.1f}", "vs baseline": delta,
            "s": f"{report.seconds:.0f}"}
