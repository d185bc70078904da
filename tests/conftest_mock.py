"""Shared by the mock provider tests: servers on real loopback ports, request builders, a client per vendor."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import httpx_sse
import pytest
import websockets

from mock_ai import create_app, running
from upstreams.spark_auth import signed_url

WAIT = 5.0  # bound on every wait, so a bug fails fast instead of hanging
VENDORS = ("spark", "baidu-agent", "openai", "anthropic", "openai-realtime")
BAIDU_PATH = "/assistant/conversation?appId=mock-agent&secretKey=mock-secret"
OPENAI_HEADERS = {"Authorization": "Bearer mock-key"}
ANTHROPIC_HEADERS = {"x-api-key": "mock-key", "anthropic-version": "2023-06-01"}

Start = Callable[..., Awaitable[str]]
# Built once: loading the CA bundle blocks the event loop ~30 ms, and the server under
# test shares that loop, so a client made per call would delay what the tests time.
TLS = ssl.create_default_context()


def http_client(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, timeout=WAIT, verify=TLS)


@pytest.fixture
async def start_mock(aiohttp_server: Any) -> Start:
    """Start `create_app(**kw)` under pytest-aiohttp's test server; returns its base URL."""
    async def start(**kw: Any) -> str:
        server = await aiohttp_server(create_app(**kw))
        return str(server.make_url("")).rstrip("/")
    return start


@pytest.fixture
async def mock_url(start_mock: Start) -> str:
    return await start_mock()


@pytest.fixture
async def start_plain() -> AsyncIterator[Start]:
    """Start the app the way `matrix mock` does: a plain `web.AppRunner`, no handler cancellation."""
    async with AsyncExitStack() as stack:
        async def start(**kw: Any) -> str:
            return await stack.enter_async_context(running("127.0.0.1", 0, **kw))
        yield start


@pytest.fixture(params=["test_server", "app_runner"])
def start_any(request: pytest.FixtureRequest) -> Start:
    """Either way of running the app, since aiohttp tells handlers about disconnects differently."""
    return request.getfixturevalue("start_mock" if request.param == "test_server" else "start_plain")


def openai_request(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "qwen-plus", "messages": [{"role": "system", "content": "be brief"},
                                               {"role": "user", "content": text}], **extra}


def baidu_request(text: str, **extra: Any) -> dict[str, Any]:
    return {"message": {"content": {"type": "text", "value": {"showText": text}}},
            "source": "mock-agent", "from": "openapi", "openId": "user-1", **extra}


def anthropic_request(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "claude-mock", "max_tokens": 1024, "system": "be brief",
            "messages": [{"role": "user", "content": text}], **extra}


def realtime_url(base: str, model: str = "gpt-realtime") -> str:
    return f"{base.replace('http://', 'ws://', 1)}/v1/realtime?model={model}"


async def realtime_ask(ws: Any, text: str, **response: Any) -> None:
    """Send one user message and `response.create` on an open Realtime session."""
    await ws.send(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}))
    await ws.send(json.dumps({"type": "response.create", **({"response": response} if response else {})}))


def spark_request(text: str, domain: str = "generalv3.5", app_id: str = "mock-app") -> str:
    return json.dumps({"header": {"app_id": app_id, "uid": "user-1"},
                       "parameter": {"chat": {"domain": domain, "temperature": 0.5}},
                       "payload": {"message": {"text": [{"role": "user", "content": text}]}}})


def spark_url(base: str, path: str = "/v3.5/chat", secret: str = "mock-secret", **kw: Any) -> str:
    return signed_url(base.replace("http://", "ws://", 1) + path, "mock-key", secret, **kw)


@asynccontextmanager
async def token_stream(vendor: str, base: str, text: str) -> AsyncIterator[AsyncIterator[str]]:
    """A real client of `vendor` asking `text`; yields its answer's text pieces, and on exit
    closes the connection whether or not the answer was complete."""
    if vendor == "spark":
        async with websockets.connect(spark_url(base), open_timeout=WAIT, close_timeout=WAIT) as ws:
            await ws.send(spark_request(text))

            async def spark_pieces() -> AsyncIterator[str]:
                async for message in ws:
                    frame = json.loads(message)
                    assert frame["header"]["code"] == 0, frame
                    yield frame["payload"]["choices"]["text"][0]["content"]
            yield spark_pieces()
        return
    if vendor == "openai-realtime":
        async with websockets.connect(realtime_url(base), additional_headers=OPENAI_HEADERS,
                                      open_timeout=WAIT, close_timeout=WAIT) as ws:
            await realtime_ask(ws, text)

            async def realtime_pieces() -> AsyncIterator[str]:
                async for message in ws:
                    event = json.loads(message)
                    assert event["type"] != "error", event
                    if event["type"] == "response.output_text.delta":
                        yield event["delta"]
                    elif event["type"] == "response.done":
                        return
            yield realtime_pieces()
        return
    if vendor == "anthropic":
        async with http_client(base) as client, httpx_sse.aconnect_sse(
                client, "POST", "/v1/messages", json=anthropic_request(text, stream=True),
                headers=ANTHROPIC_HEADERS) as source:

            async def anthropic_pieces() -> AsyncIterator[str]:
                async for event in source.aiter_sse():
                    if event.event == "content_block_delta":
                        yield json.loads(event.data)["delta"]["text"]
            yield anthropic_pieces()
        return
    async with http_client(base) as client:
        path, body = (BAIDU_PATH, baidu_request(text)) if vendor == "baidu-agent" else \
            ("/v1/chat/completions", openai_request(text, stream=True))
        async with httpx_sse.aconnect_sse(client, "POST", path, json=body, headers=OPENAI_HEADERS) as source:

            async def sse_pieces() -> AsyncIterator[str]:
                async for event in source.aiter_sse():
                    if event.event == "ping" or event.data == "[DONE]":
                        continue
                    payload = json.loads(event.data)
                    if vendor == "baidu-agent":
                        content = payload["data"]["message"]["content"]
                        if "data" in content[0]:
                            yield content[0]["data"]["text"]
                    elif payload["choices"] and payload["choices"][0]["delta"].get("content"):
                        yield payload["choices"][0]["delta"]["content"]
            yield sse_pieces()


async def stats(base: str, tag: str | None = None) -> dict[str, Any]:
    async with http_client(base) as client:
        response = await client.get("/_mock/stats", params={"tag": tag} if tag else None)
        response.raise_for_status()
        return response.json()


async def settled(base: str, tag: str) -> dict[str, Any]:
    """The one connection with `tag`, once it is no longer open (bounded by WAIT)."""
    async with asyncio.timeout(WAIT):
        while True:
            [conn] = (await stats(base, tag))["connections"]
            if conn["outcome"] != "open":
                return conn
            await asyncio.sleep(0.005)
