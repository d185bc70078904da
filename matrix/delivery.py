"""Delivering a stream to one client connection: its writes, heartbeats when idle, giving up on a stuck reader.

Every write to the client goes through the connection's watchdog: `send` awaits it, and
`send_now` makes it in the caller's loop pass when the transport can take it without
waiting (the hot path: a provider token reaches the client's socket in the pass it
arrived in). One watchdog per client connection, ticking a few times per period, costs nothing per
token: writes only bump a counter. It sends a keep-alive after `heartbeat_s` of silence
(proxies and load balancers cut idle connections, often at 60 s, and a slow reasoning
model can be silent that long before its first token), and aborts a connection whose
write has made no progress for `send_timeout_s` (a client that stopped reading must not
hold the relay's memory or the provider's meter).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Awaitable, Callable, Coroutine


def limit_send_buffer(transport: asyncio.BaseTransport | None, size: int) -> None:
    """Cap the kernel's send buffer for one client connection.

    Linux lets a connection's send buffer grow to 4 MiB (tcp_wmem), so a client that stops
    reading could park megabytes in the kernel before a write ever blocks; capped, the
    write blocks early and `send_timeout_s` can notice. Token streams need kilobytes.
    """
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and size > 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


class Watchdog:
    """Use as `with Watchdog(...) as w:` around a connection's life; writers bump `writes`.

    A timer callback, not a task: an idle connection costs one timer handle.
    """

    __slots__ = ("writes", "direct", "writing", "pings", "gave_up", "_ping", "_abort", "_heartbeat_s", "_send_timeout_s",
                 "_tick_s", "_seen", "_quiet_since", "_handle", "_pinging", "_paused", "_finishing")

    def __init__(self, *, ping: Callable[[], Awaitable[object]] | None, abort: Callable[[], None],
                 heartbeat_s: float, send_timeout_s: float, paused: Callable[[], bool] = lambda: True) -> None:
        self.writes = 0  # bumped after every completed write
        self.direct = 0  # of which made by `send_now` (the hot path), for metrics
        self.writing = False  # True while a write is waiting for the client to take it
        self._paused = paused  # the client's transport asked us to stop writing (asyncio flow control)
        self._finishing: asyncio.Task | None = None  # a `send_now` write that had to wait after all
        self.pings = 0
        self.gave_up = False  # the client took nothing for send_timeout_s
        self._ping = ping
        self._abort = abort
        self._heartbeat_s = heartbeat_s
        self._send_timeout_s = send_timeout_s
        self._tick_s = min(heartbeat_s if ping else send_timeout_s, send_timeout_s) / 4
        self._pinging: asyncio.Task | None = None

    @classmethod
    def for_request(cls, request, config, ping: Callable[[], Awaitable[object]] | None = None) -> "Watchdog":
        """The watchdog of one client connection, its kernel send buffer capped first."""
        limit_send_buffer(request.transport, config.client_send_buffer_bytes)
        protocol = request.protocol
        return cls(ping=ping, abort=lambda: request.transport and request.transport.abort(),
                   heartbeat_s=config.heartbeat_s, send_timeout_s=config.send_timeout_s,
                   paused=lambda: protocol.writing_paused)

    # -- writes -----------------------------------------------------------------------

    async def send(self, write: Awaitable[object]) -> None:
        """Await one write to the client, after any `send_now` write still finishing (bytes stay in order)."""
        if self._finishing is not None:
            await self._finishing
        self.writing = True
        await write
        self.writing = False
        self.writes += 1

    def send_now(self, write: Callable[..., Coroutine[Any, Any, object]], *args: object) -> bool:
        """Make the write `write(*args)` in this loop pass if the transport takes it at once; False: `send` it.

        aiohttp's writes (`StreamResponse.write`, `WebSocketResponse.send_frame`) hand the
        bytes to the transport and wait only to drain, and only when the transport has
        paused writing; so when it has not, the coroutine runs to its end in one step. If
        it waits after all (this write filled the buffer), a task finishes it, and later
        writes wait for that task.
        """
        if self.writing or self._finishing is not None or self._paused():
            return False
        coro = write(*args)
        try:
            blocked_on = coro.send(None)
        except StopIteration:
            self.writes += 1
            self.direct += 1
            return True
        except ConnectionError:
            return False  # the client is gone: the awaited path meets the same error and ends the reader
        self.writing = True
        self._finishing = asyncio.get_running_loop().create_task(self._finish(coro, blocked_on))
        return True

    async def _finish(self, coro: Coroutine, blocked_on: object) -> None:
        """Drive a write that suspended inside `send_now` to its end, as a task would have."""
        try:
            while True:
                if isinstance(blocked_on, asyncio.Future):
                    await asyncio.wait([blocked_on])  # its outcome is the write's to raise, below
                else:
                    await asyncio.sleep(0)  # a bare yield: let the loop run once
                blocked_on = coro.send(None)
        except StopIteration:
            self.writing = False
            self.writes += 1
        except ConnectionError:
            pass  # the client is gone; its reader notices on its next write
        finally:
            coro.close()
            self._finishing = None

    def __enter__(self) -> "Watchdog":
        loop = asyncio.get_running_loop()
        self._seen, self._quiet_since = self.writes, loop.time()
        self._handle = loop.call_later(self._tick_s, self._tick)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.cancel()
        if self._pinging is not None:
            self._pinging.cancel()

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.writes != self._seen:
            self._seen, self._quiet_since = self.writes, now
        elif self.writing:
            if now - self._quiet_since >= self._send_timeout_s:
                self.gave_up = True
                self._abort()
                return
        elif self._ping is not None and now - self._quiet_since >= self._heartbeat_s:
            self.writing = True  # from now: no write may pass the ping (send sets it again)
            self._pinging = loop.create_task(self._send_ping())
        self._handle = loop.call_later(self._tick_s, self._tick)

    async def _send_ping(self) -> None:
        try:
            await self.send(self._ping())
        except ConnectionError:
            return  # the client is gone; its follower notices on its own
        self.pings += 1
