"""The relay: starts streams, pumps each provider's items into its Stream, stops them.

Each stream has one upstream pump task, owned here rather than by the client's request,
so that a client which drops can resume while the provider keeps going for
`disconnect_grace_s`. Downstream handlers follow a stream as readers; when the last
reader leaves an unfinished stream the grace timer starts, and when it fires (or on an
explicit stop) the pump is cancelled, which closes the provider connection. Where the
stream's log, readers and limits live is the engine's business (matrix/engine.py); a
stream that names a conversation begins its turn before the pump starts and saves its
answer before its terminal event (matrix/conversations.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from contextlib import contextmanager
from typing import Iterator

from .config import Settings
from .conversations import Conversations
from .errors import (MatrixError, RequestError, ShuttingDown, StoreUnavailable, StreamNotFound, UpstreamError,
                     UpstreamProtocolError)
from .identity import may_touch
from .limits import check_request
from .engine import Engine, MemoryEngine
from .events import Error, Event
from .logs import event
from .metrics import Metrics
from .passes import EachPass
from .overload import Shedder
from .request import ChatRequest
from .store import Store, Turn
from .stream import Stream
from .provider import Finish, Upstream

log = logging.getLogger("matrix.relay")


class Relay:
    def __init__(self, settings: Settings, upstreams: dict[str, Upstream], engine: Engine | None = None,
                 store: Store | None = None) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self.engine: Engine = engine or MemoryEngine(settings)
        self._pumps: dict[str, asyncio.Task] = {}
        self._stopping = False
        self.metrics = Metrics()
        self.conversations = (None if store is None else Conversations(
            store, settings.store.timeout_s, lambda result: self.metrics.answers_saved.labels(result).inc()))
        self.engine.bind(self._stop_pump, None if self.conversations is None else self.conversations.lost)
        self.shedder = Shedder(settings.limits, lambda: len(self._pumps))
        self.metrics.watch_load(self.shedder)

    # -- starting and stopping --------------------------------------------------------

    async def start(self, chat: ChatRequest, downstream: str, client: str = "") -> Stream:
        """Create the stream and start its upstream pump; refuse before anything runs.

        Returns the log its readers follow."""
        if self._stopping:
            raise ShuttingDown("the relay is shutting down")
        self.shedder.check()  # first: a refusal under overload must cost next to nothing
        check_request(chat, self.settings.limits)
        name = chat.upstream or self.settings.default_upstream()
        upstream = self.upstreams.get(name)
        if upstream is None:
            raise RequestError(f"unknown upstream {name!r}; configured: {', '.join(self.upstreams)}",
                               code="unknown_upstream", status=404)
        pinned = self.settings.upstream_transport
        if pinned and upstream.transport != pinned:
            raise RequestError(f"upstream {name!r} speaks {upstream.transport}, but this relay is pinned "
                               f"to {self.settings.server.combo}", code="combo_pinned", status=409)
        # Shielded: a client that leaves now (aiohttp cancels its handler) must not leave a
        # stream created in the engine without its pump; one nobody follows stops by itself.
        return await asyncio.shield(self._open(chat, name, upstream, downstream, client))

    async def _open(self, chat: ChatRequest, name: str, upstream: Upstream, downstream: str, client: str) -> Stream:
        stream_id = chat.stream_id or uuid.uuid4().hex
        await self.engine.admit(client, stream_id)
        turn = None
        try:
            if chat.conversation_id is not None:
                # After admission (a refused client costs no database work), before the
                # stream exists (a refused turn leaves no stream behind).
                chat, turn = await self.conversation_store().begin(chat, client)
            stream, follow = await self.engine.create(stream_id, client, name, f"{downstream}-{upstream.transport}",
                                                      chat.conversation_id)
        except BaseException as exc:
            await self.engine.release(client, stream_id)
            if turn is not None:  # its user message is saved: its answer says why none came
                await self.conversation_store().refused(turn, getattr(exc, "code", "internal"))
            raise
        self.metrics.stream_started(stream)
        event(log, "stream start", stream_id=stream_id, combo=stream.combo, upstream=name, client=client,
              conversation_id=chat.conversation_id)
        self._pumps[stream_id] = asyncio.get_running_loop().create_task(
            self._pump(stream, upstream, chat, turn), name=f"pump-{stream_id}")
        return follow

    def conversation_store(self) -> Conversations:
        """The conversations this relay keeps: StoreUnavailable for a relay built without a store."""
        if self.conversations is None:
            raise StoreUnavailable("this relay has no conversation store")
        return self.conversations

    async def get(self, stream_id: str, client: str = "") -> Stream:
        """The stream's log, if it exists and `client` may touch it (with API keys: only its owner)."""
        stream = await self.engine.find(stream_id)
        if stream is None:
            raise StreamNotFound(f"no stream {stream_id!r} (unknown, or expired after replay_ttl_s)")
        if not may_touch(stream.owner, client):
            raise RequestError(f"stream {stream_id!r} belongs to another client", code="forbidden", status=403)
        return stream

    async def cancel(self, stream_id: str, client: str = "") -> Stream:
        """An explicit stop: close the provider connection now; readers get done/cancelled."""
        stream = await self.get(stream_id, client)
        if not stream.finished:
            await self.engine.cancel(stream)
        return stream

    def _stop_pump(self, stream_id: str) -> None:
        pump = self._pumps.get(stream_id)
        if pump is not None and not pump.done():
            pump.cancel()

    # -- readers and disconnect grace -------------------------------------------------

    @contextmanager
    def reader(self, stream: Stream, grace_s: float | None = None) -> Iterator[Stream]:
        """Hold the stream while a client follows it; on leaving, start the grace timer.

        `grace_s` overrides `disconnect_grace_s`: 0 stops the provider as soon as the last
        reader leaves (for clients that have no way to resume).
        """
        self.engine.enter(stream)
        try:
            yield stream
        finally:
            self.engine.leave(stream, self.settings.stream.disconnect_grace_s if grace_s is None else grace_s)

    # -- the pump ---------------------------------------------------------------------

    async def _pump(self, stream: Stream, upstream: Upstream, chat: ChatRequest, turn: Turn | None) -> None:
        # A conversation's answer is kept as the pump adds it: the log may trim old events.
        answer: list[str] | None = None if turn is None else []
        cancelled: asyncio.CancelledError | None = None
        end: Finish | MatrixError
        try:
            end = await self._relay_with_retries(stream, upstream, chat, answer)
        except asyncio.CancelledError as exc:
            cancelled = exc
            end = (ShuttingDown("the relay shut down before the answer finished") if self._stopping
                   else Finish("cancelled"))
        except MatrixError as exc:
            end = exc
        except Exception as exc:  # a bug: the client still gets a terminal event
            log.exception("stream %s: internal error", stream.id)
            end = MatrixError(f"internal error: {type(exc).__name__}")
        try:
            if turn is not None and answer is not None:  # saved before the client hears the end
                await self.conversation_store().finish(
                    turn, stream, "".join(answer), _status(end, stream.terminal),
                    end.usage if isinstance(end, Finish) else None,
                    round((asyncio.get_running_loop().time() - stream.started_at) * 1000, 1))
        finally:
            if isinstance(end, Finish):
                stream.finish(end.reason, end.usage)
            else:
                stream.fail(end)
            self._pumps.pop(stream.id, None)
            self.engine.ended(stream)
            now = asyncio.get_running_loop().time()
            self.metrics.stream_ended(stream, now)
            end = stream.terminal
            event(log, "stream end", stream_id=stream.id, combo=stream.combo, upstream=stream.upstream,
                  client=stream.owner, end=end.type if end else None,
                  reason=getattr(end, "reason", None) or getattr(end, "code", None),
                  upstream_code=getattr(end, "upstream_code", None), tokens=stream.pieces,
                  ttft_ms=round((stream.first_text_at - stream.started_at) * 1000, 1)
                  if stream.first_text_at is not None else None,
                  duration_ms=round((now - stream.started_at) * 1000, 1))
            await self.engine.release(stream.owner, stream.id)
        if cancelled is not None:
            raise cancelled

    async def _relay_with_retries(self, stream: Stream, upstream: Upstream, chat: ChatRequest,
                                  answer: list[str] | None) -> Finish:
        cfg = self.settings.stream
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.retry_budget_s
        for attempt in range(1, cfg.retry_attempts + 1):
            try:
                return await self._relay_once(stream, upstream, chat, answer)
            except UpstreamError as exc:
                # Retry only before the first token: after that the client already holds text.
                backoff = cfg.retry_backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
                if (not exc.retryable or stream.has_text or attempt == cfg.retry_attempts
                        or loop.time() + backoff > deadline):
                    raise
                self.metrics.retries.labels(upstream.name).inc()
                event(log, "upstream retry", stream_id=stream.id, upstream=upstream.name, code=exc.code,
                      upstream_code=exc.upstream_code, attempt=attempt, backoff_ms=round(backoff * 1000))
                await asyncio.sleep(backoff)

    @staticmethod
    async def _relay_once(stream: Stream, upstream: Upstream, chat: ChatRequest, answer: list[str] | None) -> Finish:
        """One provider attempt: its text into the stream (and `answer`), until its end marker.

        Without a conversation the end goes out at once; with one, the pump sends it after the save."""
        add = stream.add if answer is None else _keeping(stream.add, answer)
        async with upstream.open(chat, stream.trace if chat.trace else None) as batches:
            # Readers hear once per loop pass, of all the text that pass brought (matrix/passes.py).
            async for batch in EachPass(batches, stream.announce):
                for item in batch:
                    if item.__class__ is str:
                        add(item)
                    else:
                        assert isinstance(item, Finish)
                        if answer is None:
                            stream.finish(item.reason, item.usage)
                        else:  # the end waits for the save; the text that came with it does not
                            stream.announce()
                        return item
        raise UpstreamProtocolError(f"{upstream.name}: the provider stream ended without its end marker")

    # -- shutdown ---------------------------------------------------------------------

    async def aclose(self, drain_timeout: float = 0) -> None:
        """Stop accepting, let live streams finish for `drain_timeout`, end the rest, close upstreams."""
        self._stopping = True
        pumps = list(self._pumps.values())
        if pumps and drain_timeout > 0:
            await asyncio.wait(pumps, timeout=drain_timeout)
        for pump in list(self._pumps.values()):
            pump.cancel()
        if pumps:
            await asyncio.gather(*pumps, return_exceptions=True)
        await self.engine.aclose()
        if self.conversations is not None:
            await self.conversations.aclose()
        for upstream in self.upstreams.values():
            await upstream.aclose()


def _status(end: Finish | MatrixError, terminal: Event | None) -> str:
    """How a stream ended, as its conversation keeps it: the end its readers were given, where an
    engine gave one before the pump ended (Redis gone: engine_unavailable), else the pump's."""
    if isinstance(terminal, Error):
        return terminal.code
    if isinstance(end, Finish):
        return end.reason
    return end.code


def _keeping(add, answer: list[str]):
    """`add`, also keeping each piece in `answer`: a conversation's copy of what its readers get."""
    def add_and_keep(text: str) -> None:
        add(text)
        answer.append(text)
    return add_and_keep
