"""Notice HTTP clients that vanish while an SSE handler sleeps or stalls.

aiohttp tells a handler nothing when its client leaves, unless the runner was built
with `handler_cancellation=True` (the test server is, `web.AppRunner` is not by
default), and a write fails only once something is written. So one task per app polls
the transports of the responses being streamed, and stops their channel within one
period of the disconnect, whichever way the app is run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

from aiohttp import web

PERIOD_S = 0.005  # well inside the ~20 ms within which the stats promise to see a disconnect


class Watchdog:
    """Calls `on_gone` once the connection of a watched request is lost."""

    def __init__(self, period_s: float = PERIOD_S) -> None:
        self._period_s = period_s
        self._watched: dict[int, tuple[web.BaseRequest, Callable[[], None]]] = {}
        self._next_id = 0
        self._wake = asyncio.Event()

    @contextmanager
    def watch(self, request: web.BaseRequest, on_gone: Callable[[], None]) -> Iterator[None]:
        self._next_id += 1
        key = self._next_id
        self._watched[key] = (request, on_gone)
        self._wake.set()
        try:
            yield
        finally:
            self._watched.pop(key, None)

    async def run(self) -> None:
        while True:
            if not self._watched:  # idle apps cost nothing
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(self._period_s)
            for key, (request, on_gone) in list(self._watched.items()):
                transport = request.transport
                if transport is None or transport.is_closing():
                    del self._watched[key]
                    on_gone()

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Run for the app's lifetime (`app.cleanup_ctx.append(watchdog.cleanup_ctx)`)."""
        task = asyncio.create_task(self.run(), name="mock_ai-watchdog")
        yield
        task.cancel()
        await asyncio.wait({task})  # unlike `await task`, lets our own cancellation through
