"""What the kernel says about processes and the box: on-CPU ns, RSS, busy jiffies, a speed probe."""

from __future__ import annotations

import os
import time
from pathlib import Path


def cpu_ns(pid: int) -> int:
    """On-CPU nanoseconds of every live thread of `pid` (first field of each task's schedstat).

    utime/stime only tick every 10 ms; schedstat is exact (docs/measuring.md).
    """
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split(None, 1)[0])
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            pass  # the thread ended between listdir and open
    return total


def cpu_ns_of(pids: list[int]) -> int:
    return sum(cpu_ns(pid) for pid in pids)


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            pages = int(f.read().split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def rss_kib_of(pids: list[int]) -> int:
    return sum(rss_kib(pid) for pid in pids)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (nginx's workers)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(c) for c in task.read_text().split()]
        except FileNotFoundError:
            pass
    return out


def box_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from the `cpu` line of /proc/stat."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def busy_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Whole-box busy % over an interval, in % of ONE core (so 2 cores → up to 200)."""
    busy, total = after[0] - before[0], after[1] - before[1]
    return 100.0 * busy / total * os.cpu_count() if total > 0 else 0.0


def noise_probe_ms(n: int = 300_000, tries: int = 3) -> float:
    """Time a fixed pure-Python loop (fastest of `tries`): a slow host shows here before it shows as a regression."""
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        acc = 0
        for i in range(n):
            acc += i & 7
        best = min(best, time.perf_counter() - start)
    return best * 1000.0
