"""A CPU meter over one window: each role's processes, the bench itself, and the whole box."""

from __future__ import annotations

import os
import time

from .sysstat import box_jiffies, busy_pct, cpu_ns, cpu_ns_of


class Meter:
    def __init__(self, pids: dict[str, list[int]]) -> None:
        self._pids = pids  # role -> PIDs, e.g. {"relay": [..], "nginx": [master, worker]}

    def _read(self) -> tuple[dict[str, int], int, tuple[int, int], int]:
        return ({role: cpu_ns_of(pids) for role, pids in self._pids.items()}, cpu_ns(os.getpid()),
                box_jiffies(), time.monotonic_ns())

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

    def cpu(self, role: str) -> int | None:
        """On-CPU ns of a role's processes over the window (None if the role has none)."""
        if role not in self._pids:
            return None
        return self._after[0][role] - self._before[0][role]

    def pct(self, role: str) -> float | None:
        """A role's CPU as % of one core."""
        cpu = self.cpu(role)
        return None if cpu is None else 100.0 * cpu / self.ns

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
        return self.box_pct - self.own_pct - sum(self.pct(role) or 0.0 for role in self._pids)
