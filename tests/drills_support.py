"""Fault drills: the whole system under concurrent echo calls while a fault is injected, then an account of the log.

Used by ``tests/e2e/test_drills.py`` (short versions, in ``make test``) and ``bench/chaos.py`` (long versions, a
table). A drill:

1. starts the system as ``switchboard up`` does (:class:`Stack`: the supervisor, embedded NATS or a 3-node
   cluster, every service as a child process; the local model in agent mode, ``SWITCHBOARD_LOCALMODEL_PACING=fast``);
2. places N echo calls (agent ``agents/echo.yaml``: the local model repeats the caller's audio for those sessions)
   — Twilio Media Streams clients sending a 20 ms μ-law frame every 20 ms and echoing marks — plus, optionally,
   one real scenario (``scenarios/book-appointment.yaml`` through the caller simulator);
3. injects the fault (kill -9 or SIGSTOP of a process, cancelled HTTP streams, ...);
4. waits for the calls to end and the recorder to catch up, then accounts, per call, for every message JetStream
   acknowledged (the RT stream's ``rt.<id>.>`` and the CALLS stream's ``call.<id>.>``, read back headers-only)
   against the recorder's archive (``GET /calls/{id}/events``) and chain check (``GET /calls/{id}/audit``).

The figures (:class:`DrillResult`): calls placed and completed, events acknowledged by JetStream, archived,
lost (acknowledged, not archived), duplicated (archived twice), calls stuck (not ended in the archive), chains
failing, and the real scenario's outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import numpy as np
from nats.js.api import ConsumerConfig, DeliverPolicy
from websockets.exceptions import ConnectionClosed, WebSocketException

from shared.audio import ulaw_encode
from shared.carriers import twilio as tw
from shared.config import Settings, load_settings
from switchboard import natsserver
from switchboard.caller.client import TwilioCallerSocket, fetch_twiml
from switchboard.caller.simulator import run_scenario
from switchboard.scenario import load_scenario
from switchboard.supervisor import Supervisor

__all__ = ["Cluster", "DrillResult", "EchoLoad", "Stack", "account", "run_drill", "terminate"]


async def terminate(proc: asyncio.subprocess.Process, grace_s: float = 20.0) -> None:
    """SIGTERM a child process still running; SIGKILL it after ``grace_s`` seconds; wait for it."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()

ROOT = Path(__file__).resolve().parents[1]
FRAME_S = 0.020
"""One Twilio media frame: 20 ms of μ-law 8 kHz (160 bytes)."""


def _tone_frames(seconds: float) -> list[bytes]:
    """μ-law frames of a 440 Hz tone at −12 dBFS (what the echo agent sends back)."""
    n = int(seconds / FRAME_S)
    t = np.arange(160 * n) / 8000.0
    mulaw = ulaw_encode((8000 * np.sin(2 * math.pi * 440 * t)).astype(np.int16))
    return [mulaw[i * 160:(i + 1) * 160] for i in range(n)]


# --- the system --------------------------------------------------------------------------------------------


