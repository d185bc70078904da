"""Stream clients: through the relay (SSE, WS, OpenAI front door) and straight to a vendor (OpenAI, Baidu; Spark).

Each reads its stream and hands every received chunk to a Tally, which finds the mock's
`[<monotonic_ns>]` stamps in the raw bytes (a merged delta may hold several) and turns each
into a latency: receipt time minus stamp, the same host clock on both ends. No JSON is
parsed per token, so the harness stays cheap next to the system under test.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import orjson

from upstreams.spark_auth import signed_url

STAMP = re.compile(rb"\[(\d+)\]")
STAMP_TEXT = re.compile(r"\[(\d+)\]")
DELTA = '{"type":"delta"'
JSON = {"Content-Type": "application/json"}
Opened = Callable[[], None]


@dataclass(eq=False)
class Tally:
    """What one stream delivered: per-token latencies (ns), first/last receipt, how it ended."""

    expected: int
    lat_ns: list[int] = field(default_factory=list)
    stream_id: str = ""     # the relay's stream id, once the request is built
    sent_ns: int = 0
    first_ns: int = 0
    last_ns: int = 0
    end_ns: int = 0         # when the terminal event arrived (SSE: the body's last chunk, which carries it)
    error: str | None = None
    ended: bool = False

    @property
    def count(self) -> int:
        return len(self.lat_ns)

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.count)

    def _got(self, stamps: list, now: int) -> None:
        if stamps:
            self.lat_ns.extend([now - int(s) for s in stamps])
            self.first_ns = self.first_ns or now
            self.last_ns = now

    def feed(self, data: bytes, now: int) -> None:
        self._got(STAMP.findall(data), now)

    def feed_text(self, data: str, now: int) -> None:
        self._got(STAMP_TEXT.findall(data), now)


def prompt(tokens: int, interval_ms: float, first_token_ms: float = 0.0, tag: str = "") -> str:
    """The last user message: a `#mock` directive with stamped tokens (mock_ai/script.py)."""
    extra = f" tag={tag}" if tag else ""
    return (f"bench\n#mock tokens={tokens} interval_ms={interval_ms:g} "
            f"first_token_ms={first_token_ms:.3f} stamp=1{extra}")


async def _read_sse(response: aiohttp.ClientResponse, tally: Tally, error_marker: bytes) -> None:
    """Feed complete events only (up to the last blank line), as an SSE parser would dispatch them."""
    rest = b""
    now = 0
    async for chunk in response.content.iter_any():
        now = time.monotonic_ns()
        data = rest + chunk if rest else chunk
        cut = data.rfind(b"\n\n")
        if cut < 0:
            rest = data
            continue
        rest = data[cut + 2:]
        complete = data[:cut] if rest else data
        tally.feed(complete, now)
        if error_marker in complete and tally.error is None:
            tally.error = complete[complete.find(error_marker):][:200].decode("utf-8", "replace")
    tally.end_ns = now
    tally.ended = True


async def _post_sse(session: aiohttp.ClientSession, url: str, body: dict, headers: dict, tally: Tally,
                    opened: Opened, error_marker: bytes) -> None:
    tally.sent_ns = time.monotonic_ns()
    async with session.post(url, data=orjson.dumps(body), headers=headers) as response:
        if response.status != 200:
            tally.error = f"HTTP {response.status}: {(await response.read())[:200]!r}"
            return
        opened()
        await _read_sse(response, tally, error_marker)


def chat_body(text: str, upstream: str, stream_id: str | None = None) -> dict:
    return {"messages": [{"role": "user", "content": text}], "upstream": upstream,
            "stream_id": stream_id or uuid.uuid4().hex}


async def relay_sse(session: aiohttp.ClientSession, base: str, body: dict, tally: Tally, opened: Opened) -> None:
    """`POST /v1/chat/sse`; the stream ends with the response body."""
    await _post_sse(session, f"{base}/v1/chat/sse", body, JSON, tally, opened, b"event: error")


async def relay_openai(session: aiohttp.ClientSession, base: str, body: dict, tally: Tally, opened: Opened) -> None:
    """The relay's OpenAI-compatible front door: `POST /v1/chat/completions`, `model` = the relay upstream.

    `chat.completion.chunk` lines until `data: [DONE]`; a mid-stream error is `data: {"error": ...}`.
    The door has no stream id (the relay's is internal) and no cancel: a client stops it by leaving.
    """
    request = {"model": body["upstream"], "messages": body["messages"], "stream": True}
    tally.stream_id = ""
    await _post_sse(session, f"{base}/v1/chat/completions", request, JSON, tally, opened, b'"error"')


async def relay_ws_chat(ws: aiohttp.ClientWebSocketResponse, body: dict, tally: Tally, opened: Opened) -> None:
    """One chat on an open relay WebSocket, until its `done` or `error` event."""
    stream_id = body["stream_id"]
    tally.sent_ns = time.monotonic_ns()
    await ws.send_str(orjson.dumps({"type": "chat", **body}).decode())
    while True:
        msg = await ws.receive()
        now = time.monotonic_ns()
        if msg.type is not aiohttp.WSMsgType.TEXT:
            tally.error = tally.error or f"socket ended: {msg.type.name}"
            return
        data = msg.data
        if data.startswith(DELTA):
            tally.feed_text(data, now)
            continue
        event = orjson.loads(data)
        if event.get("stream_id") not in (stream_id, None):
            continue
        kind = event.get("type")
        if kind == "delta":
            tally.feed_text(event.get("text", ""), now)
        elif kind == "start":
            opened()
        elif kind in ("done", "error"):
            if kind == "error":
                tally.error = f"{event.get('code')}: {event.get('message')}"[:200]
            tally.end_ns = now
            tally.ended = True
            return


async def relay_ws(session: aiohttp.ClientSession, base: str, body: dict, tally: Tally, opened: Opened) -> None:
    """`GET /v1/chat/ws`, one socket for this one stream."""
    async with session.ws_connect(f"{base}/v1/chat/ws", max_msg_size=0, compress=0) as ws:
        await relay_ws_chat(ws, body, tally, opened)


async def openai_sse(session: aiohttp.ClientSession, base: str, text: str, tally: Tally, opened: Opened) -> None:
    """Straight to the mock's OpenAI chat completions, as the relay's upstream asks."""
    body = {"model": "qwen-plus", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": text}]}
    headers = {**JSON, "Authorization": "Bearer mock-key", "Accept": "text/event-stream"}
    await _post_sse(session, f"{base}/v1/chat/completions", body, headers, tally, opened, b'"error"')


async def baidu_sse(session: aiohttp.ClientSession, base: str, text: str, tally: Tally, opened: Opened) -> None:
    """Straight to the mock's Baidu agent conversation endpoint."""
    body = {"message": {"content": {"type": "text", "value": {"showText": text}}},
            "source": "mock-agent", "from": "openapi", "openId": "bench"}
    url = f"{base}/assistant/conversation?appId=mock-agent&secretKey=mock-secret"
    await _post_sse(session, url, body, {**JSON, "Accept": "text/event-stream"}, tally, opened, b'"status":1')


async def spark_ws(session: aiohttp.ClientSession, base: str, text: str, tally: Tally, opened: Opened) -> None:
    """Straight to the mock's Spark WS: signed URL, one request frame, frames until the server closes."""
    frame = {"header": {"app_id": "mock-app", "uid": "bench"},
             "parameter": {"chat": {"domain": "generalv3.5"}},
             "payload": {"message": {"text": [{"role": "user", "content": text}]}}}
    tally.sent_ns = time.monotonic_ns()
    url = signed_url(base.replace("http", "ws", 1) + "/v3.5/chat", "mock-key", "mock-secret")
    async with session.ws_connect(url, max_msg_size=0, compress=0) as ws:
        await ws.send_str(orjson.dumps(frame).decode())
        opened()
        async for msg in ws:
            now = time.monotonic_ns()
            if msg.type is aiohttp.WSMsgType.TEXT:
                tally.feed_text(msg.data, now)
                if '"code":0,' not in msg.data[:40]:
                    tally.error = msg.data[:200]
    tally.ended = True


Vendor = Callable[[aiohttp.ClientSession, str, str, Tally, Opened], Awaitable[None]]
VENDORS: dict[str, tuple[str, Vendor]] = {  # relay upstream name -> (transport, direct client)
    "openai": ("sse", openai_sse),
    "baidu": ("sse", baidu_sse),
    "spark": ("ws", spark_ws),
}
DOWNSTREAMS = {"sse": relay_sse, "ws": relay_ws, "openai": relay_openai}  # the combination's first half
CANCEL_BY_ID = {"sse", "ws"}  # downstreams whose client knows the stream id (`POST /v1/streams/{id}/cancel`)
