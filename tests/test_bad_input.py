"""Bad input gets a clear error with a code, and breaks nothing else."""

import asyncio
import json

import httpx
import pytest
import websockets

from clients import TIMEOUT, chat_body, expected_text, text_of

GOOD = {"messages": [{"role": "user", "content": "hi"}]}
BAD_BODIES = [
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_request"),
    (json.dumps({"messages": "hello"}).encode(), 422, "invalid_request"),
    (json.dumps({"messages": []}).encode(), 422, "invalid_request"),
    (json.dumps({}).encode(), 422, "invalid_request"),
    (json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(), 422, "invalid_request"),
    (json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), 422, "invalid_request"),
    (json.dumps({**GOOD, "upstream": "nope"}).encode(), 404, "unknown_upstream"),
    (json.dumps({**GOOD, "stream_id": "evil\r\nevent: x"}).encode(), 422, "invalid_request"),
    (json.dumps({**GOOD, "params": {"temperature": "hot"}}).encode(), 422, "invalid_request"),
    (json.dumps({**GOOD, "extra": 1}).encode(), 422, "invalid_request"),
    (b"\xff\xfe\x00garbage", 400, "invalid_json"),
]


@pytest.mark.parametrize("body,status,code", BAD_BODIES)
async def test_sse_refuses_bad_body(relay_url, body, status, code):
    """A bad SSE request is refused before any stream with a 4xx and {"error": {"code", "message"}}."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        response = await client.post(f"{relay_url}/v1/chat/sse", content=body,
                                     headers={"Content-Type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


async def test_sse_refuses_oversized_body(make_relay):
    """A body over server.max_body_bytes is refused with 413 payload_too_large."""
    relay = await make_relay(server={"max_body_bytes": 1024})
    body = json.dumps({"messages": [{"role": "user", "content": "x" * 2000}]})
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        response = await client.post(f"http://127.0.0.1:{relay.port}/v1/chat/sse", content=body)
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


async def test_ws_bad_messages_get_errors_and_other_streams_continue(relay_url):
    """Bad WS messages each get an error event while a stream on the same socket completes."""
    prompt = "keep going\n#mock tokens=20 interval_ms=10"
    async with asyncio.timeout(TIMEOUT):
        async with websockets.connect(relay_url.replace("http", "ws") + "/v1/chat/ws") as ws:
            await ws.send(json.dumps({"type": "chat", "stream_id": "good", **chat_body(prompt, "openai")}))
            bad = ["{nope", "[]", json.dumps({"type": "dance"}), json.dumps({"type": "chat", "messages": []}),
                   json.dumps({"type": "chat", **chat_body("x", "missing")}),
                   json.dumps({"type": "cancel", "stream_id": "unknown"}),
                   json.dumps({"type": "resume", "stream_id": "good", "after": "x"})]
            for message in bad:
                await ws.send(message)
            await ws.send(b"\x00\x01binary")
            events, errors = [], []
            async for frame in ws:
                event = json.loads(frame)
                if event.get("stream_id") == "good" and "seq" in event:
                    events.append(event)
                    if event["type"] in ("done", "error"):
                        break
                else:
                    errors.append(event)
            while len(errors) < len(bad) + 1:
                errors.append(json.loads(await ws.recv()))
    assert [e["code"] for e in errors] == ["invalid_json", "invalid_request", "invalid_request", "invalid_request",
                                           "unknown_upstream", "stream_not_found", "invalid_request",
                                           "unsupported_frame"]
    assert all(e["type"] == "error" and e["message"] and "seq" not in e for e in errors)
    assert text_of(events) == expected_text(prompt) and events[-1]["type"] == "done"


async def test_ws_oversized_frame_closes_with_message_too_big(make_relay):
    """A WS frame over max_ws_frame_bytes closes that socket with 1009; the relay keeps serving."""
    relay = await make_relay(server={"max_ws_frame_bytes": 1024})
    url = f"ws://127.0.0.1:{relay.port}/v1/chat/ws"
    async with asyncio.timeout(TIMEOUT):
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "chat", **chat_body("x" * 4000)}))
            with pytest.raises(websockets.ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd.code == 1009
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{relay.port}/healthz")).status_code == 200


async def test_duplicate_stream_id_is_refused(relay_url):
    """A client-chosen stream_id already in use is refused with 409 stream_exists."""
    body = {**chat_body("dup\n#mock tokens=2 interval_ms=0", "openai"), "stream_id": "dup-1"}
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        first = await client.post(f"{relay_url}/v1/chat/sse", json=body)
        second = await client.post(f"{relay_url}/v1/chat/sse", json=body)
    assert first.status_code == 200
    assert second.status_code == 409 and second.json()["error"]["code"] == "stream_exists"
