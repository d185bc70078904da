"""Load shedding: refuse new streams at once while this relay is over its limits, so the ones it has keep their latency.

Two signals, each off at 0: the provider connections live on this relay against
`[limits] max_active_streams`, and the event loop's lag against `max_loop_lag_ms`. The lag
comes from a timer that asks to run every `TICK_S` and notes how late it ran; one late
tick is a garbage collection or a big write, so the relay sheds only when each of the
last `WINDOW` ticks was late by more than the limit (a loop that stays behind: every
token of every stream is that much later), and admits again as soon as one is on time.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable

from .config import LimitsConfig
from .errors import Overloaded

TICK_S = 0.02
WINDOW = 5


class Shedder:
    __slots__ = ("_max_streams", "_max_lag_s", "_retry_after_s", "_streams", "_late", "_handle", "_due")

    def __init__(self, limits: LimitsConfig, streams: Callable[[], int]) -> None:
        self._max_streams = limits.max_active_streams
        self._max_lag_s = limits.max_loop_lag_ms / 1000
        self._retry_after_s = limits.overload_retry_after_s
        self._streams = streams
        self._late: deque[float] = deque([0.0] * WINDOW, maxlen=WINDOW)  # the last ticks' lateness, seconds
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        """Start measuring the loop's lag (the running loop's; a timer, not a task)."""
        if self._max_lag_s > 0 and self._handle is None:
            self._schedule(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    @property
    def lag_s(self) -> float:
        """How late the loop ran its latest tick (0 while lag is not measured)."""
        return self._late[-1]

    def reason(self) -> str | None:
        """None while new streams are admitted, else why not."""
        if self._max_streams and (live := self._streams()) >= self._max_streams:
            return f"{live} streams are live on this relay (limits.max_active_streams = {self._max_streams})"
        if self._max_lag_s and min(self._late) > self._max_lag_s:
            return (f"the event loop is {min(self._late) * 1000:.0f} ms behind "
                    f"(limits.max_loop_lag_ms = {self._max_lag_s * 1000:g})")
        return None

    def check(self) -> None:
        """Refuse a new stream with 503 `overloaded` while shedding."""
        if (why := self.reason()) is not None:
            raise Overloaded(f"this relay is overloaded: {why}; try again in {self._retry_after_s} s "
                             "or on another relay", retry_after_s=self._retry_after_s)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = loop.time() + TICK_S
        self._handle = loop.call_at(self._due, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._late.append(max(0.0, loop.time() - self._due))
        self._schedule(loop)
