"""One relayed answer: the numbered event log that every reader of the stream follows.

This is the channel between the upstream pump and the downstream pumps. The writer
(the upstream pump) never blocks and never drops text: pieces it pushes wait, unnumbered,
until a reader asks for more, and are then committed as *one* `delta`. A fast reader
thus sees one delta per provider token; a slow reader sees fewer, larger deltas, and the
memory a stream holds is its answer text plus the bounded replay log, whatever the
reader's speed. Readers name the last `seq` they have, so the same log serves the
first connection, a resume after a drop, and several readers at once, exactly once.

A reader idle at the head of the log may take new events in the writer's own loop pass
(`follow(direct=...)`): the event goes from the provider's socket to the client's in one
pass, with no task to wake. When its client's transport cannot take them at once, the
reader falls back to its task, where merging and flow control work as above.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

from .errors import MatrixError, RequestError, ResumeGap
from .events import TERMINAL, Delta, Done, Error, Event, Start, Trace


class Stream:
    __slots__ = ("id", "upstream", "combo", "_merge_at", "_max_events", "_events", "_first_seq", "_next_seq",
                 "_pending", "_terminal", "_waiters", "has_text", "pieces", "first_text_at", "started_at",
                 "owner", "_direct")  # no per-stream __dict__: idle streams are the memory budget

    def __init__(self, stream_id: str, upstream: str, combo: str, *,
                 merge_at: int = 256, max_events: int = 100_000) -> None:
        self.id = stream_id
        self.upstream = upstream
        self.combo = combo
        self._merge_at = merge_at
        self._max_events = max_events
        self._events: list[Event] = [Start(stream_id, 0, upstream, combo)]
        self._first_seq = 0  # seq of self._events[0]; rises when old events are trimmed
        self._next_seq = 1
        self._pending: list[str] = []
        self._terminal: Event | None = None
        self._waiters: list[asyncio.Future] = []
        self._direct: list[_Direct] = []  # idle readers that take events in the writer's pass
        self.has_text = False  # text came from the provider: a retry could duplicate it
        self.pieces = 0  # provider text pieces, for metrics: counted here, observed once at the end
        self.first_text_at: float | None = None
        self.started_at = asyncio.get_running_loop().time()
        self.owner = ""  # the client that started it: its owner id (matrix/identity.py)

    @classmethod
    def replica(cls, stream_id: str, upstream: str, combo: str, owner: str, events: list[Event],
                max_events: int) -> "Stream":
        """A copy of a log numbered elsewhere (an engine's), holding `events` and fed by `extend`."""
        stream = cls(stream_id, upstream, combo, max_events=max_events)
        stream.owner = owner
        stream._events = []
        stream._first_seq = stream._next_seq = events[0].seq if events else 0
        stream.extend(events)
        return stream

    def extend(self, events: list[Event]) -> None:
        """Append events already numbered (a replica's feed); ones held already are skipped."""
        for event in events:
            if event.seq < self._next_seq or self._terminal is not None:
                continue
            self._next_seq = event.seq  # a feed never skips; if it did, numbering follows the feed
            self._append(event)
            if isinstance(event, TERMINAL):
                self._terminal = event
        if self._waiters or self._direct:
            self._wake()

    # -- writer side (the upstream pump) --------------------------------------------

    def push(self, text: str) -> None:
        """Add a piece of text and tell the readers."""
        self.add(text)
        self.announce()

    def announce(self) -> None:
        """Tell the readers about the text added since: the pump calls it once per loop pass."""
        if self._waiters or self._direct:
            self._wake()

    def add(self, text: str) -> None:
        """Add a piece of text; readers hear of it at the next `announce`."""
        if not text or self._terminal is not None:
            return
        if not self.has_text:
            self.has_text = True
            self.first_text_at = asyncio.get_running_loop().time()
        self.pieces += 1
        pending = self._pending
        pending.append(text)
        if len(pending) > self._merge_at:  # keep a long backlog one string, not 10^5 objects
            self._pending = ["".join(pending)]

    def trace(self, direction: str, data: str) -> None:
        """Log a raw provider frame in order with the text it carries (opt-in, for learners)."""
        if self._terminal is None:
            self._commit_pending()
            self._append(Trace(self.id, self._next_seq, direction, data))  # type: ignore[arg-type]
            self._wake()

    def finish(self, reason: str, usage: dict[str, int] | None = None) -> None:
        if self._terminal is None:
            self._commit_pending()  # the text first, so the terminal event is numbered after it
            self._end(Done(self.id, self._next_seq, reason, usage))

    def fail(self, exc: MatrixError) -> None:
        if self._terminal is None:
            self._commit_pending()
            self._end(Error(self.id, self._next_seq, exc.code, exc.message, exc.retryable, exc.upstream_code))

    def _end(self, event: Event) -> None:
        self._terminal = event
        self._append(event)
        self._wake()

    # -- reader side (downstream pumps) ---------------------------------------------

    @property
    def finished(self) -> bool:
        return self._terminal is not None

    @property
    def terminal(self) -> Event | None:
        return self._terminal

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    def read(self, after: int) -> list[Event]:
        """Every event with seq > after, committing waiting text as one delta first."""
        if self._pending:
            self._commit_pending()
        if after < -1 or after > self.last_seq:
            raise RequestError(f"stream {self.id} has no seq {after} "
                               f"(last is {self.last_seq}; -1 means from the start)", code="invalid_seq")
        start = after + 1 - self._first_seq
        if start < 0:
            raise ResumeGap(f"stream {self.id}: events after seq {after} are no longer buffered "
                            f"(oldest is {self._first_seq})")
        return self._events[start:] if start < len(self._events) else []

    async def follow(self, after: int = -1, direct: Deliver | None = None) -> AsyncIterator[list[Event]]:
        """Batches of events after `after`, as they come, ending with the terminal event.

        With `direct`, events that come while this reader waits are first offered to
        `direct(batch)`, in the writer's pass; it returns how many it delivered, and the
        rest (none, when the client's transport is busy) come through this iterator.
        """
        loop = asyncio.get_running_loop()
        while True:
            batch = self.read(after)
            if batch:
                yield batch
                if batch[-1] is self._terminal:
                    return
                after = batch[-1].seq
                continue
            if self._terminal is not None:  # resumed after the end: nothing more will come
                return
            waiter = loop.create_future()
            reader = None if direct is None else _Direct(after, direct, waiter)
            if reader is None:
                self._waiters.append(waiter)
            else:
                self._direct.append(reader)
            try:
                await waiter
            except asyncio.CancelledError:  # leave no stale waiter behind (_offer drops done ones too)
                if reader is None and waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif reader is not None and reader in self._direct:
                    self._direct.remove(reader)
                raise
            if reader is not None:
                after = reader.after  # what it delivered directly is not read again

    # -- internals -------------------------------------------------------------------

    def _commit_pending(self) -> None:
        if not self._pending:
            return
        text = self._pending[0] if len(self._pending) == 1 else "".join(self._pending)
        self._pending = []
        self._append(Delta(self.id, self._next_seq, text))

    def _append(self, event: Event) -> None:
        self._events.append(event)
        self._next_seq += 1
        if len(self._events) > self._max_events:  # bounded replay: the oldest go first
            drop = len(self._events) - self._max_events
            del self._events[:drop]
            self._first_seq += drop

    def _wake(self) -> None:
        if self._direct:
            self._offer()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _offer(self) -> None:
        """Hand new events to the direct readers; wake the ones that could not take them all."""
        readers, self._direct = self._direct, []
        for reader in readers:
            if reader.waiter.done():  # its task was cancelled (the client left): nothing more goes to it
                continue
            try:
                batch = self.read(reader.after)
                taken = reader.deliver(batch) if batch else 0
            except Exception:  # one reader's trouble is its task's to meet and report, not the writer's
                reader.waiter.set_result(None)
                continue
            if taken:
                reader.after = batch[taken - 1].seq
            if taken == len(batch) and self._terminal is None:
                self._direct.append(reader)  # still idle at the head: it stays direct
            else:
                reader.waiter.set_result(None)


Deliver = Callable[[list[Event]], int]


class _Direct:
    """A reader waiting at the head of the log that can take events without its task."""

    __slots__ = ("after", "deliver", "waiter")

    def __init__(self, after: int, deliver: Deliver, waiter: asyncio.Future) -> None:
        self.after = after
        self.deliver = deliver
        self.waiter = waiter
