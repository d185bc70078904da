"""Backpressure: a slow reader gets merged deltas and every byte; a reader that stops is let go.

A reader that keeps up gets each event written in the provider data's own loop pass (the
direct path); one whose socket is full gets them from its task, merged. Both paths must
give the same answer, exactly once, however the client's reading stalls and resumes.
"""

import asyncio
import json
import socket
import uuid

import httpx
import pytest
import websockets
from httpx_sse import EventSource
from hypothesis import HealthCheck, given, settings, strategies as st

from clients import TIMEOUT, assert_well_formed, chat_body, expected_text, text_of
from test_operations import samples, value
from test_stop import provider_connection

SMALL_WINDOW = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)]  # the client's kernel holds little: stalls reach the relay


async def stalling_read(down: str, base: str, *, body: dict | None = None, stream_id: str | None = None,
                        after: int = -1, stalls: dict[int, float], limit: int | None = None) -> list[dict]:
    """Like clients.read_some, through a small receive window, reading nothing for `stalls[n]` s after event n."""
    events: list[dict] = []

    async def took(event: dict) -> bool:
        events.append(event)
        if len(events) in stalls:
            await asyncio.sleep(stalls[len(events)])
        return event["type"] in ("done", "error") or (limit is not None and len(events) >= limit)

    async with asyncio.timeout(TIMEOUT):
        if down == "sse":
            transport = httpx.AsyncHTTPTransport(socket_options=SMALL_WINDOW)
            async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as client:
                request = (client.stream("POST", f"{base}/v1/chat/sse", json=body) if body is not None else
                           client.stream("GET", f"{base}/v1/streams/{stream_id}/events",
                                         headers={"Last-Event-ID": str(after)}))
                async with request as response:
                    async for sse in EventSource(response).aiter_sse():
                        if sse.data and await took(json.loads(sse.data)):
                            break
        else:
            sock = socket.socket()
            sock.setsockopt(*SMALL_WINDOW[0])
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", int(base.rsplit(":", 1)[1])))
            async with websockets.connect(base.replace("http", "ws", 1) + "/v1/chat/ws", sock=sock,
                                          max_queue=1) as ws:
                message = {"type": "chat", **body} if body is not None else \
                    {"type": "resume", "stream_id": stream_id, "after": after}
                await ws.send(json.dumps(message))
                async for frame in ws:
                    if await took(json.loads(frame)):
                        break
    return events


async def writes(base: str) -> tuple[float, float]:
    """matrix_client_writes_total: (direct, awaited)."""
    async with httpx.AsyncClient() as client:
        m = samples((await client.get(f"{base}/metrics")).text)
    return (value(m, "matrix_client_writes_total", path="direct"),
            value(m, "matrix_client_writes_total", path="awaited"))


@pytest.mark.parametrize("down", ["sse", "ws"])
async def test_stalled_reader_gets_every_byte_in_fewer_deltas(make_relay, down):
    """A reader that stalls mid-stream receives the exact answer in fewer deltas than provider tokens:
    written directly while it keeps up, merged by its task while its socket is full."""
    base = f"http://127.0.0.1:{(await make_relay(client_send_buffer_bytes=4096)).port}"
    prompt = f"flood {down}\n#mock tokens=3000 interval_ms=0"
    events = await stalling_read(down, base, body=chat_body(prompt, "openai"), stalls={3: 0.5})
    assert_well_formed(events)
    assert events[-1]["type"] == "done" and text_of(events) == expected_text(prompt)
    assert len(events) < 3000
    await asyncio.sleep(0.1)  # the connection's counts are added when it closes
    direct, awaited = await writes(base)
    assert direct > 0 and awaited > 0, (direct, awaited)


@pytest.mark.parametrize("engine", ["memory", "redis"])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(down=st.sampled_from(["sse", "ws"]),
       stalls=st.dictionaries(st.integers(1, 40), st.sampled_from([0.0, 0.005, 0.05, 0.2]), max_size=4),
       drop=st.one_of(st.none(), st.integers(2, 30)),
       again=st.sampled_from(["sse", "ws"]),
       interval=st.sampled_from([0, 1]))
async def test_stalls_and_resumes_anywhere_give_the_exact_answer(make_relay, engine, down, stalls, drop, again,
                                                                 interval):
    """Whatever mix of direct and task writes stalls cause, with a drop and resume anywhere, every event
    comes exactly once and the text is byte-exact."""
    base = f"http://127.0.0.1:{(await make_relay(client_send_buffer_bytes=4096, disconnect_grace_s=5)).port}"
    sid = uuid.uuid4().hex[:12]
    prompt = f"stall {sid}\n#mock tokens=400 interval_ms={interval}"
    events = await stalling_read(down, base, body={**chat_body(prompt, "openai"), "stream_id": sid},
                                 stalls=stalls, limit=drop)
    if events[-1]["type"] not in ("done", "error"):
        events += await stalling_read(again, base, stream_id=sid, after=events[-1]["seq"],
                                      stalls={n - len(events): s for n, s in stalls.items() if n > len(events)})
    assert_well_formed(events)
    assert events[-1]["type"] == "done" and text_of(events) == expected_text(prompt)


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
