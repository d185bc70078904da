"""The engine seam: where streams live (logs, readers, stop signals, owners, limits), and the memory engine.

The relay runs pumps and knows providers; an engine keeps everything a stream shares with
its readers. `memory` keeps it in this process (the default: one relay, nothing to run
beside it). Another engine (engines/redis: many relays, one set of streams) implements the
same methods; the relay, transports, dialects and downstreams do not know which one runs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Protocol

from .config import Settings
from .errors import RequestError
from .limits import ClientLimits
from .stream import Stream

Stop = Callable[[str], None]  # the relay's "cancel this stream's pump here", given to the engine
# The relay's "this conversation's stream died with the relay that ran it": its log, ended, and
# the conversation named at `create`. It returns at once (the save runs on its own).
Lost = Callable[[Stream, str], None]


class Engine(Protocol):
    def bind(self, stop: Stop, lost: Lost | None = None) -> None:
        """How the engine stops a pump on this replica (grace expired, or a stop from elsewhere), and
        whom it tells when it ends a conversation's stream whose relay died (an engine shared by relays)."""

    async def open(self) -> None: ...

    async def aclose(self) -> None:
        """After the relay's pumps have ended: make their terminal events durable, let go."""

    def ready(self) -> str | None:
        """None while new streams can start here, else why not (for /readyz)."""

    @property
    def local_streams(self) -> int: ...

    async def admit(self, client: str, stream_id: str) -> None:
        """Count a stream start against `client` (live streams, starts per minute) or refuse with 429."""

    async def release(self, client: str, stream_id: str) -> None: ...

    async def create(self, stream_id: str, owner: str, upstream: str, combo: str,
                     conversation: str | None = None) -> tuple[Stream, Stream]:
        """A new stream as (what the pump writes, what readers follow); refuse an existing id with 409.

        `conversation`: kept with the stream, for `lost` (an engine that outlives relays)."""

    async def find(self, stream_id: str) -> Stream | None:
        """The log readers follow, wherever the stream's pump runs; None: unknown or expired."""

    async def cancel(self, log: Stream) -> None:
        """Stop the stream's pump, on whichever replica runs it."""

    def enter(self, log: Stream) -> None:
        """A reader started following `log` on this replica."""

    def leave(self, log: Stream, grace_s: float) -> None:
        """A reader left; when none is left anywhere for `grace_s`, the pump is stopped."""

    def ended(self, writer: Stream) -> None:
        """The stream's pump has returned (its terminal event is pushed): keep it for replay, then forget it."""

    async def put_ticket(self, ticket: str, client: str, ttl_s: float) -> None:
        """Keep a browser's single-use ticket (matrix/access.py) for `ttl_s`, for any relay to redeem."""

    async def take_ticket(self, ticket: str) -> str | None:
        """The client `ticket` was issued to, once; None when it is unknown, used or expired."""


def unattended_s(settings: Settings) -> float:
    """How long a new stream may wait for its first reader: the starting client's request can
    be cancelled between start and follow (it left), and then no reader ever leaves it."""
    return settings.stream.disconnect_grace_s or 1.0


def new_stream(settings: Settings, stream_id: str, upstream: str, combo: str, cls: type[Stream] = Stream) -> Stream:
    cfg = settings.stream
    return cls(stream_id, upstream, combo, merge_at=cfg.queue_size, max_events=cfg.replay_max_events)


class MemoryEngine:
    """Streams in this process's memory: one relay (`[engine] kind = "memory"`, the default)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.streams: dict[str, Stream] = {}
        self.limits = ClientLimits(settings.limits)
        self._stop: Stop = lambda stream_id: None
        self._readers: dict[str, int] = {}
        self._grace: dict[str, asyncio.TimerHandle] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._tickets: dict[str, tuple[str, float]] = {}  # ticket -> (client, expiry)

    def bind(self, stop: Stop, lost: Lost | None = None) -> None:
        self._stop = stop  # `lost` never comes: this engine dies with its relay

    async def open(self) -> None:
        pass

    async def aclose(self) -> None:
        for timer in [*self._grace.values(), *self._expiry.values()]:
            timer.cancel()
        self._grace.clear()
        self._expiry.clear()

    def ready(self) -> str | None:
        return None

    @property
    def local_streams(self) -> int:
        return len(self.streams)

    async def admit(self, client: str, stream_id: str) -> None:
        self.limits.admit(client)

    async def release(self, client: str, stream_id: str) -> None:
        self.limits.release(client)

    async def create(self, stream_id: str, owner: str, upstream: str, combo: str,
                     conversation: str | None = None) -> tuple[Stream, Stream]:
        if stream_id in self.streams:
            raise RequestError(f"stream {stream_id!r} already exists", code="stream_exists", status=409)
        stream = new_stream(self.settings, stream_id, upstream, combo)
        stream.owner = owner
        self.streams[stream_id] = stream
        self._readers[stream_id] = 0
        self._grace[stream_id] = asyncio.get_running_loop().call_later(unattended_s(self.settings), self._stop,
                                                                       stream_id)
        return stream, stream

    async def find(self, stream_id: str) -> Stream | None:
        return self.streams.get(stream_id)

    async def cancel(self, log: Stream) -> None:
        self._stop(log.id)

    def enter(self, log: Stream) -> None:
        sid = log.id
        self._readers[sid] = self._readers.get(sid, 0) + 1
        if (timer := self._grace.pop(sid, None)) is not None:
            timer.cancel()

    def leave(self, log: Stream, grace_s: float) -> None:
        sid = log.id
        self._readers[sid] -= 1
        if self._readers[sid] == 0 and not log.finished:
            if grace_s <= 0:
                self._stop(sid)
            else:
                self._grace[sid] = asyncio.get_running_loop().call_later(grace_s, self._stop, sid)

    def ended(self, writer: Stream) -> None:
        if (timer := self._grace.pop(writer.id, None)) is not None:
            timer.cancel()
        self._expiry[writer.id] = asyncio.get_running_loop().call_later(
            self.settings.stream.replay_ttl_s, self._expire, writer.id)

    async def put_ticket(self, ticket: str, client: str, ttl_s: float) -> None:
        now = time.monotonic()
        if len(self._tickets) > 10_000:  # unredeemed tickets: forget the expired ones
            self._tickets = {t: v for t, v in self._tickets.items() if v[1] > now}
        self._tickets[ticket] = (client, now + ttl_s)

    async def take_ticket(self, ticket: str) -> str | None:
        client, expiry = self._tickets.pop(ticket, ("", 0.0))
        return client if client and expiry > time.monotonic() else None

    def _expire(self, stream_id: str) -> None:
        self._expiry.pop(stream_id, None)
        self.streams.pop(stream_id, None)
        self._readers.pop(stream_id, None)
