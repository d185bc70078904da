"""Many streams launched together: opened a few at a time, counted when open, awaited with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp

from .clients import Tally
from .lab import Route

OPEN_AT_ONCE = 16  # connection attempts in flight: a burst of 200 SYNs would overflow the listen backlog


class Fleet:
    """Launch streams, know when all are open (or failed), then wait for all to end."""

    def __init__(self, session: aiohttp.ClientSession, open_at_once: int = OPEN_AT_ONCE) -> None:
        self.session = session
        self.gate = asyncio.Semaphore(open_at_once)
        self.ready = 0          # streams open, or failed before opening
        self.opened = 0         # streams whose connection (both hops, for the relay) is up
        self.flights: list[tuple[Route, Tally, asyncio.Task]] = []

    def launch(self, route: Route, text: Callable[[], str], expected: int) -> Tally:
        """Start one stream; `text()` is called when its turn to connect comes (for a timed first token)."""
        tally = Tally(expected)
        task = asyncio.get_running_loop().create_task(self._one(route, text, tally))
        self.flights.append((route, tally, task))
        return tally

    async def _one(self, route: Route, text: Callable[[], str], tally: Tally) -> None:
        await self.gate.acquire()
        released = False

        def opened() -> None:
            nonlocal released
            if not released:
                released = True
                self.opened += 1
                self.ready += 1
                self.gate.release()
        try:
            await route.run(self.session, text(), tally, opened)
        except asyncio.CancelledError:
            tally.error = tally.error or "timed out"
            raise
        except Exception as exc:  # a failed stream is a result, not a crash of the bench
            tally.error = tally.error or f"{type(exc).__name__}: {exc}"[:200]
        finally:
            if not released:
                released = True
                self.ready += 1
                self.gate.release()

    async def wait_open(self, deadline_ns: int) -> bool:
        """Wait until every stream is open or failed, or the deadline; True if all opened in time."""
        while self.ready < len(self.flights) and time.monotonic_ns() < deadline_ns:
            await asyncio.sleep(0.01)
        return self.opened == len(self.flights)

    async def finish(self, timeout_s: float) -> None:
        """Wait for every stream to end; cancel what is still running after `timeout_s`."""
        tasks = [task for _, _, task in self.flights]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def tallies(self, role: str) -> list[Tally]:
        return [tally for route, tally, _ in self.flights if route.role == role]
