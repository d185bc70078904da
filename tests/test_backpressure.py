"""Backpressure: a slow reader gets merged deltas and every byte; a reader that stops is let go."""

import asyncio
import json
import socket
import uuid

import httpx
import websockets

from clients import TIMEOUT, chat_body, expected_text, text_of
from test_stop import provider_connection


async def test_slow_ws_reader_gets_every_byte_in_fewer_deltas(relay_url):
    """A reader pausing mid-stream receives the exact answer, in fewer deltas than provider tokens."""
    prompt = "flood\n#mock tokens=3000 interval_ms=0"
    events = []
    async with asyncio.timeout(TIMEOUT):
        async with websockets.connect(relay_url.replace("http", "ws") + "/v1/chat/ws") as ws:
            await ws.send(json.dumps({"type": "chat", **chat_body(prompt, "openai")}))
            async for frame in ws:
                events.append(json.loads(frame))
                if len(events) == 3:
                    await asyncio.sleep(0.5)  # stop reading while the provider keeps writing
                if events[-1]["type"] in ("done", "error"):
                    break
    assert events[-1]["type"] == "done"
    assert text_of(events) == expected_text(prompt)
    assert len(events) < 3000
    assert [e["seq"] for e in events] == list(range(len(events)))


async def test_reader_that_stops_is_disconnected_and_provider_closed(make_relay, mock_url):
    """A client that reads nothing for send_timeout_s is dropped, and (grace 0) the provider connection closed."""
    relay = await make_relay(send_timeout_s=0.5, client_send_buffer_bytes=16384)
    tag = uuid.uuid4().hex[:10]
    # Long deltas fill the socket buffers quickly.
    body = chat_body(f"{'x' * 100}\n#mock tokens=200000 interval_ms=0 tag={tag}", "openai")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window: the relay's writes back up
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", relay.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    payload = json.dumps(body).encode()
    writer.write(b"POST /v1/chat/sse HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
    await writer.drain()  # ...and never read the answer
    conn = await provider_connection(mock_url, tag, ended=True)
    assert conn["outcome"] == "client_closed" and conn["tokens_sent"] < 200000, conn
    writer.close()
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://127.0.0.1:{relay.port}/healthz")).status_code == 200
