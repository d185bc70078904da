"""An idle timeout re-armed by a counter, not by a timer per message.

`asyncio.timeout(...).reschedule()` on every chunk cancels and recreates a timer handle
per token; on the upstream hot path that was 9 % of the relay's CPU (aiohttp's per-read
`sock_read` timer the same). Here a reader only bumps `ticks`; a timer checks a few
times per period whether it moved, and when nothing arrived for `seconds` it cancels the
reading task, which `__aexit__` turns into TimeoutError (as asyncio.timeout does).
"""

from __future__ import annotations

import asyncio


class IdleTimeout:
    __slots__ = ("ticks", "_seconds", "_task", "_handle", "_seen", "_quiet_since", "_expired")

    def __init__(self, seconds: float) -> None:
        self.ticks = 0
        self._seconds = seconds
        self._expired = False

    async def __aenter__(self) -> "IdleTimeout":
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._seen, self._quiet_since = 0, loop.time()
        self._handle = loop.call_later(self._seconds / 4, self._check)
        return self

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.ticks != self._seen:
            self._seen, self._quiet_since = self.ticks, now
        elif now - self._quiet_since >= self._seconds:
            self._expired = True
            self._task.cancel()
            return
        self._handle = loop.call_later(self._seconds / 4, self._check)

    async def __aexit__(self, exc_type, exc, tb) -> None:
        self._handle.cancel()
        if self._expired and exc_type is asyncio.CancelledError and self._task.uncancel() == 0:
            raise TimeoutError(f"no data for {self._seconds:g}s") from exc