class Cluster:
    """A 3-node nats-server cluster with JetStream on loopback (one store dir per node)."""

    def __init__(self, base: Path, size: int = 3) -> None:
        self.base = base
        self.size = size
        self.client_ports = [natsserver.free_port() for _ in range(size)]
        self.route_ports = [natsserver.free_port() for _ in range(size)]
        self.procs: list[asyncio.subprocess.Process | None] = [None] * size

    @property
    def url(self) -> str:
        """Comma-separated client URLs of every node (nats-py's server list)."""
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.client_ports)

    async def start_node(self, i: int) -> None:
        """Start node ``i`` (again) with its own store dir; returns when its client port accepts connections."""
        store = self.base / f"n{i}"
        store.mkdir(parents=True, exist_ok=True)
        routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(self.route_ports) if j != i)
        cmd = [str(natsserver.find_binary()), "-a", "127.0.0.1", "-p", str(self.client_ports[i]), "-js",
               "-sd", str(store), "-n", f"n{i}", "--cluster_name", "drill",
               "--cluster", f"nats://127.0.0.1:{self.route_ports[i]}", "--routes", routes,
               "-l", str(store / "nats-server.log")]
        self.procs[i] = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL,
                                                             stdout=asyncio.subprocess.DEVNULL,
                                                             stderr=asyncio.subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.client_ports[i])
                writer.close()
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"cluster node n{i} did not listen")

    async def start(self) -> None:
        """Start every node and wait until JetStream has a meta leader."""
        for i in range(self.size):
            await self.start_node(i)
        nc = await nats.connect(servers=self.url.split(","), connect_timeout=5)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    await nc.jetstream().account_info()
                    return
                except Exception:
                    await asyncio.sleep(0.3)
            raise RuntimeError("the cluster's JetStream did not elect a leader")
        finally:
            await nc.close()

    async def kill(self, i: int) -> None:
        """kill -9 node ``i``."""
        proc = self.procs[i]
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()

    async def stop(self) -> None:
        """Stop every node (SIGTERM, SIGKILL after 10 s)."""
        for proc in self.procs:
            if proc is None or proc.returncode is not None:
                continue
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


