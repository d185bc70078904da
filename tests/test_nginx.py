"""deploy/nginx.conf in front of a real relay: SSE unbuffered, WebSocket upgraded, heartbeats beat idle timers.

Runs only where `nginx` is on PATH (Debian: `apt-get install nginx-light`); `make test`
does not need it. nginx runs as this user from a temporary prefix, on a port reserved on
127.0.0.1, with the shipped config included unchanged but for its ports (and, for the
idle-timer tests, a short proxy_read_timeout).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from httpx_sse import aconnect_sse

from clients import TIMEOUT, assert_well_formed, chat_body, expected_text, free_port, text_of, ws_chat
from nginxd import NGINX, nginx_running

CONFIG = Path(__file__).parent.parent / "deploy" / "nginx.conf"

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")


def site_config(relay_port: int, port: int, **replace: str) -> str:
    """deploy/nginx.conf with this test's ports, and `replace` = {directive: new value}."""
    text = CONFIG.read_text()
    text, found_upstream = re.subn(r"server 127\.0\.0\.1:\d+;", f"server 127.0.0.1:{relay_port};", text)
    text, found_listen = re.subn(r"listen \d+;", f"listen 127.0.0.1:{port};", text)
    assert found_upstream == found_listen == 1, "deploy/nginx.conf changed shape: update this test"
    for directive, value in replace.items():
        text, found = re.subn(rf"\b{directive} [^;]+;", f"{directive} {value};", text)
        assert found, f"no {directive} in deploy/nginx.conf"
    return text


@asynccontextmanager
async def nginx_in_front(relay, tmp_path: Path, **replace: str):
    """Run nginx with deploy/nginx.conf in front of `relay`; yields its base URL."""
    port = free_port()
    async with nginx_running(site_config(relay.port, port, **replace), port, tmp_path) as base:
        yield base


async def relay_events(source):
    """The relay's events from an httpx-sse source. httpx-sse 0.4 also yields an empty
    `message` after each `: ping` comment once an id was seen: that is a heartbeat, skip it."""
    async for sse in source.aiter_sse():
        if sse.data:
            yield json.loads(sse.data)


async def timed_sse(base: str, body: dict) -> tuple[list[dict], list[float]]:
    """POST /v1/chat/sse; every event, and when each arrived (time.monotonic)."""
    events, times = [], []
    async with httpx.AsyncClient(timeout=TIMEOUT) as client, asyncio.timeout(TIMEOUT):
        async with aconnect_sse(client, "POST", f"{base}/v1/chat/sse", json=body) as source:
            assert source.response.status_code == 200
            async for event in relay_events(source):
                events.append(event)
                times.append(time.monotonic())
    return events, times


async def sse_events(base: str, body: dict) -> list[dict]:
    return (await timed_sse(base, body))[0]


@pytest.mark.parametrize("buffering", ["off", "on"], ids=["proxy_buffering-off", "x-accel-buffering-header-alone"])
async def test_sse_passes_through_nginx_unbuffered(relay, tmp_path, buffering):
    """Through nginx each SSE event arrives as it is sent, not at the end (the relay's header suffices)."""
    prompt = "through nginx\n#mock tokens=6 interval_ms=150"
    async with nginx_in_front(relay, tmp_path, proxy_buffering=buffering) as base:
        events, times = await timed_sse(base, chat_body(prompt, "openai"))
    assert_well_formed(events)
    assert text_of(events) == expected_text(prompt)
    deltas = [t for e, t in zip(events, times) if e["type"] == "delta"]
    # 6 tokens 150 ms apart: spread over ~750 ms when streamed, ~0 ms when buffered.
    assert deltas[-1] - deltas[0] > 0.5


async def test_websocket_upgrades_through_nginx(relay, tmp_path):
    """The WebSocket handshake passes through nginx and the answer streams whole; so does the page."""
    prompt = "ws through nginx\n#mock tokens=8 interval_ms=5"
    async with nginx_in_front(relay, tmp_path) as base:
        events = await ws_chat(base, chat_body(prompt, "spark"))
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            page = await client.get(f"{base}/")
    assert_well_formed(events)
    assert text_of(events) == expected_text(prompt)
    assert page.status_code == 200 and "Transport Matrix" in page.text


@pytest.mark.parametrize("down", ["sse", "ws"])
async def test_heartbeats_keep_a_silent_stream_past_nginx_idle_timer(make_relay, tmp_path, down):
    """With heartbeats under proxy_read_timeout, a provider silent for longer than it still gets through."""
    relay = await make_relay(heartbeat_s=0.3)
    prompt = "think first\n#mock tokens=3 interval_ms=5 first_token_ms=2500"
    async with nginx_in_front(relay, tmp_path, proxy_read_timeout="1s") as base:
        events = await (sse_events if down == "sse" else ws_chat)(base, chat_body(prompt, "openai"))
    assert_well_formed(events)
    assert events[-1]["type"] == "done" and text_of(events) == expected_text(prompt)


async def test_without_heartbeats_nginx_cuts_a_silent_stream(make_relay, tmp_path):
    """With heartbeats slower than proxy_read_timeout, nginx cuts a silent stream before its first token."""
    relay = await make_relay(heartbeat_s=30)
    prompt = "think first\n#mock tokens=3 interval_ms=5 first_token_ms=2500"
    events: list[dict] = []
    async with nginx_in_front(relay, tmp_path, proxy_read_timeout="1s") as base:
        started = time.monotonic()
        with pytest.raises(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=TIMEOUT) as client, asyncio.timeout(TIMEOUT):
                async with aconnect_sse(client, "POST", f"{base}/v1/chat/sse",
                                        json=chat_body(prompt, "openai")) as source:
                    async for event in relay_events(source):
                        events.append(event)
    assert [e["type"] for e in events] == ["start"]
    assert time.monotonic() - started < 2.5


async def test_resume_through_nginx_after_a_drop(make_relay, tmp_path):
    """A client that drops mid-stream resumes through nginx with Last-Event-ID and gets the rest exactly once."""
    relay = await make_relay(disconnect_grace_s=5)
    stream_id = uuid.uuid4().hex[:12]
    prompt = "resume via nginx\n#mock tokens=20 interval_ms=20"
    body = {**chat_body(prompt, "spark"), "stream_id": stream_id}
    async with nginx_in_front(relay, tmp_path) as base:
        first: list[dict] = []
        async with httpx.AsyncClient(timeout=TIMEOUT) as client, asyncio.timeout(TIMEOUT):
            async with aconnect_sse(client, "POST", f"{base}/v1/chat/sse", json=body) as source:
                async for event in relay_events(source):
                    first.append(event)
                    if len(first) == 5:
                        break  # leaving the blocks closes the connection mid-stream
            rest: list[dict] = []
            async with aconnect_sse(client, "GET", f"{base}/v1/streams/{stream_id}/events",
                                    headers={"Last-Event-ID": str(first[-1]["seq"])}) as source:
                async for event in relay_events(source):
                    rest.append(event)
    assert_well_formed(first + rest)
    assert text_of(first + rest) == expected_text(prompt)
