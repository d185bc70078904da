"""SSE downstream: `POST /v1/chat/sse` starts a stream, `GET /v1/streams/{id}/events` resumes one."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from aiohttp import web

from matrix import sse
from matrix.delivery import Watchdog
from matrix.errors import RequestError
from matrix.events import Event
from matrix.appkeys import CLIENT, RELAY
from matrix.logs import event
from matrix.request import chat_request, parse_json
from matrix.stream import Stream

log = logging.getLogger("matrix.sse")


async def read_body(request: web.Request) -> bytes:
    limit = request.app[RELAY].settings.server
    try:
        async with asyncio.timeout(limit.header_timeout_s):  # a body trickled byte by byte is refused
            return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise RequestError(f"request body exceeds {limit.max_body_bytes} bytes",
                           code="payload_too_large", status=413) from exc
    except TimeoutError as exc:
        raise RequestError("the request body took too long to arrive", code="request_timeout", status=408) from exc


async def chat(request: web.Request) -> web.StreamResponse:
    relay = request.app[RELAY]
    stream = await relay.start(chat_request(parse_json(await read_body(request))), "sse", request[CLIENT])
    return await follow(request, stream, after=-1)


async def resume(request: web.Request) -> web.StreamResponse:
    """Resume after `Last-Event-ID` (what EventSource sends on reconnect) or `?last_event_id=`."""
    relay = request.app[RELAY]
    stream = await relay.get(request.match_info["stream_id"], request[CLIENT])
    raw = request.headers.get("Last-Event-ID", request.query.get("last_event_id", "-1"))
    try:
        after = int(raw)
    except ValueError as exc:
        raise RequestError(f"Last-Event-ID must be an event seq, got {raw[:40]!r}", code="invalid_request") from exc
    if stream.finished and after == stream.last_seq:
        # The client has everything. 204 is what tells EventSource to stop reconnecting
        # (WHATWG HTML, server-sent events: "fail the connection").
        return web.Response(status=204)
    stream.read(after)  # refuse a gap before the response starts
    relay.metrics.resumes.labels("sse").inc()
    return await follow(request, stream, after)


async def follow(request: web.Request, stream: Stream, after: int,
                 frames: Callable[[list[Event]], bytes] = sse.frames, grace_s: float | None = None,
                 transport: str = "sse") -> web.StreamResponse:
    """Write the stream's events after `after` as `frames` renders them, with heartbeats, until its end.

    `grace_s` as in `Relay.reader`; `transport` labels logs and metrics.
    """
    relay = request.app[RELAY]
    response = web.StreamResponse(headers=sse.HEADERS)
    watchdog = Watchdog.for_request(request, relay.settings.stream, ping=lambda: response.write(sse.PING))
    try:
        # A reader from before the headers go out: a client that leaves while they do
        # (ConnectionResetError) leaves like any other, and the grace timer decides.
        with relay.reader(stream, grace_s):
            await response.prepare(request)
            with watchdog:
                def direct(batch: list[Event]) -> int:  # in the provider's pass, when the client keeps up
                    return len(batch) if watchdog.send_now(response.write, frames(batch)) else 0

                async for batch in stream.follow(after, direct):
                    await watchdog.send(response.write(frames(batch)))
    except (ConnectionError, asyncio.CancelledError) as exc:
        # The client left (aiohttp cancels the handler when its connection drops); the
        # relay's grace timer decides what happens upstream.
        event(log, "client gone", stream_id=stream.id, transport=transport, slow=watchdog.gave_up)
        if isinstance(exc, asyncio.CancelledError):
            raise
    finally:
        relay.metrics.connection_closed(watchdog, transport)
    return response
