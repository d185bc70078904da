"""The flusher's connection: RESP packed by hand, parsed by hiredis, one command in flight.

The flusher makes one call per flush, and redis-py's layers (retry, locks, timeouts, its
packer) cost about 200 µs of CPU per EVALSHA round trip where this costs about 125
(measured on this box, asyncio loop): per token, at 50 tok/s streams, the difference is
a third of what the engine adds to the relay.
"""

from __future__ import annotations

import asyncio
import ssl

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError, ResponseError


def pack(args: tuple) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if not isinstance(arg, bytes):
            arg = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


class Wire:
    def __init__(self, url: str, timeout: float, client_name: str) -> None:
        self._where = parse_url(url)
        self._timeout = timeout
        self._name = client_name
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = hiredis.Reader()

    async def call(self, *args) -> object:
        """One command's reply; an error reply raises ResponseError, a broken link ConnectionError.

        Only for commands that may run twice (the flusher's append skips what landed)."""
        reused = self._writer is not None
        try:
            return await self._call(args)
        except (ConnectionError, OSError):
            if not reused:
                raise
            return await self._call(args)  # a link that broke while idle (Redis restarted): once more, anew

    async def _call(self, args: tuple) -> object:
        try:
            async with asyncio.timeout(self._timeout):
                if self._writer is None:
                    await self._connect()
                reply = await self._roundtrip(args)
        except BaseException:  # a reply may still be on its way: never read it as the next one's
            self.close()
            raise
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        return reply

    async def _roundtrip(self, args: tuple) -> object:
        assert self._reader is not None and self._writer is not None
        self._writer.write(pack(args))
        while (reply := self._parser.gets()) is False:
            data = await self._reader.read(65536)
            if not data:
                raise ConnectionError("Redis closed the connection")
            self._parser.feed(data)
        return reply

    async def _connect(self) -> None:
        where = self._where
        try:
            if where.get("connection_class") is UnixDomainSocketConnection:
                self._reader, self._writer = await asyncio.open_unix_connection(where["path"])
            else:
                tls = ssl.create_default_context() if where.get("connection_class") is SSLConnection else None
                self._reader, self._writer = await asyncio.open_connection(where.get("host", "localhost"),
                                                                           where.get("port", 6379), ssl=tls)
        except OSError as exc:
            raise ConnectionError(f"cannot connect to Redis: {exc}") from exc
        self._parser = hiredis.Reader()
        setup = []
        if where.get("password"):
            setup.append(("AUTH", *([where["username"]] if where.get("username") else []), where["password"]))
        if where.get("db"):
            setup.append(("SELECT", where["db"]))
        setup.append(("CLIENT", "SETNAME", self._name))
        for command in setup:
            reply = await self._roundtrip(command)
            if isinstance(reply, hiredis.ReplyError):
                raise ConnectionError(f"Redis refused {command[0]}: {reply}")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