class Stack:
    """The whole system as ``switchboard up`` runs it, on free ports in ``data_dir``.

    ``nats_url`` set: the services use that server (e.g. a :class:`Cluster`) instead of embedded NATS;
    ``js_replicas``: ``SWITCHBOARD_JS_REPLICAS`` for the streams.
    """

    def __init__(self, data_dir: Path, *, nats_url: str | None = None, js_replicas: int | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        ports = {name: natsserver.free_port() for name in ("nats", "gateway", "recorder", "analytics", "localmodel",
                                                     "session_metrics", "tools_metrics")}
        overrides: dict[str, Any] = {}
        if js_replicas:
            overrides["js_replicas"] = js_replicas
        self.settings: Settings = load_settings(
            data_dir=data_dir, nats_url=nats_url, nats_port=ports["nats"], gateway_port=ports["gateway"],
            recorder_port=ports["recorder"], analytics_port=ports["analytics"],
            localmodel_port=ports["localmodel"], session_metrics_port=ports["session_metrics"],
            tools_metrics_port=ports["tools_metrics"],
            agent=ROOT / "agents" / "receptionist.yaml", realtime_url=None, openai_api_key=None, **overrides)
        env = {"SWITCHBOARD_LOCALMODEL_PACING": "fast", **(extra_env or {})}
        if js_replicas:
            env["SWITCHBOARD_JS_REPLICAS"] = str(js_replicas)
        self.supervisor = Supervisor(self.settings, extra_env=env)
        self._set_seed = False

    @property
    def nats_url(self) -> str:
        """The URL (or comma-separated URLs) the services use."""
        return self.supervisor.nats_url

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.gateway_port}"

    @property
    def recorder_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.recorder_port}"

    async def __aenter__(self) -> Stack:
        try:
            await self.supervisor.start(ready_timeout=120)
        except BaseException:
            await self.supervisor.stop()
            raise
        if "operator" in self.supervisor.seeds and not os.environ.get("SWITCHBOARD_NATS_NKEY_SEED"):
            # a benchmark run (no test session's operator seed): the caller simulator connects with this one,
            # until this stack stops (the next stack has its own data dir and seeds)
            os.environ["SWITCHBOARD_NATS_NKEY_SEED"] = str(self.supervisor.seeds["operator"])
            self._set_seed = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.supervisor.stop()
        finally:
            if self._set_seed:
                os.environ.pop("SWITCHBOARD_NATS_NKEY_SEED", None)
                self._set_seed = False

    def pid(self, name: str) -> int:
        """The pid of service ``name`` (``nats`` for the embedded nats-server).

        Raises:
            LookupError: the process is not running.
        """
        sup = self.supervisor
        state = sup.nats_state if name == "nats" else sup.services[name]
        pid = state.pid
        if pid is None or not state.running:
            raise LookupError(f"{name} is not running")
        return int(pid)

    def signal(self, name: str, sig: signal.Signals) -> int:
        """Send ``sig`` to service ``name``; returns the pid signalled."""
        pid = self.pid(name)
        os.kill(pid, sig)
        return pid

    async def wait_restarted(self, name: str, old_pid: int, timeout: float = 90.0) -> None:
        """Wait until ``name`` runs under a new pid and is ready again.

        Raises:
            TimeoutError: not back within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(LookupError):
                state = self.supervisor.nats_state if name == "nats" else self.supervisor.services[name]
                if self.pid(name) != old_pid and state.ready:
                    return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{name} was not restarted within {timeout:.0f}s")


# --- load --------------------------------------------------------------------------------------------------


@dataclass
class EchoOutcome:
    """One echo call as its caller saw it."""

    run_id: str
    frames_sent: int = 0
    frames_back: int = 0
    closed_by_gateway: str | None = None
    error: str | None = None


class EchoLoad:
    """N concurrent echo calls through the gateway, each ``seconds`` long, started ``stagger`` s apart."""

    def __init__(self, gateway_url: str, calls: int, seconds: float, *, stagger: float = 0.05) -> None:
        self.gateway_url = gateway_url
        self.calls = calls
        self.seconds = seconds
        self.stagger = stagger
        self.outcomes = [EchoOutcome(secrets.token_hex(8)) for _ in range(calls)]
        self.frames = _tone_frames(1.0)

    async def _one(self, out: EchoOutcome, delay: float) -> None:
        await asyncio.sleep(delay)
        sid = "CA" + secrets.token_hex(16)
        try:
            url, params = await fetch_twiml(self.gateway_url, from_="+15550100" + f"{delay * 1000:04.0f}"[-4:],
                                            to="+15550199999", call_sid=sid)
            sock = await TwilioCallerSocket.connect(url)
        except (OSError, WebSocketException, httpx.HTTPError, ValueError) as exc:
            out.error = f"{type(exc).__name__}: {exc}"
            return
        await sock.start({**params, "agent": "echo", "run_id": out.run_id})

        async def receive() -> None:
            try:
                while True:
                    msg = await sock.receive()
                    if isinstance(msg, tw.OutboundMedia):
                        out.frames_back += 1
                    elif isinstance(msg, tw.Mark):
                        await sock.mark(msg.mark.name)
            except ConnectionClosed as exc:
                out.closed_by_gateway = f"{exc.rcvd.code if exc.rcvd else 1006}"

        reader = asyncio.create_task(receive())
        start = time.monotonic()
        n = int(self.seconds / FRAME_S)
        try:
            for i in range(n):
                if reader.done():
                    break
                await sock.media(self.frames[i % len(self.frames)])
                out.frames_sent += 1
                await asyncio.sleep(max(0.0, start + (i + 1) * FRAME_S - time.monotonic()))
            if not reader.done():
                await sock.stop()
        except (ConnectionClosed, OSError) as exc:
            out.error = out.error or f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), 5)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await reader

    async def run(self) -> list[EchoOutcome]:
        """Place every call; returns when all have ended."""
        await asyncio.gather(*(self._one(o, i * self.stagger) for i, o in enumerate(self.outcomes)))
        return self.outcomes


async def start_stop_calls(gateway_url: str, calls: int, *, agent: str = "receptionist") -> list[str]:
    """``calls`` calls that send ``start`` and at once ``stop`` (the caller hung up while it rang); run ids."""
    run_ids = [secrets.token_hex(8) for _ in range(calls)]

    async def one(run_id: str) -> None:
        url, params = await fetch_twiml(gateway_url, from_="+15550100000", to="+15550199999",
                                        call_sid="CA" + secrets.token_hex(16))
        sock = await TwilioCallerSocket.connect(url)
        await sock.start({**params, "agent": agent, "run_id": run_id})
        await sock.stop()

    sem = asyncio.Semaphore(20)

    async def bounded(run_id: str) -> None:
        async with sem:
            await one(run_id)

    await asyncio.gather(*(bounded(r) for r in run_ids))
    return run_ids


# --- accounting --------------------------------------------------------------------------------------------


@dataclass
class DrillResult:
    """The account of one drill (see the module docstring)."""

    name: str
    calls: int = 0
    completed: int = 0
    acked: int = 0
    archived: int = 0
    lost: int = 0
    duplicated: int = 0
    stuck: int = 0
    chains_failing: int = 0
    scenario: str = "-"
    late_events: int = 0
    """Server events logged more than 2 s after the call's ``ended`` (a model session left open)."""
    phantom: int = 0
    """Tool side effects after the caller was told the tool failed."""
    seconds: float = 0.0
    scenario_call: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def loss_free(self) -> bool:
        """Every loss figure is 0 and every call completed (ended in the archive)."""
        return (self.lost == self.duplicated == self.stuck == self.chains_failing == self.late_events
                == self.phantom == 0 and self.completed == self.calls)

    @property
    def ok(self) -> bool:
        """:attr:`loss_free` and the scenario (if any) passed."""
        return self.loss_free and self.scenario in ("-", "ok")

    def row(self) -> dict[str, object]:
        """The table row."""
        return {"drill": self.name, "calls": self.calls, "completed": self.completed, "acked": self.acked,
                "archived": self.archived, "lost": self.lost, "duplicated": self.duplicated, "stuck": self.stuck,
                "chains failing": self.chains_failing, "late events": self.late_events,
                "phantom": self.phantom, "scenario": self.scenario, "s": f"{self.seconds:.0f}"}


