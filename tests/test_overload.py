"""Load shedding: past its limits a relay refuses new streams at once (503 overloaded, Retry-After), /readyz follows."""

import asyncio
import json
import time
from contextlib import AsyncExitStack

import httpx
import pytest
import websockets

from clients import TIMEOUT, chat_body, expected_text, read_some, text_of
from test_operations import samples, value

LONG = "long\n#mock tokens=400 interval_ms=20"


async def refused(down: str, base: str) -> tuple[dict, dict]:
    """Try to start a stream on `down`: (the error, the HTTP headers or {} on WS)."""
    if down == "ws":
        async with websockets.connect(base.replace("http", "ws", 1) + "/v1/chat/ws") as ws:
            await ws.send(json.dumps({"type": "chat", **chat_body("one more", "openai")}))
            return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)), {}
    path, body = (("/v1/chat/sse", chat_body("one more", "openai")) if down == "sse" else
                  ("/v1/chat/completions", {"model": "openai", "stream": True,
                                            "messages": [{"role": "user", "content": "one more"}]}))
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        response = await client.post(base + path, json=body)
    return {"http_status": response.status_code, **response.json()["error"]}, dict(response.headers)


async def ready(base: str) -> tuple[int, dict]:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        response = await client.get(f"{base}/readyz")
    return response.status_code, response.json()


async def until_ready(base: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        while (await ready(base))[0] != 200:
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("down", ["sse", "ws", "openai"])
async def test_max_active_streams_refuses_then_admits_again(make_relay, down):
    """At max_active_streams live streams a new one is refused with 503 overloaded (Retry-After on HTTP,
    retryable on WS), /readyz is 503 with the reason, /healthz stays 200; when one ends, streams start again."""
    base = f"http://127.0.0.1:{(await make_relay(limits={'max_active_streams': 2, 'overload_retry_after_s': 3})).port}"
    async with AsyncExitStack() as held, httpx.AsyncClient(timeout=TIMEOUT) as client:
        for i in range(2):  # two live streams, held open
            response = await held.enter_async_context(
                client.stream("POST", f"{base}/v1/chat/sse", json={**chat_body(LONG, "openai"), "stream_id": f"s{i}"}))
            assert response.status_code == 200
        error, headers = await refused(down, base)
        assert error["code"] == "overloaded" and "max_active_streams" in error["message"], error
        if down == "ws":
            assert error["type"] == "error" and error["retryable"] is True
        else:
            assert error["http_status"] == 503 and headers["retry-after"] == "3"
        status, body = await ready(base)
        assert status == 503 and "max_active_streams" in body["reason"]
        health = await client.get(f"{base}/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        m = samples((await client.get(f"{base}/metrics")).text)
        assert value(m, "matrix_requests_refused_total", code="overloaded") == 1
        assert value(m, "matrix_overloaded") == 1
        await client.post(f"{base}/v1/streams/s0/cancel")
        await until_ready(base)
    prompt = "admitted again\n#mock tokens=5 interval_ms=1"
    events = await read_some(down if down != "openai" else "sse", base, body=chat_body(prompt, "openai"))
    assert events[-1]["type"] == "done" and text_of(events) == expected_text(prompt)


async def test_loop_lag_sheds_while_the_loop_is_behind(make_relay):
    """While the relay's event loop stays behind by more than max_loop_lag_ms, new streams get 503 overloaded
    and /readyz 503; /healthz answers 200 with the lag; once the loop catches up, streams start again."""
    base = f"http://127.0.0.1:{(await make_relay(limits={'max_loop_lag_ms': 20})).port}"
    await until_ready(base)
    hogging = True

    async def hog() -> None:  # real lag on the loop the relay runs on: 100 ms of blocking work, again and again
        while hogging:
            time.sleep(0.1)
            await asyncio.sleep(0)

    task = asyncio.get_running_loop().create_task(hog())
    try:
        async with asyncio.timeout(TIMEOUT):
            while (await ready(base))[0] != 503:
                pass
        error, headers = await refused("sse", base)
        assert error["http_status"] == 503 and error["code"] == "overloaded", error
        assert "event loop" in error["message"] and headers["retry-after"] == "1"
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            health = await client.get(f"{base}/healthz")
        assert health.status_code == 200 and health.json()["loop_lag_ms"] > 20
    finally:
        hogging = False
        await task
    await until_ready(base)
    prompt = "caught up\n#mock tokens=5 interval_ms=1"
    events = await read_some("ws", base, body=chat_body(prompt, "openai"))
    assert events[-1]["type"] == "done" and text_of(events) == expected_text(prompt)


async def test_shedding_is_off_by_default_for_active_streams(relay_url):
    """Without max_active_streams, many live streams start: the default sheds only on sustained loop lag."""
    async with AsyncExitStack() as held, httpx.AsyncClient(timeout=TIMEOUT) as client:
        for i in range(20):
            response = await held.enter_async_context(
                client.stream("POST", f"{relay_url}/v1/chat/sse", json=chat_body(f"long {i}\n#mock tokens=400 interval_ms=20", "openai")))
            assert response.status_code == 200
        assert (await ready(relay_url))[0] == 200
