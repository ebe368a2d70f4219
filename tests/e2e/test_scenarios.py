"""Every scenario in ``scenarios/`` through the real processes: gateway (Twilio Media Streams), session, local
model, tools and recorder, with real synthesised speech.

For each call: the scenario's expectations hold (checked against the log by the simulator); the session's
log has no ``Switchboard-Seq`` gaps (the gateway's persisted sequence is increasing: its counter also counts the
caller audio frames, which travel on core NATS and are not stored); the recorder archived every logged event
and the hash chains verify; the recording lasts about as long as the call and both channels carry sound; and
``switchboard replay --rerun`` on the local model reproduces the same tool calls.
"""

from __future__ import annotations

import asyncio
import json
import sys
import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shared import subjects
from shared.bus import Bus
from switchboard.caller import CallResult, run_scenario
from switchboard.cli.demo import wait_archived
from switchboard.scenario import load_scenario
from tests.e2e.conftest import ROOT, SPEED, System

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))
RESULTS: dict[str, tuple[CallResult, dict[str, Any]]] = {}
"""Calls placed so far in this session, by scenario file stem (reused by the trace test)."""


async def archived(system: System, call_id: str) -> dict[str, Any]:
    """The recorder's call record once it is ended, projected and recorded."""
    async with httpx.AsyncClient(base_url=system.recorder_url, timeout=10) as client:
        call = await wait_archived(client, call_id)
    assert call.get("projected_ns") and call.get("recording_path"), f"call {call_id} not archived: {call}"
    return call


async def placed(system: System, path: Path) -> tuple[CallResult, dict[str, Any]]:
    """Place the scenario once per session (memoised) and wait for its archive."""
    if path.stem not in RESULTS:
        lines: list[str] = []
        result = await run_scenario(load_scenario(path), gateway_url=system.gateway_url, nats_url=system.nats_url,
                                    speed=SPEED, out=lines.append)
        assert result.call_id, f"{path.name}: call not placed: {result.failures}"
        assert result.ok, f"{path.name}: {result.failures}\n" + "\n".join(lines)
        RESULTS[path.stem] = (result, await archived(system, result.call_id))
    return RESULTS[path.stem]


async def logged(system: System, call_id: str) -> dict[str, list[tuple[str, int]]]:
    """``(stream, seq)`` per source of every message of the call in the RT and CALLS streams."""
    bus = await Bus.connect(system.nats_url, name="e2e-reader", source="test")
    out: dict[str, list[tuple[str, int]]] = {}
    try:
        for pattern, stream in ((subjects.rt_all(call_id), subjects.RT_STREAM),
                                (subjects.call_all(call_id), subjects.CALLS_STREAM)):
            async for env in bus.replay(pattern, stream):
                assert env.seq is not None and env.source, f"{env.subject} lacks Switchboard-Seq/Source"
                out.setdefault(env.source, []).append((stream.name, env.seq))
    finally:
        await bus.close()
    return out


def channel_rms(path: Path) -> tuple[float, float, float]:
    """(duration s, RMS of the left channel, RMS of the right channel) of a 16-bit stereo WAV."""
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 2 and wav.getsampwidth() == 2
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2).astype(np.float64)
        rate = wav.getframerate()
    return len(frames) / rate, float(np.sqrt(np.mean(frames[:, 0] ** 2))), float(np.sqrt(np.mean(frames[:, 1] ** 2)))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
async def test_scenario_end_to_end(system: System, path: Path) -> None:
    result, call = await placed(system, path)
    call_id = str(result.call_id)

    # the log: the session's messages are numbered 1..n without gaps; the gateway's increase
    per_source = await logged(system, call_id)
    session_seqs = sorted(seq for _, seq in per_source["session"])
    assert session_seqs == list(range(1, len(session_seqs) + 1)), "gaps in the session's Switchboard-Seq"
    gateway_seqs = [seq for stream, seq in per_source["gateway"] if stream == "CALLS"]
    assert gateway_seqs == sorted(set(gateway_seqs)), "gateway Switchboard-Seq not increasing in CALLS"

    # the archive: every logged event stored, chains intact
    counts = {"RT": 0, "CALLS": 0}
    for seqs in per_source.values():
        for stream, _ in seqs:
            counts[stream] += 1
    assert call["events"] == counts
    assert call["status"] == "ended"
    assert call["end_reason"] == ("caller_hangup" if load_scenario(path).expect.ended_by == "caller"
                                  else call["end_reason"])
    async with httpx.AsyncClient(base_url=system.recorder_url, timeout=30) as client:
        audit = (await client.get(f"/calls/{call_id}/audit")).json()
        assert audit["ok"], audit["problems"]
        wav_bytes = (await client.get(f"/calls/{call_id}/recording.wav")).content

    # the recording: about as long as the call (at SPEED × real time the call's wall time is shorter than its
    # audio timeline, so compare with the caller's audio sent), both channels carry sound
    recording = Path(call["recording_path"])
    assert await asyncio.to_thread(recording.read_bytes) == wav_bytes
    seconds, left, right = await asyncio.to_thread(channel_rms, recording)
    call_audio_s = result.duration_ms / 1000 * SPEED
    assert 0.5 * call_audio_s <= seconds <= 1.5 * call_audio_s + 2, (seconds, call_audio_s)
    assert left > 100 and right > 100, f"silent channel: caller RMS {left:.0f}, agent RMS {right:.0f}"


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
async def test_replay_rerun_reproduces_the_tool_calls(system: System, path: Path) -> None:
    """``--speed 1`` replays the logged appends at their logged times, i.e. at the SPEED the call ran at."""
    result, _ = await placed(system, path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "switchboard.cli", "replay", str(result.call_id), "--rerun", "--json", "--speed", "1",
        "--api", system.recorder_url, cwd=ROOT, env=system.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    verdict = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {}
    assert proc.returncode == 0, f"rerun differs: {verdict or err.decode()[-2000:]}"
    assert verdict["equivalent"] is True
