"""Iterate a provider's items and act once per event-loop pass: just before the iteration has to wait.

Upstream transports hand over the items of each network read (or WebSocket message) as
one batch, and several are often ready in one pass (a burst, a slow relay catching up,
websockets' queue of received messages). The pump adds their text to the stream log and
tells the readers once, when the next batch is not there yet: the tokens of one pass
reach each client in one write, in that same pass, with no task or timer in between
(corking, as a TCP stack does it). Knowing "not there yet" needs no guess: the next item's awaitable is
stepped once by hand; if it finishes, the item was ready; if it suspends, `flush` runs and
the suspension is handed on to the pump's task unchanged.
"""

from __future__ import annotations

from typing import AsyncIterator, Callable, TypeVar

T = TypeVar("T")


class EachPass(AsyncIterator[T]):
    __slots__ = ("_items", "_flush")

    def __init__(self, items: AsyncIterator[T], flush: Callable[[], None]) -> None:
        self._items = items
        self._flush = flush

    def __aiter__(self) -> EachPass[T]:
        return self

    def __anext__(self) -> _Next:
        return _Next(self._items.__anext__(), self._flush)


class _Next:
    """One `__anext__` of the wrapped iterator, with `flush()` run before it suspends."""

    __slots__ = ("_step", "_flush")

    def __init__(self, awaitable, flush: Callable[[], None]) -> None:
        self._step = awaitable.__await__()
        self._flush = flush

    def __await__(self):
        step = self._step
        try:
            blocked_on = step.send(None)
        except StopIteration as ready:  # the next item was there: no flush yet
            return ready.value
        except StopAsyncIteration:
            self._flush()
            raise
        self._flush()
        # The rest is `yield from step`, written out because the first step is already taken.
        while True:
            try:
                sent = yield blocked_on
            except BaseException as exc:  # cancellation (closing the provider) goes in unchanged
                try:
                    blocked_on = step.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    blocked_on = step.send(sent)
                except StopIteration as done:
                    return done.value
