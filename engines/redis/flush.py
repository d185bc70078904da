"""The owner's write path: text the pump pushes is merged and appended to Redis, every dirty stream in one round trip.

Readers, on this relay too, see an event only once Redis holds it: a client can then resume
on any relay, even after this one dies, without missing or repeating anything.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from matrix.events import Event
from matrix.stream import Stream

from .redis_errors import cancel_requested, unless_cancelled



class Source(Stream):
    """The stream a pump writes on its owning relay; `log` holds what Redis has, for readers here."""

    __slots__ = ("log", "flushed", "dead", "renew_at", "_mark")

    def announce(self) -> None:  # the pump's text of one loop pass
        Stream.announce(self)
        self._mark(self)

    def _wake(self) -> None:  # a trace, the terminal event
        Stream._wake(self)
        self._mark(self)


Append = Callable[[list[tuple[Source, list[Event]]]], Awaitable[list]]
Settle = Callable[[Source, list[Event], object], None]


class Flusher:
    """Group commit: while one write is in flight, what arrives waits and goes in the next."""

    def __init__(self, append: Append, settle: Settle, interval_s: float, trouble: Callable[[Exception], None]) -> None:
        self._append = append
        self._settle = settle
        self._interval = interval_s
        self._trouble = trouble
        self._dirty: dict[str, Source] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.closing = False

    def mark(self, source: Source) -> None:
        self._dirty[source.id] = source
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.05
        while not self.closing and not cancel_requested():
            await self._wake.wait()
            self._wake.clear()
            self._idle.clear()
            started = loop.time()
            batch, self._dirty = self._dirty, {}
            work = [(s, events) for s in batch.values() if not s.dead and (events := s.read(s.flushed))]
            if work:
                try:
                    results = await self._append(work)
                except Exception as exc:  # noqa: BLE001  Redis down, or an error reply: retry, never die
                    unless_cancelled(exc)
                    self._trouble(exc)
                    for source, _ in work:  # nothing is lost: the same events (and newer) go next time
                        self._dirty.setdefault(source.id, source)
                    self._wake.set()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
                    continue
                backoff = 0.05
                for (source, events), result in zip(work, results):
                    self._settle(source, events, result)
            if not self._dirty:
                self._idle.set()
            if self._interval and (delay := started + self._interval - loop.time()) > 0:
                await asyncio.sleep(delay)  # bounded write rate: text arriving meanwhile merges

    @property
    def drained(self) -> bool:
        """Everything pushed so far is in Redis."""
        return not self._dirty and self._idle.is_set()

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout`) until everything pushed so far is in Redis."""
        try:
            async with asyncio.timeout(timeout):
                while not self.drained:
                    await self._idle.wait()
                    await asyncio.sleep(0)
        except TimeoutError:
            pass
