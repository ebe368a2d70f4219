"""Readiness that tells the truth: composable checks, evaluated in the background, served over HTTP and NATS.

A service builds one :class:`Readiness` from checks and starts it; every ``interval`` seconds it runs them all
(concurrently, each bounded by ``timeout``) and keeps the results. It is ready when the last round is recent
and every check passed. The checks:

- :func:`nats_connection`: the connection reports itself connected AND a PING/PONG round trip completes. The
  round trip matters: a connection whose read loop has died still reports ``is_connected`` (nats-py only
  notices at its stale-connection check, minutes later).
- :func:`jetstream_consumer`: a durable JetStream consumer the service owns is not stalled — asked through
  ``consumer_info`` each round (https://docs.nats.io/nats-concepts/jetstream/consumers): when it has messages
  pending (``num_pending``) or delivered and unacknowledged (``num_ack_pending``) and neither its delivered nor
  its ack-floor stream sequence has moved for ``stall_s`` (default 10) seconds, it fails.
- :func:`database`: ``SELECT 1`` answers within the timeout.
- :func:`flag`: a plain predicate (the gateway still accepting calls, the consumers bound).

HTTP services serve it on ``/readyz`` (:func:`shared.http.add_ops_routes`); services without HTTP answer
requests on ``switchboard.ready.<service>`` (:func:`answer_on_bus`, :func:`shared.subjects.ready`), which is
what ``switchboard up`` asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.subscription import Subscription
    from nats.js import JetStreamContext
    from sqlalchemy.ext.asyncio import AsyncEngine

    from shared.bus import Bus, Envelope

__all__ = ["STALL_S", "Check", "CheckResult", "Readiness", "answer_on_bus", "database", "flag",
           "jetstream_consumer", "nats_connection"]

log = logging.getLogger(__name__)

STALL_S = 10.0
"""Seconds a consumer with a backlog may go without progress before it counts as stalled."""
PONG_WAIT_S = 60
"""How long one round-trip probe may wait for its PONG in the background (the check itself waits ``timeout``)."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's outcome: ``name``, ``ok`` and a human-readable ``detail``."""

    name: str
    ok: bool
    detail: str = ""


Check = Callable[[], Awaitable[CheckResult]]
"""``async check() -> CheckResult``; may raise (the exception counts as a failed check)."""


