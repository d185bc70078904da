"""The HTTP side shared by the SSE vendors: one request handler, and a channel that can split frames."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import orjson
from aiohttp import web

from .play import Ask, Channel, ClientGone, Dialect, Frame, play, plan
from .script import Script
from .state import STATE, Credentials, MockState
from .stats import Connection

# Pause between the pieces of a split frame: long enough that each leaves in its own TCP
# segment (aiohttp sets TCP_NODELAY) and a reading client gets it in a separate read.
# Shorter would not help: the epoll selector rounds sleeps up to whole milliseconds.
SPLIT_GAP_S = 0.001


class SSEVendor(Protocol):
    """One SSE vendor's side of a request: auth, body, error bodies, frames."""

    name: str                       # as reported in stats: "baidu-agent" | "openai"
    headers: Mapping[str, str]      # of a streamed response

    def refusal(self, request: web.Request, credentials: Credentials) -> web.Response | None: ...
    def read(self, body: bytes) -> Ask: ...            # raises ValueError on a bad body
    def bad_request(self, message: str) -> web.Response: ...
    def http_error(self, status: int) -> web.Response: ...
    def dialect(self, script: Script, ask: Ask, finish: str) -> Dialect: ...
    def whole(self, script: Script, tokens: list[str], finish: str, ask: Ask) -> Any: ...


class SSEChannel(Channel):
    """A chunked HTTP response body; `split` > 0 writes each frame in pieces of that many bytes."""

    def __init__(self, request: web.Request, response: web.StreamResponse, split: int) -> None:
        super().__init__(request)
        self._response = response
        self._split = split

    async def send(self, frame: Frame) -> None:
        assert isinstance(frame, bytes)
        step = self._split or len(frame) or 1
        for start in range(0, len(frame), step):
            if start:
                await self.wait(SPLIT_GAP_S)
            self.check()
            try:
                await self._response.write(frame[start:start + step])
            except ConnectionError as exc:
                raise ClientGone("client left while a frame was being written") from exc

    async def close(self) -> None:
        try:
            await self._response.write_eof()
        except ConnectionError as exc:
            raise ClientGone("client left before the end of the body") from exc


def handler(vendor: SSEVendor) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler serving `vendor`: refuse, fail by script, or stream the answer."""

    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        with state.stats.track(vendor.name, request.path) as conn:
            refusal = vendor.refusal(request, state.credentials)
            if refusal is not None:
                conn.close("rejected")
                return refusal
            try:
                ask = vendor.read(await request.read())
                script = state.script_for(vendor.name, ask.text)
            except ValueError as exc:  # bad JSON, bad body shape, bad #mock directive
                conn.close("rejected")
                return vendor.bad_request(str(exc))
            conn.tag, conn.messages = script.tag, list(ask.messages)
            status = script.fault.http_status if script.fault else None
            if status is not None:
                conn.close("fault")
                return vendor.http_error(status)
            if ask.stream:
                return await _stream(request, state, conn, vendor, script, ask)
            return await _whole(request, state, conn, vendor, script, ask)

    return handle


async def _stream(request: web.Request, state: MockState, conn: Connection, vendor: SSEVendor,
                  script: Script, ask: Ask) -> web.StreamResponse:
    tokens, finish = plan(script, ask)
    response = web.StreamResponse(headers=vendor.headers)
    await response.prepare(request)
    channel = SSEChannel(request, response, script.split)
    with state.watchdog.watch(request, lambda: channel.stop(ClientGone("client disconnected"))):
        try:
            await play(script, tokens, vendor.dialect(script, ask, finish), channel, conn)
        except ClientGone:
            conn.close("client_closed")
    return response


async def _whole(request: web.Request, state: MockState, conn: Connection, vendor: SSEVendor,
                 script: Script, ask: Ask) -> web.StreamResponse:
    """A non-streamed answer: the same first-token wait and faults, in one JSON response."""
    tokens, finish = plan(script, ask)
    body = orjson.dumps(vendor.whole(script, tokens, finish, ask))
    channel = Channel(request)
    with state.watchdog.watch(request, lambda: channel.stop(ClientGone("client disconnected"))):
        try:
            await channel.wait(script.first_token_ms / 1000)
            fault = script.fault
            if fault is None:
                conn.tokens_sent = len(tokens)
                conn.close("completed")
                return web.Response(body=body, content_type="application/json")
            if fault.name == "stall_after":
                await channel.stall()
            conn.close("fault")
            if fault.name == "drop_after":
                channel.abort()
                return web.Response()  # never sent: the connection is gone
            if fault.name == "malformed_after":
                return web.Response(body=body[:len(body) // 2], content_type="application/json")
            return vendor.http_error(500)
        except ClientGone:
            conn.close("client_closed")
            return web.Response()  # never sent: the connection is gone


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    """A vendor's JSON error (or other) body with that status."""
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def json_frame(prefix: bytes, payload: Any) -> bytes:
    """One SSE event: `prefix` (e.g. b"data: ") + compact UTF-8 JSON + blank line."""
    return prefix + orjson.dumps(payload) + b"\n\n"
