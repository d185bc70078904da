"""SSE upstream transport: POST with aiohttp, decode the event stream, hand frames to a dialect.

aiohttp rather than httpx on this hot path: on this machine class an httpx + httpx-sse
upstream cost up to 3x the CPU per token and saturated a core at 200 streams
(docs/measuring.md, "aiohttp, not httpx"). One pooled session per relay keeps connections warm, so
a new stream to the same provider skips the TCP (and TLS) handshake.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager, suppress
from typing import AsyncIterator, Sequence

import aiohttp

from matrix.config import StreamConfig, UpstreamConfig
from matrix.idle import IdleTimeout
from matrix.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout
from matrix.request import ChatRequest
from matrix.sse import Decoder
from matrix.provider import Item, Tap

from . import network

MAX_ERROR_BODY = 64 * 1024


class SSEUpstream:
    transport = "sse"

    def __init__(self, name: str, config: UpstreamConfig, dialect_cls, stream_config: StreamConfig) -> None:
        self.name = name
        self.kind = config.kind
        self.config = config
        self._dialect_cls = dialect_cls
        self.net = network.for_upstream(name, config)
        self.network = self.net.public
        # No sock_read: aiohttp re-arms that timer on every chunk; IdleTimeout is per period.
        # `connect` bounds the whole connect: TCP, the proxy's CONNECT and the TLS handshake.
        connect_s = stream_config.upstream_connect_timeout_s
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_s, sock_connect=connect_s)
        self._idle_timeout = stream_config.upstream_idle_timeout_s
        route = self.net.route
        # The proxy is chosen by upstreams/proxy.py, not by aiohttp (trust_env stays off), so
        # both transports follow the same rules.
        self._proxy = {} if route is None else {"proxy": route.url, "proxy_headers": route.headers()}
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ssl=self.net.ssl or True),
                auto_decompress=True)
        return self._session

    @asynccontextmanager
    async def open(self, chat: ChatRequest, tap: Tap | None = None) -> AsyncIterator[AsyncIterator[Sequence[Item]]]:
        dialect = self._dialect_cls(self.config)
        url, headers, body = dialect.http_request(chat)
        if tap:
            tap("out", f"POST {url.split('?')[0]}\n\n{body.decode()}")  # no query: it may hold a key
        try:
            response = await self._client().post(url, data=body, headers=headers, timeout=self._timeout,
                                                 **self._proxy)
        # Never chained: aiohttp's errors carry the proxy credentials (and the URL, with its query).
        except aiohttp.ClientHttpProxyError as exc:
            raise self.net.proxy_refused(exc.status) from None
        except aiohttp.ClientProxyConnectionError as exc:
            raise self.net.failure(exc, at_proxy=True) from None
        except aiohttp.ServerDisconnectedError:
            raise self.net.closed_early() from None
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            raise self.net.failure(exc) from None
        items = None
        finished: list[bool] = []
        try:
            if response.status != 200 or not response.content_type.startswith("text/event-stream"):
                raise dialect.http_error(response.status, await _read_bounded(response))
            items = self._items(response, dialect, finished, tap)
            yield items
            await items.aclose()  # disarms its idle timer before the drain below
            if finished:  # the answer is complete: read the few bytes left so the connection is reused
                with suppress(asyncio.TimeoutError, aiohttp.ClientError):
                    await asyncio.wait_for(response.content.read(), timeout=1.0)
        finally:
            if items is not None:
                await items.aclose()
            if response.content.at_eof() and response.status == 200:
                response.release()  # fully read: the connection goes back to the pool
            else:
                response.close()  # stopped early: close so the provider stops generating

    async def _items(self, response: aiohttp.ClientResponse, dialect, finished: list[bool],
                     tap: Tap | None) -> AsyncIterator[Sequence[Item]]:
        decoder = Decoder()
        parse = dialect.parse
        try:
            async with IdleTimeout(self._idle_timeout) as timer:
                async for chunk in response.content.iter_any():
                    timer.ticks += 1
                    if tap:  # each network read as it came, splits included
                        tap("in", chunk.decode("utf-8", "backslashreplace"))
                    batch: list[Item] = []
                    try:
                        for event in decoder.feed(chunk):
                            batch += parse(event.event, event.data)
                    except UpstreamError:  # the text before a provider's error event still goes out
                        if batch:
                            yield batch
                        raise
                    if batch:
                        if any(item.__class__ is not str for item in batch):
                            finished.append(True)
                        yield batch
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout(f"{self.name}: no data for {self._idle_timeout:g}s") from exc
        except aiohttp.ClientPayloadError as exc:
            raise UpstreamProtocolError(f"{self.name}: the provider broke off the response body") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamProtocolError(f"{self.name}: connection lost: {type(exc).__name__}") from exc
        if tail := dialect.eof():
            yield tail

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await asyncio.wait_for(response.content.read(MAX_ERROR_BODY), timeout=5.0)
    except (asyncio.TimeoutError, aiohttp.ClientError):
        return b""