async def call_ids_for(nats_url: str, run_ids: set[str], timeout: float = 30.0, *,
                       options: dict[str, Any] | None = None) -> dict[str, str]:
    """run id → call id, from the ``call.*.started`` messages in the CALLS stream (``options``: credentials)."""
    found: dict[str, str] = {}
    nc = await nats.connect(servers=nats_url.split(","), connect_timeout=10, **(options or {}))
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(found) < len(run_ids):
            sub = await js.subscribe("call.*.started", ordered_consumer=True,
                                     config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
            try:
                while True:
                    try:
                        msg = await sub.next_msg(timeout=2)
                    except TimeoutError:
                        break
                    body = json.loads(msg.data)
                    run_id = (body.get("custom_parameters") or {}).get("run_id")
                    if run_id in run_ids:
                        found[run_id] = str(body["call_id"])
            finally:
                await sub.unsubscribe()
    finally:
        await nc.close()
    return found


async def _stream_ids(js: Any, stream: str, subject: str) -> dict[int, str]:
    """stream sequence → Nats-Msg-Id of every message on ``subject`` in ``stream`` (headers only)."""
    info = await js.stream_info(stream, subjects_filter=subject)
    expected = sum((info.state.subjects or {}).values())
    out: dict[int, str] = {}
    if expected == 0:
        return out
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True,
                             config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, headers_only=True))
    try:
        while len(out) < expected:
            msg = await sub.next_msg(timeout=10)
            out[msg.metadata.sequence.stream] = (msg.headers or {}).get("Nats-Msg-Id", "")
    finally:
        await sub.unsubscribe()
    return out


async def _archived(client: httpx.AsyncClient, recorder_url: str, call_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"{recorder_url}/calls/{call_id}/events", params={"body": "false"}, timeout=60)
    if r.status_code == 404:
        return []
    r.raise_for_status()
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


