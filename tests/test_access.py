"""Client auth, cross-origin safety and abuse limits: each refusal is a clear 4xx or error event with a code."""

import asyncio
import json

import httpx
import pytest
import websockets

from clients import TIMEOUT, chat_body, read_some

KEY, OTHER = "tm-key-alice", "tm-key-bob"


@pytest.fixture
async def auth_url(aiohttp_server, mock, monkeypatch):
    """A relay with two API keys (one from ${ENV}) and one allow-listed origin."""
    from matrix.app import create_app
    from matrix.config import Settings
    from mock_ai import relay_upstreams
    monkeypatch.setenv("TM_TEST_KEY", KEY)
    settings = Settings(upstreams=relay_upstreams(f"127.0.0.1:{mock.port}"),
                        auth={"keys": ["${TM_TEST_KEY}", OTHER]},
                        server={"allowed_origins": ["https://app.example"]},
                        stream={"disconnect_grace_s": 5})
    server = await aiohttp_server(create_app(settings))
    return f"http://127.0.0.1:{server.port}"


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def test_sse_needs_a_valid_key(auth_url):
    """Without a key, or with a wrong one, SSE is refused with 401 unauthorized; with a key it streams."""
    body = chat_body("k\n#mock tokens=3 interval_ms=0", "openai")
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        for headers in ({}, bearer("wrong"), {"Authorization": KEY}):
            response = await client.post(f"{auth_url}/v1/chat/sse", json=body, headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
        ok = await client.post(f"{auth_url}/v1/chat/sse", json=body, headers=bearer(KEY))
        assert ok.status_code == 200 and "event: done" in ok.text
        assert (await client.get(f"{auth_url}/v1/upstreams")).status_code == 401
        assert (await client.get(f"{auth_url}/metrics")).status_code == 401
        assert (await client.get(f"{auth_url}/healthz")).status_code == 200


async def test_ws_with_single_use_ticket(auth_url):
    """A browser gets a short-lived ticket from an authenticated POST; it opens one WS, once."""
    async with httpx.AsyncClient() as client:
        ticket = (await client.post(f"{auth_url}/v1/tickets", headers=bearer(KEY))).json()["ticket"]
    url = auth_url.replace("http", "ws") + "/v1/chat/ws"
    async with websockets.connect(f"{url}?ticket={ticket}") as ws:
        await ws.send(json.dumps({"type": "chat", **chat_body("t\n#mock tokens=2 interval_ms=0", "spark")}))
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "start"
    for bad in (ticket, "forged"):
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(f"{url}?ticket={bad}"):
                pass
        assert info.value.response.status_code == 401
    async with websockets.connect(url, additional_headers=bearer(KEY)) as ws:  # non-browser clients
        await ws.send(json.dumps({"type": "chat", **chat_body("h\n#mock tokens=2 interval_ms=0", "openai")}))
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "start"


async def test_only_the_owner_may_cancel_or_resume(auth_url):
    """Another key cannot cancel or resume a stream: 403 forbidden; the owner can."""
    body = {**chat_body("own\n#mock tokens=300 interval_ms=5", "openai"), "stream_id": "owned-1"}
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        async with client.stream("POST", f"{auth_url}/v1/chat/sse", json=body, headers=bearer(KEY)) as response:
            async for line in response.aiter_lines():
                if line.startswith("event: delta"):
                    break
            for path, method in (("cancel", "POST"), ("events", "GET")):
                theirs = await client.request(method, f"{auth_url}/v1/streams/owned-1/{path}", headers=bearer(OTHER))
                assert theirs.status_code == 403 and theirs.json()["error"]["code"] == "forbidden"
            mine = await client.post(f"{auth_url}/v1/streams/owned-1/cancel", headers=bearer(KEY))
            assert mine.status_code == 200


async def test_cross_origin_refused_unless_allowed(relay_url):
    """A foreign Origin is refused on HTTP and on the WS handshake; the relay's own origin is served."""
    body = chat_body("o\n#mock tokens=2 interval_ms=0", "openai")
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        evil = await client.post(f"{relay_url}/v1/chat/sse", json=body, headers={"Origin": "https://evil.example"})
        assert evil.status_code == 403 and evil.json()["error"]["code"] == "origin_not_allowed"
        assert "Access-Control-Allow-Origin" not in evil.headers
        own = await client.post(f"{relay_url}/v1/chat/sse", json=body, headers={"Origin": relay_url})
        assert own.status_code == 200
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(relay_url.replace("http", "ws") + "/v1/chat/ws",
                                      origin="https://evil.example"):
            pass
    assert info.value.response.status_code == 403


async def test_allow_listed_origin_gets_cors(auth_url):
    """An allow-listed origin gets a preflight answer and Access-Control-Allow-Origin on the stream."""
    origin = {"Origin": "https://app.example"}
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        pre = await client.options(f"{auth_url}/v1/chat/sse", headers={
            **origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"})
        assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
        ok = await client.post(f"{auth_url}/v1/chat/sse", headers={**origin, **bearer(KEY)},
                               json=chat_body("c\n#mock tokens=2 interval_ms=0", "openai"))
        assert ok.status_code == 200 and ok.headers["Access-Control-Allow-Origin"] == "https://app.example"


async def test_message_limits(make_relay):
    """Too many messages or a too long message is refused with 413 and a code."""
    relay = await make_relay()
    base = f"http://127.0.0.1:{relay.port}"
    from matrix.appkeys import RELAY
    limits = relay.app[RELAY].settings.limits
    limits.max_messages, limits.max_message_chars = 3, 50
    async with httpx.AsyncClient() as client:
        many = await client.post(f"{base}/v1/chat/sse", json={"messages": [{"role": "user", "content": "x"}] * 4})
        long = await client.post(f"{base}/v1/chat/sse", json=chat_body("y" * 51))
    assert many.status_code == 413 and many.json()["error"]["code"] == "too_many_messages"
    assert long.status_code == 413 and long.json()["error"]["code"] == "message_too_long"


async def test_streams_per_socket_limit(make_relay):
    """A socket over max_streams_per_socket gets too_many_streams; its live streams go on."""
    relay = await make_relay()
    from matrix.appkeys import RELAY
    relay.app[RELAY].settings.limits.max_streams_per_socket = 2
    url = f"ws://127.0.0.1:{relay.port}/v1/chat/ws"
    async with websockets.connect(url) as ws:
        for i in range(3):
            await ws.send(json.dumps({"type": "chat", "stream_id": f"sock-{i}",
                                      **chat_body("s\n#mock tokens=50 interval_ms=10", "openai")}))
        refused = None
        async with asyncio.timeout(TIMEOUT):
            while refused is None:
                event = json.loads(await ws.recv())
                if event["type"] == "error" and "seq" not in event:
                    refused = event
    assert refused["code"] == "too_many_streams" and refused["stream_id"] == "sock-2"


async def test_rate_limit_per_client(make_relay):
    """Stream starts beyond the token bucket are refused with 429 rate_limited, retryable."""
    relay = await make_relay()
    from matrix.appkeys import RELAY
    limits = relay.app[RELAY].settings.limits
    limits.burst, limits.starts_per_minute = 2, 1
    base = f"http://127.0.0.1:{relay.port}"
    async with httpx.AsyncClient() as client:
        codes = [(await client.post(f"{base}/v1/chat/sse", json=chat_body("r\n#mock tokens=1 interval_ms=0",
                                                                          "openai"))).status_code
                 for _ in range(3)]
        last = await client.post(f"{base}/v1/chat/sse", json=chat_body("r", "openai"))
    assert codes == [200, 200, 429]
    assert last.json()["error"]["code"] == "rate_limited"


async def test_concurrent_streams_per_client_limit(make_relay):
    """Live streams per client beyond max_streams_per_client are refused with 429 too_many_streams."""
    relay = await make_relay()
    from matrix.appkeys import RELAY
    relay.app[RELAY].settings.limits.max_streams_per_client = 1
    base = f"http://127.0.0.1:{relay.port}"
    first = asyncio.create_task(read_some("sse", base, body=chat_body("a\n#mock tokens=30 interval_ms=10", "openai")))
    await asyncio.sleep(0.1)
    async with httpx.AsyncClient() as client:
        second = await client.post(f"{base}/v1/chat/sse", json=chat_body("b", "openai"))
    assert second.status_code == 429 and second.json()["error"]["code"] == "too_many_streams"
    assert (await first)[-1]["type"] == "done"


async def test_slowloris_connection_is_closed(make_relay):
    """A client trickling its request headers is disconnected after header_timeout_s."""
    from matrix.app import create_app, start_site
    from matrix.appkeys import RELAY
    server = await make_relay()
    settings = server.app[RELAY].settings
    runner, port = await start_site(create_app(settings), "127.0.0.1", 0, header_timeout_s=0.5)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/chat/sse HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            for _ in range(20):
                writer.write(b"X-Slow: 1\r\n")
                await asyncio.sleep(0.1)
                if reader.at_eof():
                    break
            assert await reader.read() == b""  # the relay closed the connection
        writer.close()
    finally:
        await runner.cleanup()