class Readiness:
    """Runs ``checks`` every ``interval`` s (each bounded by ``timeout`` s) and keeps the last results.

    :attr:`ready` is True only when a round finished within the last ``3 * interval + timeout`` seconds and
    every check passed (a stuck event loop or a stopped loop is not ready).
    """

    def __init__(self, checks: Iterable[Check] = (), *, interval: float = 1.0, timeout: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.checks = list(checks)
        self.interval = interval
        self.timeout = timeout
        self.results: list[CheckResult] = []
        """The last round's results (empty before the first round)."""
        self._clock = clock
        self._evaluated_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._was_ready: bool | None = None

    def add(self, check: Check) -> None:
        """Add a check (from the next round on)."""
        self.checks.append(check)

    async def _run_one(self, check: Check) -> CheckResult:
        name = getattr(check, "check_name", getattr(check, "__name__", "check"))
        try:
            return await asyncio.wait_for(check(), self.timeout)
        except TimeoutError:
            return CheckResult(name, False, f"no answer within {self.timeout:g} s")
        except Exception as exc:
            return CheckResult(name, False, f"{type(exc).__name__}: {exc}")

    async def evaluate(self) -> list[CheckResult]:
        """Run every check once (concurrently); store and return the results."""
        self.results = list(await asyncio.gather(*(self._run_one(c) for c in self.checks)))
        self._evaluated_at = self._clock()
        ready = self.ready
        if ready != self._was_ready:
            failing = "; ".join(f"{r.name}: {r.detail}" for r in self.results if not r.ok)
            log.log(logging.INFO if ready else logging.WARNING, "readiness: %s%s",
                    "ready" if ready else "NOT ready", "" if ready else f" ({failing})")
            self._was_ready = ready
        return self.results

    @property
    def ready(self) -> bool:
        """Every check passed in a recent round."""
        if self._evaluated_at is None or self._clock() - self._evaluated_at > 3 * self.interval + self.timeout:
            return False
        return all(r.ok for r in self.results)

    def report(self) -> dict[str, Any]:
        """``{"status": "ready"|"not_ready"|"starting", "checks": [{"name", "ok", "detail"}, …]}``."""
        status = "starting" if self._evaluated_at is None else ("ready" if self.ready else "not_ready")
        return {"status": status, "checks": [{"name": r.name, "ok": r.ok, "detail": r.detail}
                                             for r in self.results]}

    def start(self, *, until: Callable[[], bool] | None = None) -> None:
        """Evaluate in a background task every ``interval`` s until :meth:`stop`, or until ``until()`` is
        true (e.g. the service's connection is closed). Idempotent."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(until), name="readiness")

    async def stop(self) -> None:
        """Stop the background evaluation."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self, until: Callable[[], bool] | None) -> None:
        while until is None or not until():
            await self.evaluate()
            await asyncio.sleep(self.interval)


def _named(name: str, check: Check) -> Check:
    check.check_name = name  # type: ignore[attr-defined]  # read by Readiness._run_one for timeouts
    return check


def flag(name: str, predicate: Callable[[], bool], detail: str = "") -> Check:
    """A check that passes while ``predicate()`` is true (``detail`` explains a failure)."""
    async def check() -> CheckResult:
        ok = predicate()
        return CheckResult(name, ok, "" if ok else detail)

    return _named(name, check)


def nats_connection(nc: NATS, *, timeout: float = 2.0, name: str = "nats") -> Check:
    """Connected, and a PING/PONG round trip completes within ``timeout`` s.

    The round trip runs shielded, one at a time, for up to :data:`PONG_WAIT_S` s: a timed-out check never
    cancels its PING's future (a PONG on a cancelled future ends nats-py's read loop, see
    :mod:`shared.bus.wire`); the next round waits on the same probe, unless the connection has reconnected
    since (nats-py forgets the PINGs of the old connection), then a new probe starts.
    """
    probe: list[asyncio.Future[float]] = []
    probe_reconnects = [0]

    def _seen(task: asyncio.Future[float]) -> None:
        if not task.cancelled():
            task.exception()

    async def check() -> CheckResult:
        if not nc.is_connected:
            state = "closed" if nc.is_closed else "reconnecting" if nc.is_reconnecting else "not connected"
            return CheckResult(name, False, state)
        reconnects = nc.stats["reconnects"]
        # a probe from before a reconnect waits for a PONG that will never come (nats-py drops its PINGs)
        if not probe or probe[0].done() or probe_reconnects[0] != reconnects:
            probe[:] = [asyncio.ensure_future(nc.rtt(PONG_WAIT_S))]
            probe[0].add_done_callback(_seen)
            probe_reconnects[0] = reconnects
        try:
            rtt = await asyncio.wait_for(asyncio.shield(probe[0]), timeout)
        except TimeoutError:
            return CheckResult(name, False, f"no PONG from the server within {timeout:g} s")
        return CheckResult(name, True, f"round trip {rtt * 1000:.1f} ms")

    return _named(name, check)


def jetstream_consumer(js: JetStreamContext, stream: str, durable: str, *, stall_s: float = STALL_S,
                       timeout: float = 2.0, clock: Callable[[], float] = time.monotonic) -> Check:
    """The durable ``durable`` on ``stream`` exists and is not stalled (see the module docstring).

    Progress is a change of the consumer's delivered or ack-floor stream sequence, or an empty backlog (a
    backlog first seen now starts the clock now); the check fails once the backlog has gone ``stall_s``
    seconds without progress. Raises (a failed check for :class:`Readiness`) when the consumer does not
    exist (``nats.js.errors.NotFoundError``) or JetStream does not answer within ``timeout`` s.
    """
    name = f"consumer {stream}/{durable}"
    last: list[Any] = [None, clock(), True]  # [(delivered, ack floor), when it last moved, backlog was empty]

    async def check() -> CheckResult:
        info = await js.consumer_info(stream, durable, timeout=timeout)
        marker = (info.delivered.stream_seq if info.delivered else 0,
                  info.ack_floor.stream_seq if info.ack_floor else 0)
        pending, unacked = info.num_pending or 0, info.num_ack_pending or 0
        now = clock()
        empty = not (pending or unacked)
        if marker != last[0] or empty or last[2]:  # moved, idle, or the backlog is new since the last look
            last[:2] = [marker, now]
        last[2] = empty
        still = now - last[1]
        detail = f"{pending} pending, {unacked} unacknowledged, ack floor {marker[1]}"
        if still >= stall_s:
            return CheckResult(name, False, f"{detail}; no progress for {still:.0f} s")
        return CheckResult(name, True, detail)

    return _named(name, check)


def database(engine: AsyncEngine, *, timeout: float = 2.0, name: str = "database") -> Check:
    """``SELECT 1`` on ``engine`` answers within ``timeout`` s."""
    from sqlalchemy import text

    async def check() -> CheckResult:
        started = time.perf_counter()
        async with asyncio.timeout(timeout), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return CheckResult(name, True, f"SELECT 1 in {(time.perf_counter() - started) * 1000:.1f} ms")

    return _named(name, check)


async def answer_on_bus(bus: Bus, service: str, readiness: Readiness) -> Subscription:
    """Answer requests on ``switchboard.ready.<service>``: the :meth:`Readiness.report` when ready, else a
    nats.micro-style error 503 whose message names the failing checks. Returns the subscription
    (unsubscribe to stop answering)."""
    from shared import subjects

    async def handler(env: Envelope) -> None:
        if env.reply is None:
            return
        if readiness.ready:
            await env.respond(readiness.report())
            return
        failing = "; ".join(f"{r['name']}: {r['detail']}" for r in readiness.report()["checks"] if not r["ok"])
        await env.respond_error(503, failing or "starting")

    return await bus.subscribe(subjects.ready(service), handler, dedupe=False, traced=False)
