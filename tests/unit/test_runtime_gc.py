"""``shared.runtime.tune_gc``: a service process freezes its start-up heap out of garbage collection.

Run in a child process: frozen objects are never collected, so the test process itself is left alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import gc, json
    import services.session.service, services.tools.worker  # a service's start-up heap
    from shared.runtime import GC_GEN0_THRESHOLD, tune_gc
    before = gc.get_threshold()
    frozen = tune_gc()
    garbage = []
    garbage.append(garbage)  # a cycle made after start-up is still collected
    del garbage
    print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": frozen,
                      "count": gc.get_freeze_count(), "collected": gc.collect(), "gen0": GC_GEN0_THRESHOLD}))
""")


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], check=True, capture_output=True, text=True, timeout=120)
    result = json.loads(out.stdout)
    assert result["frozen"] == result["count"] > 10_000  # modules, SDK, pydantic models…
    assert result["before"][0] == 700 and result["after"] == [result["gen0"], *result["before"][1:]]
    assert result["collected"] >= 1  # new cyclic garbage is not frozen
