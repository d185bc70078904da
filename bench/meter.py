"""A CPU meter over one window: each role's processes, the bench itself, and the whole box."""

from __future__ import annotations

import os
import time

from .sysstat import box_jiffies, busy_pct, cpu_ns


class Meter:
    def __init__(self, pids: dict[str, list[int]]) -> None:
        # role -> PIDs, e.g. {"relay": [..], "nginx": [master, worker]}. Roles may share a PID (an
        # @redis relay's role holds redis-server, so does `redis`): each PID is read, and counted, once.
        self._pids = pids
        self._all = sorted({pid for pids in pids.values() for pid in pids})

    def _read(self) -> tuple[dict[int, int], int, tuple[int, int], int]:
        return ({pid: cpu_ns(pid) for pid in self._all}, cpu_ns(os.getpid()), box_jiffies(), time.monotonic_ns())

    def start(self) -> Meter:
        self._before = self._read()
        return self

    def stop(self) -> Meter:
        self._after = self._read()
        return self

    @property
    def ns(self) -> int:
        """Wall-clock length of the window."""
        return self._after[3] - self._before[3]

    def _spent(self, pid: int) -> int:
        return max(0, self._after[0][pid] - self._before[0][pid])  # a process that ended reads 0 afterwards

    def cpu(self, role: str) -> int | None:
        """On-CPU ns of a role's processes over the window (None if the role has none)."""
        if role not in self._pids:
            return None
        return sum(self._spent(pid) for pid in self._pids[role])

    def pct(self, role: str) -> float | None:
        """A role's CPU as % of one core."""
        cpu = self.cpu(role)
        return None if cpu is None else 100.0 * cpu / self.ns

    def pid_pct(self, pid: int) -> float:
        """One metered process's CPU as % of one core."""
        return 100.0 * self._spent(pid) / self.ns

    def per_token_us(self, role: str, tokens: int) -> float | None:
        cpu = self.cpu(role)
        return None if cpu is None or not tokens else cpu / 1e3 / tokens

    @property
    def own_pct(self) -> float:
        return 100.0 * (self._after[1] - self._before[1]) / self.ns

    @property
    def box_pct(self) -> float:
        """Whole-box busy, % of one core (up to 100 × cores)."""
        return busy_pct(self._before[2], self._after[2])

    @property
    def other_pct(self) -> float:
        """What the box spent beyond the metered processes and the bench: other work, unattributed softirq."""
        return self.box_pct - self.own_pct - 100.0 * sum(self._spent(pid) for pid in self._all) / self.ns
