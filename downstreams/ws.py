"""WebSocket downstream: `GET /v1/chat/ws`, JSON text frames both ways, many streams per socket.

Client messages: `{"type": "chat", ...ChatRequest}`, `{"type": "cancel", "stream_id"}`,
`{"type": "resume", "stream_id", "after"}`. Each event goes out as one text frame. A bad
message is answered with an `error` event (no `seq`: it belongs to no stream) and the
socket keeps serving its other streams.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import WSMsgType, web

from matrix.delivery import Watchdog
from matrix.errors import MatrixError, RequestError
from matrix.events import Error, encode
from matrix.appkeys import CLIENT, RELAY
from matrix.logs import event
from matrix.relay import Relay
from matrix.request import chat_request, parse_json
from matrix.stream import Stream

log = logging.getLogger("matrix.ws")


async def chat(request: web.Request) -> web.WebSocketResponse:
    relay = request.app[RELAY]
    server, cfg = relay.settings.server, relay.settings.stream
    # aiohttp's heartbeat sends protocol pings and closes the socket when no pong comes back.
    ws = web.WebSocketResponse(heartbeat=cfg.heartbeat_s, compress=False, max_msg_size=server.max_ws_frame_bytes)
    watchdog = Watchdog.for_request(request, cfg)  # pings are aiohttp's heartbeat above
    try:
        await ws.prepare(request)
    except ConnectionResetError:
        return ws  # the client left during the handshake: nothing to serve, nothing to log
    socket = Socket(relay, ws, request[CLIENT], watchdog)
    event(log, "ws open", client=request[CLIENT])
    try:
        with socket.watchdog:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    await socket.handle(message.data)
                elif message.type is WSMsgType.BINARY:
                    await socket.refuse(RequestError("binary frames are not accepted; send JSON text frames",
                                                     code="unsupported_frame"))
    finally:
        await socket.close()
        relay.metrics.connection_closed(socket.watchdog, "ws")
        event(log, "ws close", client=request[CLIENT], code=ws.close_code, slow=socket.watchdog.gave_up)
    return ws


class Socket:
    """The streams one WebSocket carries, each followed by its own task."""

    def __init__(self, relay: Relay, ws: web.WebSocketResponse, client: str, watchdog: Watchdog) -> None:
        self.relay = relay
        self.ws = ws
        self.client = client
        self.watchdog = watchdog
        self.followers: set[asyncio.Task] = set()

    async def handle(self, data: str) -> None:
        stream_id = None
        try:
            body = parse_json(data)
            if not isinstance(body, dict):
                raise RequestError("a message must be a JSON object", code="invalid_request")
            stream_id = body.get("stream_id") if isinstance(body.get("stream_id"), str) else None
            kind = body.pop("type", None)
            if kind == "chat":
                limit = self.relay.settings.limits.max_streams_per_socket
                if len(self.followers) >= limit:
                    raise RequestError(f"{limit} streams are already live on this socket",
                                       code="too_many_streams", status=429)
                self._follow(await self.relay.start(chat_request(body), "ws", self.client), after=-1)
            elif kind == "cancel":
                await self.relay.cancel(_required_str(body, "stream_id"), self.client)
            elif kind == "resume":
                after = body.get("after", -1)
                if not isinstance(after, int) or isinstance(after, bool):
                    raise RequestError("resume.after must be an integer seq", code="invalid_request")
                stream = await self.relay.get(_required_str(body, "stream_id"), self.client)
                stream.read(after)  # refuse a gap now, as an error for this request
                self.relay.metrics.resumes.labels("ws").inc()
                self._follow(stream, after)
            else:
                raise RequestError(f"unknown message type {kind!r}; expected chat, cancel or resume",
                                   code="invalid_request")
        except MatrixError as exc:
            await self.refuse(exc, stream_id)

    async def refuse(self, exc: MatrixError, stream_id: str | None = None) -> None:
        self.relay.metrics.refusals.labels(exc.code).inc()
        error = Error(stream_id, None, exc.code, exc.message, exc.retryable)  # type: ignore[arg-type]
        await self._send(encode(error))

    def _follow(self, stream: Stream, after: int) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(stream, after))
        self.followers.add(task)
        task.add_done_callback(self.followers.discard)

    async def _deliver(self, stream: Stream, after: int) -> None:
        try:
            with self.relay.reader(stream):
                async for batch in stream.follow(after, self._send_now):
                    for event in batch:
                        await self._send(encode(event))
        except ConnectionError:
            pass  # the socket is gone; close() ends the other followers

    def _send_now(self, batch: list) -> int:
        """In the provider's pass: the events the socket takes at once (stream.follow's `direct`)."""
        for taken, event in enumerate(batch):
            if not self.watchdog.send_now(self.ws.send_frame, encode(event), WSMsgType.TEXT):
                return taken
        return len(batch)

    async def _send(self, data: bytes) -> None:
        # Already UTF-8 JSON: no decode and re-encode.
        await self.watchdog.send(self.ws.send_frame(data, WSMsgType.TEXT))

    async def close(self) -> None:
        for task in self.followers:
            task.cancel()
        if self.followers:
            await asyncio.gather(*self.followers, return_exceptions=True)


def _required_str(body: dict, key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise RequestError(f"{key} must be a non-empty string", code="invalid_request")
    return value
