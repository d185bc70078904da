"""Disconnect grace, heartbeats on both hops, and the upstream idle timer."""

import asyncio
import json
import time
import uuid

import aiohttp
import httpx
import pytest

from clients import TIMEOUT, assert_well_formed, chat_body, expected_text, read_some, text_of
from test_stop import provider_connection

GRACE = 0.6


@pytest.fixture
async def graceful(make_relay):
    return f"http://127.0.0.1:{(await make_relay(disconnect_grace_s=GRACE)).port}"


@pytest.mark.parametrize("down,up", [("sse", "openai"), ("sse", "spark"), ("ws", "baidu"), ("ws", "spark")])
async def test_resume_within_grace_keeps_provider_going(graceful, mock_url, down, up):
    """A client that drops and resumes within grace gets the whole answer; the provider is never cut."""
    tag = uuid.uuid4().hex[:10]
    prompt = f"grace\n#mock tokens=40 interval_ms=10 tag={tag}"
    first = await read_some(down, graceful, body={**chat_body(prompt, up), "stream_id": tag}, limit=3)
    await asyncio.sleep(GRACE / 2)
    rest = await read_some(down, graceful, stream_id=tag, after=first[-1]["seq"])
    events = first + rest
    assert_well_formed(events)
    assert text_of(events) == expected_text(prompt)
    conn = await provider_connection(mock_url, tag, ended=True)
    assert conn["outcome"] == "completed" and conn["tokens_sent"] == 40


@pytest.mark.parametrize("down,up", [("sse", "openai"), ("ws", "spark")])
async def test_vanished_client_cancels_after_grace(graceful, mock_url, down, up):
    """A client that drops and stays away: the provider connection closes at grace, not before, within 100 ms."""
    tag = uuid.uuid4().hex[:10]
    prompt = f"vanish\n#mock tokens=1000 interval_ms=10 tag={tag}"
    await read_some(down, graceful, body={**chat_body(prompt, up), "stream_id": tag}, limit=3)
    dropped = time.monotonic()
    conn = await provider_connection(mock_url, tag, ended=True)
    assert conn["outcome"] == "client_closed"
    assert GRACE - 0.05 <= conn["closed_at"] - dropped <= GRACE + 0.1, conn["closed_at"] - dropped
    events = await read_some("ws", graceful, stream_id=tag, after=0)
    assert events[-1]["type"] == "done" and events[-1]["reason"] == "cancelled"


async def test_explicit_cancel_ignores_grace(graceful, mock_url):
    """An explicit stop closes the provider connection at once even with a disconnect grace."""
    tag = uuid.uuid4().hex[:10]
    await read_some("ws", graceful, body={**chat_body(f"x\n#mock tokens=1000 interval_ms=10 tag={tag}", "openai"),
                                          "stream_id": tag}, limit=2)
    async with httpx.AsyncClient() as client:  # built first: making a client costs tens of ms
        stopped = time.monotonic()
        await client.post(f"{graceful}/v1/streams/{tag}/cancel")
    conn = await provider_connection(mock_url, tag, ended=True)
    assert conn["closed_at"] - stopped < 0.1


async def test_sse_heartbeat_during_slow_first_token(make_relay):
    """`: ping` comments flow while the provider has not sent its first token yet."""
    relay = await make_relay(heartbeat_s=0.2)
    body = chat_body("slow\n#mock tokens=2 first_token_ms=1200 interval_ms=0", "openai")
    lines = []
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        async with client.stream("POST", f"http://127.0.0.1:{relay.port}/v1/chat/sse", json=body) as response:
            async for line in response.aiter_lines():
                lines.append(line)
    first_delta = next(i for i, line in enumerate(lines) if line == "event: delta")
    pings = [i for i, line in enumerate(lines) if line == ": ping"]
    assert len(pings) >= 3 and pings[0] < first_delta


async def test_ws_protocol_pings_and_dead_peer(make_relay, mock_url):
    """The WS downstream sends protocol pings; a peer that never answers is dropped and its stream stopped."""
    relay = await make_relay(heartbeat_s=0.2)
    tag = uuid.uuid4().hex[:10]
    body = {"type": "chat", **chat_body(f"ping\n#mock tokens=1000 interval_ms=50 tag={tag}", "openai"),
            "stream_id": tag}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://127.0.0.1:{relay.port}/v1/chat/ws", autoping=False) as ws:
            await ws.send_str(json.dumps(body))
            kinds = []
            async with asyncio.timeout(TIMEOUT):
                async for message in ws:  # never answer the pings
                    kinds.append(message.type)
            assert aiohttp.WSMsgType.PING in kinds
    conn = await provider_connection(mock_url, tag, ended=True)
    assert conn["outcome"] == "client_closed" and conn["tokens_sent"] < 100


@pytest.mark.parametrize("down", ["sse", "ws"])
async def test_vendor_keepalives_reset_idle_timer(make_relay, down):
    """Baidu's event:ping during a long first-token wait keeps the stream alive and is never forwarded."""
    relay = await make_relay(upstream_idle_timeout_s=0.8)
    prompt = "keepalive\n#mock tokens=3 first_token_ms=2000 interval_ms=0"
    events = await read_some(down, f"http://127.0.0.1:{relay.port}", body=chat_body(prompt, "baidu"))
    assert events[-1]["type"] == "done" and text_of(events) == expected_text(prompt)
    assert {e["type"] for e in events} == {"start", "delta", "done"}


async def test_silent_upstream_times_out(make_relay):
    """A provider silent for upstream_idle_timeout_s ends the stream with upstream_timeout."""
    relay = await make_relay(upstream_idle_timeout_s=0.5, retry_attempts=1)
    events = await read_some("sse", f"http://127.0.0.1:{relay.port}",
                             body=chat_body("silent\n#mock tokens=3 first_token_ms=3000", "openai"))
    assert events[-1]["type"] == "error" and events[-1]["code"] == "upstream_timeout"
    assert events[-1]["retryable"] is True