async def wait_settled(recorder_url: str, call_ids: list[str], timeout: float) -> None:
    """Wait until the archive shows every call ended (or ``timeout`` s pass)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            pending = 0
            for cid in call_ids:
                try:
                    r = await client.get(f"{recorder_url}/calls/{cid}", timeout=10)
                except httpx.HTTPError:
                    pending += 1
                    continue
                if r.status_code != 200 or r.json().get("status") in (None, "in_progress"):
                    pending += 1
            if pending == 0:
                return
            await asyncio.sleep(1.0)


async def account(stack: Stack, result: DrillResult, call_ids: list[str], *, settle_s: float = 60.0) -> None:
    """Fill ``result`` from JetStream and the archive for ``call_ids`` (after waiting for them to settle)."""
    await wait_settled(stack.recorder_url, call_ids, settle_s)
    await asyncio.sleep(2.0)  # the recorder's last batch after the final ended
    nc = await nats.connect(servers=stack.nats_url.split(","), connect_timeout=10,
                            **stack.supervisor.operator_options())
    try:
        js = nc.jetstream()
        async with httpx.AsyncClient() as client:
            for cid in call_ids:
                in_stream: dict[tuple[str, int], str] = {}
                for stream, subject in (("RT", f"rt.{cid}.>"), ("CALLS", f"call.{cid}.>")):
                    for seq, msg_id in (await _stream_ids(js, stream, subject)).items():
                        in_stream[(stream, seq)] = msg_id
                rows = await _archived(client, stack.recorder_url, cid)
                archived = {(r["stream"], int(r["stream_seq"])) for r in rows if r.get("stream_seq") is not None}
                ids = Counter(r["msg_id"] for r in rows if r.get("msg_id"))
                result.acked += len(in_stream)
                result.archived += len(rows)
                result.lost += len(set(in_stream) - archived)
                result.duplicated += sum(n - 1 for n in ids.values() if n > 1)
                call = await client.get(f"{stack.recorder_url}/calls/{cid}", timeout=10)
                status = call.json().get("status") if call.status_code == 200 else None
                if status in (None, "in_progress"):
                    result.stuck += 1
                else:
                    result.completed += 1
                audit = await client.get(f"{stack.recorder_url}/calls/{cid}/audit", timeout=60)
                if audit.status_code != 200 or not audit.json().get("ok", False):
                    result.chains_failing += 1
                    result.notes.append(f"{cid}: audit {audit.text[:300]}")
                result.late_events += _late_server_events(rows)
    finally:
        await nc.close()


def _late_server_events(rows: list[dict[str, Any]]) -> int:
    """Server events published more than 2 s after the call's ``ended`` (model left talking), by their publish
    time (``Switchboard-Ts``; JetStream's storage time when absent): a publish whose ack was lost with a cluster
    node is stored again by its retry seconds later, but it was said before the end."""

    def published(r: dict[str, Any]) -> int:
        return int(r.get("ts_ns") or r.get("stream_ts_ns") or 0)

    ended = [published(r) for r in rows if str(r.get("subject", "")).endswith(".ended")]
    if not ended:
        return 0
    limit = min(ended) + 2_000_000_000
    return sum(1 for r in rows if r.get("direction") == "server" and published(r) > limit)


# --- one drill ---------------------------------------------------------------------------------------------


Fault = Callable[[Stack], Awaitable[list[str]]]
"""Injects the fault while the load runs; returns notes for the table."""


async def run_drill(name: str, stack: Stack, *, calls: int, seconds: float, fault: Fault,
                    fault_after: float = 3.0, scenario: str | None = "book-appointment",
                    settle_s: float = 90.0) -> DrillResult:
    """Run N echo calls (+ one real scenario) on ``stack``, inject ``fault`` ``fault_after`` s in, account.

    The real scenario runs at 2× real time beside the echo calls; its expectations are checked against the log.
    """
    result = DrillResult(name, calls=calls + (1 if scenario else 0))
    started = time.monotonic()
    load = EchoLoad(stack.gateway_url, calls, seconds)
    sim: asyncio.Task[Any] | None = None
    if scenario:
        sim = asyncio.create_task(run_scenario(load_scenario(ROOT / "scenarios" / f"{scenario}.yaml"),
                                               gateway_url=stack.gateway_url, nats_url=stack.nats_url,
                                               speed=2.0, turn_timeout=90))
    load_task = asyncio.create_task(load.run())
    await asyncio.sleep(fault_after)
    result.notes.extend(await fault(stack))
    outcomes = await load_task
    ids = await call_ids_for(stack.nats_url, {o.run_id for o in outcomes},
                             options=stack.supervisor.operator_options())
    missing = [o for o in outcomes if o.run_id not in ids]
    result.stuck += len(missing)
    result.notes.extend(f"echo call {o.run_id}: no call.started ({o.error})" for o in missing[:3])
    call_ids = list(ids.values())
    if sim is not None:
        outcome = await sim
        result.scenario = "ok" if outcome.ok else "failed: " + "; ".join(outcome.failures)[:200]
        if outcome.call_id:
            result.scenario_call = outcome.call_id
            call_ids.append(outcome.call_id)
        else:
            result.stuck += 1
    await account(stack, result, call_ids, settle_s=settle_s)
    result.completed = min(result.completed, result.calls)
    result.seconds = time.monotonic() - started
    return result


async def in_progress_calls(recorder_url: str) -> list[str]:
    """Ids of the calls the archive shows in progress (newest 200)."""
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(f"{recorder_url}/calls", params={"limit": 200})
        r.raise_for_status()
        return [c["call_id"] for c in r.json() if c.get("status") == "in_progress"]


async def cancel_live_streams(recorder_url: str, call_ids: list[str], count: int) -> int:
    """Open ``count`` ``/calls/<id>/live/events`` streams and cancel each while it connects (a browser tab
    closed while the page still said "connecting…"); returns how many got a response before the cancel."""
    answered = 0
    async with httpx.AsyncClient(timeout=5) as client:

        async def one(cid: str) -> None:
            nonlocal answered
            with contextlib.suppress(httpx.HTTPError):
                async with client.stream("GET", f"{recorder_url}/calls/{cid}/live/events"):
                    answered += 1
                    await asyncio.sleep(0.05)

        ids = call_ids or ["CA" + "0" * 32]
        for i in range(count):
            task = asyncio.create_task(one(ids[i % len(ids)]))
            await asyncio.sleep(0.002 * (i % 4))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return answered


# --- the faults --------------------------------------------------------------------------------------------


def kill_recorder(times: int, every: float = 2.0) -> Fault:
    """kill -9 the recorder ``times`` times; each time wait until the supervisor has it ready again."""

    async def fault(stack: Stack) -> list[str]:
        for _ in range(times):
            pid = stack.signal("recorder", signal.SIGKILL)
            await stack.wait_restarted("recorder", pid)
            await asyncio.sleep(every)
        return [f"recorder killed {times}x"]

    return fault


def cancel_streams(count: int) -> Fault:
    """Open and cancel ``count`` live-event streams of the calls in progress."""

    async def fault(stack: Stack) -> list[str]:
        ids = await in_progress_calls(stack.recorder_url)
        answered = await cancel_live_streams(stack.recorder_url, ids, count)
        return [f"{count} live streams cancelled ({answered} answered first) over {len(ids)} calls"]

    return fault


def stop_nats(seconds: float) -> Fault:
    """SIGSTOP nats-server for ``seconds``, then SIGCONT."""

    async def fault(stack: Stack) -> list[str]:
        pid = stack.signal("nats", signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        return [f"nats-server stopped {seconds:.0f}s"]

    return fault


def kill_nats() -> Fault:
    """kill -9 the embedded nats-server; the supervisor restarts it on the same store."""

    async def fault(stack: Stack) -> list[str]:
        pid = stack.signal("nats", signal.SIGKILL)
        await stack.wait_restarted("nats", pid)
        return ["nats-server killed, restarted by the supervisor"]

    return fault


def kill_cluster_node(cluster: Cluster, node: int = 1) -> Fault:
    """kill -9 one node of a 3-node cluster (R3 streams keep quorum on the other two)."""

    async def fault(stack: Stack) -> list[str]:
        await cluster.kill(node)
        return [f"cluster node n{node} killed"]

    return fault


async def run_start_stop(stack: Stack, calls: int) -> DrillResult:
    """``calls`` calls that start and stop at once (receptionist agent, whose greeting would keep a model
    session talking if the session missed ``ended``); every call must end and no server event may be logged
    more than 2 s after its ``ended``."""
    result = DrillResult("start-stop", calls=calls)
    started = time.monotonic()
    run_ids = await start_stop_calls(stack.gateway_url, calls)
    ids = await call_ids_for(stack.nats_url, set(run_ids), options=stack.supervisor.operator_options())
    result.stuck += calls - len(ids)
    await asyncio.sleep(8.0)  # long enough for a greeting to be logged by a session that missed ``ended``
    await account(stack, result, list(ids.values()))
    result.seconds = time.monotonic() - started
    return result


async def _booked(database_url: str, call_id: str) -> int:
    """Appointments the tools database holds as booked by ``call_id``."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            row = await conn.execute(text("SELECT count(*) FROM appointments WHERE call_id = :c AND status = 'booked'"),
                                     {"c": call_id})
            return int(row.scalar_one())
    finally:
        await engine.dispose()


