"""No leaks: after 1,000 streams of mixed outcomes, tasks, file descriptors and streams return to baseline."""

import asyncio
import json
import os
import random

import aiohttp

from clients import UPSTREAMS, chat_body
from matrix.appkeys import RELAY

N = 1000
OUTCOMES = ("complete", "cancel", "disconnect", "fault")


async def one_stream(session: aiohttp.ClientSession, base: str, i: int) -> str:
    outcome = OUTCOMES[i % len(OUTCOMES)]
    fault = " fault=drop_after:2" if outcome == "fault" else ""
    body = {**chat_body(f"leak {i}\n#mock tokens=8 interval_ms=2{fault}", random.choice(sorted(UPSTREAMS))),
            "stream_id": f"leak-{i}"}
    if i % 2:
        async with session.post(f"{base}/v1/chat/sse", json=body) as response:
            async for line in response.content:
                if line.startswith(b"event: delta"):
                    if outcome == "cancel":
                        await session.post(f"{base}/v1/streams/leak-{i}/cancel")
                    elif outcome == "disconnect":
                        return outcome
    else:
        async with session.ws_connect(f"{base}/v1/chat/ws") as ws:
            await ws.send_str(json.dumps({"type": "chat", **body}))
            async for message in ws:
                event = json.loads(message.data)
                if event["type"] == "delta":
                    if outcome == "cancel":
                        await ws.send_str(json.dumps({"type": "cancel", "stream_id": f"leak-{i}"}))
                    elif outcome == "disconnect":
                        return outcome
                if event["type"] in ("done", "error"):
                    break
    return outcome


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settle(relay, seconds: float) -> None:
    """Wait for streams to expire, then empty the upstream connection pools (a cache, not a leak)."""
    async with asyncio.timeout(seconds):
        while relay.engine.streams or relay._pumps:
            await asyncio.sleep(0.05)
    for upstream in relay.upstreams.values():
        await upstream.aclose()
    await asyncio.sleep(0.5)  # let closed sockets finish closing on both ends


async def test_thousand_mixed_streams_leave_nothing_behind(make_relay):
    """Tasks, open fds and held streams return to their baseline after 1,000 mixed streams."""
    server = await make_relay(replay_ttl_s=0.3)
    relay, base = server.app[RELAY], f"http://127.0.0.1:{server.port}"
    limit = asyncio.Semaphore(50)

    async def run(session, i):
        async with limit:
            return await asyncio.wait_for(one_stream(session, base, i), 15)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(run(session, i) for i in range(8)))  # warm up pools and imports
    await settle(relay, 10)
    tasks, fds = len(asyncio.all_tasks()), open_fds()

    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(run(session, i) for i in range(N)))
    assert sorted(set(results)) == sorted(OUTCOMES)
    await settle(relay, 20)
    engine = relay.engine
    assert engine.streams == {} and relay._pumps == {} and engine._grace == {} and engine._expiry == {}
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert len(left) + 1 <= tasks, [(t.get_coro().__qualname__, t.get_stack(limit=3)) for t in left]
    assert open_fds() <= fds + 2, (open_fds(), fds)
