"""WebSocket upstream transport: connect with `websockets`, send the request frame, read frames.

Compression is off (permessage-deflate costs 1.2-1.6x CPU and 3x memory per stream on
this hop, docs/measuring.md); the provider's frames are small JSON text.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from contextlib import asynccontextmanager, suppress
from typing import AsyncIterator, Sequence

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import (ConnectionClosedError, InvalidProxyMessage, InvalidProxyStatus, InvalidStatus,
                                   WebSocketException)

from matrix.config import StreamConfig, UpstreamConfig
from matrix.idle import IdleTimeout
from matrix.errors import UpstreamProtocolError, UpstreamTimeout
from matrix.request import ChatRequest
from matrix.provider import Item, Tap

from . import network


# websockets logs the request line (the signed URL) at debug level: keep it quiet whatever
# level the operator chooses.
_QUIET = logging.getLogger("matrix.upstreams.ws.protocol")
_QUIET.setLevel(logging.WARNING)


class WSUpstream:
    transport = "ws"

    def __init__(self, name: str, config: UpstreamConfig, dialect_cls, stream_config: StreamConfig) -> None:
        self.name = name
        self.kind = config.kind
        self.config = config
        self._dialect_cls = dialect_cls
        self._connect_timeout = stream_config.upstream_connect_timeout_s
        self._idle_timeout = stream_config.upstream_idle_timeout_s
        self.net = network.for_upstream(name, config)
        self.network = self.net.public
        # The proxy is chosen by upstreams/proxy.py (None: direct), never by websockets'
        # own reading of the environment, so both transports follow the same rules.
        route = self.net.route
        self._tls = {"ssl": self.net.ssl} if self.net.ssl else {}
        self._proxy = route.url_with_credentials() if route else None

    @asynccontextmanager
    async def open(self, chat: ChatRequest, tap: Tap | None = None) -> AsyncIterator[AsyncIterator[Sequence[Item]]]:
        dialect = self._dialect_cls(self.config)
        lost: list[BaseException] = []
        url, headers = dialect.ws_handshake()
        try:
            ws = await websockets.connect(url, additional_headers=headers, open_timeout=self._connect_timeout,
                                          compression=None, max_size=4 * 2**20, ping_interval=None,
                                          close_timeout=1.0, user_agent_header=None, logger=_QUIET,
                                          proxy=self._proxy, create_connection=functools.partial(_Recording, lost=lost),
                                          **self._tls)
        except InvalidStatus as exc:
            raise dialect.handshake_error(exc.response.status_code, exc.response.body or b"") from None
        # Never chained: the exceptions carry the signed URL (its signature stays valid for
        # minutes) and the proxy URL with its credentials.
        except InvalidProxyStatus as exc:
            raise self.net.proxy_refused(exc.response.status_code) from None
        except InvalidProxyMessage:
            raise self.net.proxy_garbled() from None
        except (OSError, asyncio.TimeoutError, WebSocketException) as exc:
            # Through a proxy, the only socket websockets opens is the one to the proxy.
            at_proxy = self._proxy is not None and isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError)
            raise self.net.failure(exc, at_proxy=at_proxy, lost=lost) from None
        items = None
        finished: list[bool] = []
        try:
            for request in dialect.ws_requests(chat):
                if tap:
                    tap("out", request)
                await ws.send(request)
            items = self._items(ws, dialect, finished, tap)
            yield items
        except ConnectionClosedError as exc:
            raise UpstreamProtocolError(f"{self.name}: connection closed before the request was sent") from exc
        finally:
            if items is not None:
                await items.aclose()
            if not finished and (goodbye := dialect.goodbye()) is not None:
                # Stopped early: tell a provider that keeps the session what to stop, then close.
                with suppress(asyncio.TimeoutError, WebSocketException, OSError):
                    if tap:
                        tap("out", goodbye)
                    await asyncio.wait_for(ws.send(goodbye), timeout=0.1)
            await ws.close()

    async def _items(self, ws, dialect, finished: list[bool], tap: Tap | None) -> AsyncIterator[Sequence[Item]]:
        parse = dialect.parse
        idle = self._idle_timeout
        try:
            async with IdleTimeout(idle) as timer:
                async for message in ws:
                    timer.ticks += 1
                    if tap:
                        tap("in", message if isinstance(message, str) else message.decode("utf-8", "replace"))
                    if batch := parse(message):
                        if any(item.__class__ is not str for item in batch):
                            finished.append(True)
                            yield batch
                            return
                        yield batch
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{self.name}: no data for {idle:g}s") from exc
        except ConnectionClosedError as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            raise UpstreamProtocolError(f"{self.name}: connection closed abnormally ({code}) "
                                        f"before the last frame") from exc
        if tail := dialect.eof():
            yield tail

    async def aclose(self) -> None:
        return None


class _Recording(ClientConnection):
    """Keeps the error its transport was lost with: websockets reports a TLS alert that
    arrives during the opening handshake (a provider refusing our client certificate, TLS
    1.3) only as "did not receive a valid HTTP response", and the alert is what to tell."""

    def __init__(self, protocol, *, lost: list[BaseException], **kwargs) -> None:
        super().__init__(protocol, **kwargs)
        self._lost = lost

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._lost.append(exc)
        super().connection_lost(exc)
