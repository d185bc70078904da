"""Independent real clients of the relay for tests: httpx + httpx-sse for SSE, websockets for WS."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from asyncio.subprocess import Process
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import httpx
import websockets
from httpx_sse import EventSource, aconnect_sse

from mock_ai import relay_upstreams
from mock_ai.script import Script
from upstreams import DIALECTS

TIMEOUT = 15.0  # every wait is bounded: a bug fails fast instead of hanging
# Every upstream the tests' relay has (one per mock vendor) -> its transport: the
# cross-combination tests parametrise over this, so a new vendor joins them all.
UPSTREAMS = {name: DIALECTS[cfg["kind"]].Config.transport for name, cfg in relay_upstreams().items()}


def chat_body(prompt: str, upstream: str | None = None, **extra) -> dict:
    body = {"messages": [{"role": "user", "content": prompt}], **extra}
    if upstream:
        body["upstream"] = upstream
    return body


def expected_text(prompt: str) -> str:
    return Script.parse(prompt).answer_text()


async def sse_chat(base: str, body: dict) -> list[dict]:
    """POST /v1/chat/sse and collect every event until the stream ends."""
    async with asyncio.timeout(TIMEOUT):
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            async with aconnect_sse(client, "POST", f"{base}/v1/chat/sse", json=body) as source:
                assert source.response.status_code == 200, await source.response.aread()
                events = []
                async for sse in source.aiter_sse():
                    if not sse.data:  # httpx-sse yields a `: ping` comment as an empty event
                        continue
                    event = json.loads(sse.data)
                    assert sse.event == event["type"] and int(sse.id) == event["seq"]
                    events.append(event)
                return events


async def ws_chat(base: str, body: dict) -> list[dict]:
    """Send one chat message over a WebSocket and collect its events until the terminal one."""
    async with asyncio.timeout(TIMEOUT):
        async with websockets.connect(base.replace("http", "ws", 1) + "/v1/chat/ws") as ws:
            await ws.send(json.dumps({"type": "chat", **body}))
            events = []
            async for frame in ws:
                event = json.loads(frame)
                events.append(event)
                if event["type"] in ("done", "error"):
                    return events
    raise AssertionError("socket closed before a terminal event")


CHAT = {"sse": sse_chat, "ws": ws_chat}


def text_of(events: list[dict]) -> str:
    return "".join(e["text"] for e in events if e["type"] == "delta")


def assert_well_formed(events: list[dict]) -> None:
    """seq is contiguous from 0, start first, exactly one terminal event, last."""
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "start"
    assert [e["type"] for e in events].count("done") + [e["type"] for e in events].count("error") == 1
    assert events[-1]["type"] in ("done", "error")
    assert len({e["stream_id"] for e in events}) == 1


async def read_some(down: str, base: str, *, body: dict | None = None, stream_id: str | None = None,
                    after: int = -1, limit: int | None = None) -> list[dict]:
    """Start (with `body`) or resume (`stream_id` after `after`) a stream on `down`, reading at most
    `limit` events before dropping the connection; None reads to the end."""
    events: list[dict] = []

    def take(event: dict) -> bool:
        events.append(event)
        return event["type"] in ("done", "error") or (limit is not None and len(events) >= limit)

    async with asyncio.timeout(TIMEOUT):
        if down == "sse":
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                if body is not None:
                    request = client.stream("POST", f"{base}/v1/chat/sse", json=body)
                else:
                    request = client.stream("GET", f"{base}/v1/streams/{stream_id}/events",
                                            headers={"Last-Event-ID": str(after)})
                async with request as response:
                    if response.status_code != 200:
                        await response.aread()
                        return [{"type": "error", "http_status": response.status_code, **response.json()["error"]}]
                    async for sse in EventSource(response).aiter_sse():
                        if sse.data and take(json.loads(sse.data)):  # httpx-sse yields `: ping` as empty
                            break
        else:
            async with websockets.connect(base.replace("http", "ws", 1) + "/v1/chat/ws") as ws:
                if body is not None:
                    await ws.send(json.dumps({"type": "chat", **body}))
                else:
                    await ws.send(json.dumps({"type": "resume", "stream_id": stream_id, "after": after}))
                async for frame in ws:
                    if take(json.loads(frame)):
                        break
    return events


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@asynccontextmanager
async def matrix_serve(*args: str, port: int, cwd: Path | None = None) -> AsyncIterator[tuple[Process, str]]:
    """A real `matrix serve ARGS` process listening on `port`, until the block ends (killed if still up)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "matrix", "serve", *args, cwd=cwd,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client, asyncio.timeout(TIMEOUT):
            while True:
                try:
                    await client.get(f"{base}/healthz")
                    break
                except httpx.ConnectError:
                    assert proc.returncode is None, (await proc.stdout.read()).decode()  # type: ignore[union-attr]
                    await asyncio.sleep(0.05)
        yield proc, base
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
