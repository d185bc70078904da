"""WebSocket upstream transport: connect with `websockets`, send the request frame, read frames.

Compression is off (permessage-deflate costs 1.2-1.6x CPU and 3x memory per stream on
this hop, docs/measuring.md); the provider's frames are small JSON text.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager, suppress
from typing import AsyncIterator

import websockets
from websockets.exceptions import ConnectionClosedError, InvalidStatus, WebSocketException

from matrix.config import StreamConfig, UpstreamConfig
from matrix.idle import IdleTimeout
from matrix.errors import UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from matrix.request import ChatRequest
from matrix.provider import Item, Tap


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

    @asynccontextmanager
    async def open(self, chat: ChatRequest, tap: Tap | None = None) -> AsyncIterator[AsyncIterator[Item]]:
        dialect = self._dialect_cls(self.config)
        url, headers = dialect.ws_handshake()
        try:
            ws = await websockets.connect(url, additional_headers=headers, open_timeout=self._connect_timeout,
                                          compression=None, max_size=4 * 2**20, ping_interval=None,
                                          close_timeout=1.0, user_agent_header=None, logger=_QUIET)
        except InvalidStatus as exc:
            raise dialect.handshake_error(exc.response.status_code, exc.response.body or b"") from None
        except (OSError, asyncio.TimeoutError, WebSocketException) as exc:
            # Never the signed URL, not even in the chained exception: its query carries a
            # signature that stays valid for minutes.
            raise UpstreamUnavailable(f"{self.name}: cannot connect: {type(exc).__name__}") from None
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

    async def _items(self, ws, dialect, finished: list[bool], tap: Tap | None) -> AsyncIterator[Item]:
        parse = dialect.parse
        idle = self._idle_timeout
        try:
            async with IdleTimeout(idle) as timer:
                async for message in ws:
                    timer.ticks += 1
                    if tap:
                        tap("in", message if isinstance(message, str) else message.decode("utf-8", "replace"))
                    for item in parse(message):
                        if item.__class__ is not str:
                            finished.append(True)
                        yield item
                        if item.__class__ is not str:
                            return
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{self.name}: no data for {idle:g}s") from exc
        except ConnectionClosedError as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            raise UpstreamProtocolError(f"{self.name}: connection closed abnormally ({code}) "
                                        f"before the last frame") from exc
        for item in dialect.eof():
            yield item

    async def aclose(self) -> None:
        return None
