"""Independent real clients of the relay for tests: httpx + httpx-sse for SSE, websockets for WS."""

from __future__ import annotations

import asyncio
import json

import httpx
import websockets
from httpx_sse import aconnect_sse

from mock_ai.script import Script

TIMEOUT = 15.0  # every wait is bounded: a bug fails fast instead of hanging


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
