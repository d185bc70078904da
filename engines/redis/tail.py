"""One blocking XREAD per relay, over every stream followed here whose pump runs on another relay.

A thousand followed streams cost one Redis connection, not a thousand. When the set of
streams changes while the XREAD is blocked, CLIENT UNBLOCK (from another connection)
makes it return at once, and it is sent again with the new set.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from matrix.errors import StreamNotFound
from matrix.events import Error, decode
from matrix.stream import Stream

from .redis_errors import REDIS_ERRORS, cancel_requested, unless_cancelled


class Tail:
    def __init__(self, conn, pool_client, block_ms: int, trouble: Callable[[Exception], None],
                 healthy: Callable[[], None]) -> None:
        self._conn = conn  # a client holding one connection of its own (it blocks)
        self._pool = pool_client  # anything else: CLIENT UNBLOCK
        self._block_ms = block_ms
        self._trouble = trouble
        self._healthy = healthy
        self._logs: dict[str, tuple[Stream, str]] = {}  # log key -> (replica log, last entry id)
        self._wake = asyncio.Event()
        self._stale = False  # the set changed after the XREAD in flight was sent
        self._blocked = False
        self._client_id: int | None = None
        self._kicker: asyncio.Task | None = None
        self.closing = False

    def __len__(self) -> int:
        return len(self._logs)

    def add(self, key: str, log: Stream, last_id: str) -> None:
        self._logs[key] = (log, last_id)
        self._stale = True
        self._wake.set()
        if self._blocked and self._kicker is None:
            self._kicker = asyncio.get_running_loop().create_task(self._kick())

    def remove(self, key: str) -> None:
        self._logs.pop(key, None)  # no need to unblock: a reply for it is ignored

    async def _kick(self) -> None:
        try:
            # UNBLOCK only hits a client that is blocked: one whose XREAD is still on its way is retried.
            while self._stale and self._blocked and self._client_id is not None:
                if await self._pool.client_unblock(self._client_id):
                    break
                await asyncio.sleep(0.001)
        except REDIS_ERRORS:
            pass  # the XREAD times out within block_ms anyway
        finally:
            self._kicker = None

    async def run(self) -> None:
        while not self.closing and not cancel_requested():
            if not self._logs:
                self._wake.clear()
                await self._wake.wait()
                continue
            wanted = {key: last for key, (_, last) in self._logs.items()}
            self._stale = False
            try:
                if self._client_id is None:
                    self._client_id = await self._conn.client_id()
                self._blocked = True
                reply = await self._conn.xread(wanted, count=1000, block=self._block_ms)
            except Exception as exc:  # noqa: BLE001  Redis down, or an error reply: retry, never die
                unless_cancelled(exc)
                self._client_id = None  # a new connection has a new id
                self._trouble(exc)
                await asyncio.sleep(0.1)
                continue
            finally:
                self._blocked = False
            self._healthy()
            if not reply:
                await self._forget_expired()
            for key, entries in reply or ():
                key = key.decode()
                held = self._logs.get(key)
                if held is None or not entries:
                    continue
                log = held[0]
                log.extend([decode(fields[b"e"]) for _, fields in entries])
                if log.finished:
                    del self._logs[key]
                else:
                    self._logs[key] = (log, entries[-1][0].decode())

    async def _forget_expired(self) -> None:
        """A log that expired (or vanished) would block forever: end its followers instead."""
        keys = list(self._logs)
        try:
            async with self._pool.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.exists(key)
                found = await pipe.execute()
        except REDIS_ERRORS as exc:
            self._trouble(exc)
            return
        for key, exists in zip(keys, found):
            if not exists and (held := self._logs.pop(key, None)) is not None:
                log = held[0]
                log.extend([Error(log.id, log.last_seq + 1, StreamNotFound.code,
                                  f"stream {log.id} expired before its end was read", False)])

    async def aclose(self) -> None:
        await self._conn.aclose()

    def fail_all(self, make_error: Callable[[Stream], object]) -> None:
        """Redis is gone: end every followed log here with `make_error(log)`, stop following."""
        for log, _ in self._logs.values():
            log.extend([make_error(log)])  # type: ignore[list-item]
        self._logs.clear()
