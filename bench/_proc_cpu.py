"""CPU time of another process, for the benchmarks that run a service as its own process (Linux ``/proc``).

``/proc/<pid>/stat``'s utime + stime count in clock ticks (10 ms at ``SC_CLK_TCK`` = 100): a 5,000-frame round
at ~40 µs per frame is ~20 ticks, so one tick more or less moves the figure by 5 %. The scheduler's own
accounting, ``/proc/<pid>/task/<tid>/schedstat`` (first field: nanoseconds on a CPU,
https://docs.kernel.org/scheduler/sched-stats.html), has nanosecond resolution; it is kept per thread, so the
process figure is the sum over its threads (the event loop, the span exporter's thread, any executor thread).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["context_switches", "cpu_seconds", "cpu_seconds_ticks"]


def cpu_seconds(pid: int) -> float:
    """Seconds process ``pid`` has spent on a CPU so far, summed over its live threads (schedstat, ns).

    Threads that have exited no longer count, so compare readings taken while the same threads live; falls back
    to :func:`cpu_seconds_ticks` where the kernel has no schedstat.

    Raises:
        FileNotFoundError: no process ``pid``.
    """
    total_ns = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        for task in tasks:
            try:
                total_ns += int((task / "schedstat").read_text().split()[0])
            except FileNotFoundError:  # the thread exited between listing and reading
                continue
    except (FileNotFoundError, PermissionError, ValueError, IndexError):
        return cpu_seconds_ticks(pid)
    if total_ns == 0:  # schedstat present but not kept by this kernel
        return cpu_seconds_ticks(pid)
    return total_ns / 1e9


def cpu_seconds_ticks(pid: int) -> float:
    """utime + stime of ``pid`` in seconds from ``/proc/<pid>/stat`` (clock-tick resolution, all threads ever).

    Raises:
        FileNotFoundError: no process ``pid``.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def context_switches(pid: int) -> tuple[int, int]:
    """``(voluntary, involuntary)`` context switches of process ``pid`` so far, summed over its live threads
    (``/proc/<pid>/task/*/status``). An event loop that sleeps in ``epoll_wait`` between messages switches out
    voluntarily once per wait, so the voluntary count over a window is its wakeups from idle; involuntary ones
    are preemptions by other processes.

    Raises:
        FileNotFoundError: no process ``pid``.
    """
    voluntary = involuntary = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            lines = (task / "status").read_text().splitlines()
        except FileNotFoundError:  # the thread exited between listing and reading
            continue
        for line in lines:
            if line.startswith("voluntary_ctxt_switches:"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                involuntary += int(line.split()[1])
    return voluntary, involuntary