async def _successful_tool_calls(recorder_url: str, call_id: str, name: str) -> int:
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.get(f"{recorder_url}/calls/{call_id}/transcript")
        r.raise_for_status()
        return sum(1 for t in r.json().get("tool_calls", []) if t.get("name") == name and not t.get("error"))


async def run_tools_stall(stack: Stack, *, calls: int, seconds: float, stall_s: float = 20.0) -> DrillResult:
    """A second tools worker beside the supervised one; the supervised worker is SIGSTOPped 2 s into the calls
    (tool requests reaching it stay in flight) and resumed ``stall_s`` later, then killed with -9 (the supervisor
    restarts it). The scenario must still book through the healthy worker, and the stalled worker, resumed past
    the requests' deadlines, must book nothing: ``phantom`` counts appointments booked for the scenario's call
    beyond its successful ``book_appointment`` calls in the log."""
    log_file = (stack.settings.data_dir / "logs" / "tools-extra.log").open("ab")
    extra = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.tools",
                                                 stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                                 env=stack.supervisor.child_env())
    log_file.close()
    resumed: list[asyncio.Task[None]] = []

    async def fault(s: Stack) -> list[str]:
        pid = s.signal("tools", signal.SIGSTOP)

        async def resume_then_kill() -> None:
            await asyncio.sleep(stall_s)
            os.kill(pid, signal.SIGCONT)
            await asyncio.sleep(3.0)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await s.wait_restarted("tools", pid)

        resumed.append(asyncio.create_task(resume_then_kill()))
        return [f"tools worker stopped {stall_s:.0f}s, resumed, then killed -9"]

    try:
        await asyncio.sleep(3.0)  # the extra worker registers its endpoints
        result = await run_drill("tools-stall", stack, calls=calls, seconds=seconds, fault=fault, fault_after=2.0)
        await asyncio.gather(*resumed)
        await asyncio.sleep(3.0)
        for cid in [result.scenario_call] if result.scenario_call else []:
            booked = await _booked(stack.settings.effective_database_url, cid)
            ok = await _successful_tool_calls(stack.recorder_url, cid, "book_appointment")
            result.phantom += max(0, booked - ok)
        return result
    finally:
        extra.terminate()
        await extra.wait()

