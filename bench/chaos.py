"""Fault drills, long versions: the whole system under concurrent echo calls plus one real scenario while a
fault is injected; prints one row per drill (see ``tests/drills_support.py`` for what each column counts).

Drills (``--drills``, comma-separated; default all):

- ``recorder-kill``: kill -9 the recorder 5 times during the calls (the supervisor restarts it);
- ``live-cancel``: open and cancel 500 ``/calls/<id>/live/events`` streams during the calls;
- ``nats-stop``: SIGSTOP nats-server for 5 s;
- ``nats-kill``: kill -9 the embedded nats-server (the supervisor restarts it on the same store);
- ``cluster-node``: a 3-node NATS cluster on loopback with R3 streams, one node killed mid-call;
- ``tools-stall``: a second tools worker; the supervised one SIGSTOPped with tool calls in flight, resumed past
  their deadlines, then kill -9 (phantom side effects: bookings beyond the log's successful tool calls);
- ``start-stop``: 200 calls that start and stop at once (every model session must close).

Every loss column (lost, duplicated, stuck, chains failing, late events, phantom) must be 0.

Run: ``.venv/bin/python bench/chaos.py [--calls 20] [--seconds 30] [--drills recorder-kill,...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import drills_support as drills  # noqa: E402

NAMES = ("recorder-kill", "live-cancel", "nats-stop", "nats-kill", "cluster-node", "tools-stall", "start-stop")


async def one(name: str, calls: int, seconds: float, start_stop: int) -> drills.DrillResult:
    """Run drill ``name`` on a fresh system."""
    with tempfile.TemporaryDirectory(prefix=f"chaos-{name}-") as tmp:
        base = Path(tmp)
        if name == "cluster-node":
            cluster = drills.Cluster(base / "cluster")
            await cluster.start()
            try:
                async with drills.Stack(base / "data", nats_url=cluster.url, js_replicas=3) as stack:
                    return await drills.run_drill(name, stack, calls=calls, seconds=seconds,
                                                  fault=drills.kill_cluster_node(cluster), fault_after=seconds / 3)
            finally:
                await cluster.stop()
        async with drills.Stack(base / "data") as stack:
            if name == "tools-stall":
                return await drills.run_tools_stall(stack, calls=calls, seconds=seconds)
            if name == "start-stop":
                return await drills.run_start_stop(stack, start_stop)
            fault = {
                "recorder-kill": drills.kill_recorder(5),
                "live-cancel": drills.cancel_streams(500),
                "nats-stop": drills.stop_nats(5.0),
                "nats-kill": drills.kill_nats(),
            }[name]
            return await drills.run_drill(name, stack, calls=calls, seconds=seconds, fault=fault,
                                          fault_after=min(5.0, seconds / 4))


def table(results: list[drills.DrillResult]) -> str:
    """A Markdown table of the results."""
    rows = [r.row() for r in results]
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="concurrent echo calls per drill")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each echo call")
    parser.add_argument("--start-stop", type=int, default=200, help="calls in the start-stop drill")
    parser.add_argument("--drills", default=",".join(NAMES))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = []
    for name in [n.strip() for n in args.drills.split(",") if n.strip()]:
        if name not in NAMES:
            parser.error(f"unknown drill {name!r}; known: {', '.join(NAMES)}")
        t0 = time.monotonic()
        result = await one(name, args.calls, args.seconds, args.start_stop)
        print(f"{name}: {'ok' if result.ok else 'FAILED'} in {time.monotonic() - t0:.0f}s "
              f"{'; '.join(result.notes)[:400]}", flush=True)
        results.append(result)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([r.row() | {"notes": r.notes} for r in results], indent=2))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
