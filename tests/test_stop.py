"""Stop: a WS cancel, POST /v1/streams/{id}/cancel, or a vanished client closes the provider connection fast."""

import asyncio
import json
import time
import uuid

import httpx
import openai
import pytest
import websockets
from httpx_sse import aconnect_sse

from clients import TIMEOUT, UPSTREAMS, assert_well_formed, chat_body

HOWS = {"sse": ("http_cancel", "disconnect"), "ws": ("ws_cancel", "http_cancel", "disconnect"),
        "openai": ("disconnect",)}  # the OpenAI-compatible door: no stream id to cancel, no resume
CASES = [(down, up, how) for down in HOWS for up in UPSTREAMS for how in HOWS[down]]
STOP_BUDGET_S = 0.1


async def provider_connection(mock_url: str, tag: str, *, ended: bool) -> dict:
    """Poll the mock's stats until the tagged connection exists (and has ended, if asked)."""
    async with httpx.AsyncClient() as client:
        async with asyncio.timeout(TIMEOUT):
            while True:
                stats = (await client.get(f"{mock_url}/_mock/stats", params={"tag": tag})).json()
                conns = stats["connections"]
                if conns and (not ended or conns[0]["outcome"] != "open"):
                    assert len(conns) == 1
                    return conns[0]
                await asyncio.sleep(0.01)


async def http_cancel(relay_url: str, stream_id: str, stopped: list[float]) -> None:
    async with httpx.AsyncClient() as client:  # built before the clock starts: it costs tens of ms
        stopped.append(time.monotonic())
        response = await client.post(f"{relay_url}/v1/streams/{stream_id}/cancel")
    assert response.status_code == 200 and response.json()["stream_id"] == stream_id


async def run_sse(relay_url, body, how, stopped):
    events = []
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        async with aconnect_sse(client, "POST", f"{relay_url}/v1/chat/sse", json=body) as source:
            async for sse in source.aiter_sse():
                events.append(json.loads(sse.data))
                if len(events) == 4 and not stopped:
                    if how == "disconnect":
                        stopped.append(time.monotonic())
                        return events  # leaving the block closes the connection
                    await http_cancel(relay_url, body["stream_id"], stopped)
    return events


async def run_ws(relay_url, body, how, stopped):
    events = []
    async with websockets.connect(relay_url.replace("http", "ws") + "/v1/chat/ws") as ws:
        await ws.send(json.dumps({"type": "chat", **body}))
        async for frame in ws:
            events.append(json.loads(frame))
            if events[-1]["type"] in ("done", "error"):
                break
            if len(events) == 4 and not stopped:
                if how == "http_cancel":
                    await http_cancel(relay_url, body["stream_id"], stopped)
                    continue
                stopped.append(time.monotonic())
                if how == "disconnect":
                    return events
                await ws.send(json.dumps({"type": "cancel", "stream_id": body["stream_id"]}))
    return events


async def run_openai(relay_url, body, how, stopped):
    """The official openai package streams through the front door and closes the stream after 4 chunks."""
    async with openai.AsyncOpenAI(base_url=f"{relay_url}/v1", api_key="none", max_retries=0) as client:
        chunks = await client.chat.completions.create(model=body["upstream"], messages=body["messages"], stream=True)
        seen = 0
        async for _ in chunks:
            seen += 1
            if seen == 4:
                stopped.append(time.monotonic())
                await chunks.close()
                break
    return []


RUNNERS = {"sse": run_sse, "ws": run_ws, "openai": run_openai}


@pytest.mark.parametrize("down,up,how", CASES, ids=[f"{d}-{UPSTREAMS[u]}-{u}-{h}" for d, u, h in CASES])
async def test_stop_closes_provider_connection(relay_url, mock_url, down, up, how):
    """The provider connection closes within 100 ms of the stop; the asking client gets done/cancelled."""
    tag = uuid.uuid4().hex[:10]
    body = {**chat_body(f"stop me\n#mock tokens=500 interval_ms=10 tag={tag}", up), "stream_id": tag}
    stopped: list[float] = []
    async with asyncio.timeout(TIMEOUT):
        events = await RUNNERS[down](relay_url, body, how, stopped)
    conn = await provider_connection(mock_url, tag, ended=True)
    assert conn["outcome"] == "client_closed"
    assert conn["closed_at"] - stopped[0] < STOP_BUDGET_S, conn
    assert conn["tokens_sent"] < 500
    if how != "disconnect":
        assert_well_formed(events)
        assert events[-1]["type"] == "done" and events[-1]["reason"] == "cancelled"


async def test_cancel_of_unknown_stream_is_404(relay_url):
    """Cancelling a stream that does not exist answers 404 stream_not_found."""
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{relay_url}/v1/streams/nope/cancel")
    assert response.status_code == 404 and response.json()["error"]["code"] == "stream_not_found"


async def test_stop_during_first_token_wait(relay_url, mock_url):
    """A stop while the provider has not sent anything yet still closes its connection at once."""
    tag = uuid.uuid4().hex[:10]
    body = {**chat_body(f"slow\n#mock first_token_ms=5000 tag={tag}", "openai"), "stream_id": tag}
    async with websockets.connect(relay_url.replace("http", "ws") + "/v1/chat/ws") as ws:
        await ws.send(json.dumps({"type": "chat", **body}))
        assert json.loads(await ws.recv())["type"] == "start"
        await provider_connection(mock_url, tag, ended=False)
        stopped = time.monotonic()
        await ws.send(json.dumps({"type": "cancel", "stream_id": tag}))
        end = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert end["type"] == "done" and end["reason"] == "cancelled"
    conn = await provider_connection(mock_url, tag, ended=True)
    assert conn["outcome"] == "client_closed" and conn["closed_at"] - stopped < STOP_BUDGET_S


@pytest.mark.parametrize("down", ["sse", "ws"])
async def test_client_gone_right_after_starting_stops_the_provider(make_relay, mock_url, down):
    """A client that leaves before its first event (even before the answer's headers) is one
    whose stream nobody follows: the provider is stopped after the grace, not run to the end."""
    relay = await make_relay(disconnect_grace_s=0.3)
    tag = uuid.uuid4().hex[:8]
    body = json.dumps({**chat_body(f"gone\n#mock tokens=2000 interval_ms=20 tag={tag}", "openai"),
                       "stream_id": tag})
    if down == "sse":
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(f"POST /v1/chat/sse HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        await writer.drain()
        writer.close()  # gone before reading a byte
    else:
        async with websockets.connect(f"ws://127.0.0.1:{relay.port}/v1/chat/ws") as ws:
            await ws.send(json.dumps({"type": "chat", **json.loads(body)}))
    conn = await provider_connection(mock_url, tag, ended=True)
    assert conn["outcome"] == "client_closed" and conn["tokens_sent"] < 1000
