"""The WebSocket side of a mock provider: a channel whose reader notices a leaving client at once."""

from __future__ import annotations

import asyncio
from types import TracebackType

from aiohttp import WSMsgType, web

from .play import Channel, ClientGone, Frame
from .script import Script
from .state import MockState
from .stats import Connection


class SecondRequest(Exception):
    """The client sent another message while an answer was still streaming."""


class WSChannel(Channel):
    """A server WebSocket. A reader task runs beside the player, so a close frame, a lost
    connection or a second message stops the answer mid-sleep rather than at the next send."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        super().__init__(request)
        self._ws = ws
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WSChannel:
        self._reader = asyncio.create_task(self._read(), name="mock_ai-ws-reader")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._reader is not None
        self._reader.cancel()
        await asyncio.wait({self._reader})

    async def _read(self) -> None:
        # aiohttp ends the iteration on the client's close frame (answering it), on a lost
        # connection, and when our own close() interrupts this read.
        async for msg in self._ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                self.received(msg.data)
        self.left()

    def received(self, data: str | bytes) -> None:
        """A client message while the answer streams: one request per connection here."""
        self.stop(SecondRequest())

    def left(self) -> None:
        self.stop(ClientGone("client closed the WebSocket"))

    async def send(self, frame: Frame) -> None:
        assert isinstance(frame, str)
        self.check()
        try:
            await self._ws.send_str(frame)
        except ConnectionError as exc:
            raise ClientGone("client left while a frame was being sent") from exc

    async def close(self) -> None:
        await self._ws.close(code=1000)


def handshake_fault(state: MockState, vendor: str, conn: Connection) -> tuple[int | None, Script]:
    """The HTTP status to refuse a WebSocket upgrade with (None: accept), and the base script.

    A `#mock` line arrives only after the upgrade, so a handshake fault comes from the
    app's defaults or from `POST /_mock/arm`; once spent here it is not played again.
    """
    base = state.base(vendor)
    conn.tag = base.tag
    status = base.fault.http_status if base.fault else None
    if status is None:
        return None, base
    if state.strikes(vendor, "#handshake", base):
        conn.close("fault")
        return status, base
    return None, base.replace(fault=None)
