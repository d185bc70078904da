"""One blocking XREAD per relay: a hundred streams followed on another relay than their owner's share one connection."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as redis

from clients import assert_well_formed, chat_body, expected_text, read_some, text_of
from cluster import cluster
from test_cluster import SSE_UP, new_id, progressed

STREAMS = 100


@pytest.fixture
async def pair(tmp_path, mock_url):
    async with cluster(tmp_path, mock_url, replicas=2, config_extra="[limits]\nmax_streams_per_client = 1000\n"
                                                                    "burst = 1000\n") as the_cluster:
        yield the_cluster


async def blocked_readers(url: str) -> list[dict]:
    """Redis's clients whose last command is XREAD (CLIENT LIST), as dicts."""
    client = redis.from_url(url)
    try:
        return [c for c in await client.client_list() if c["cmd"] == "xread"]
    finally:
        await client.aclose()


async def test_hundred_followed_streams_share_one_xread(pair):
    (_, a), (_, b) = pair.replicas
    prompts = {new_id(): f"fan {i}\n#mock tokens=60 interval_ms=50" for i in range(STREAMS)}
    starters = {sid: asyncio.create_task(read_some("sse", a, body={**chat_body(p, SSE_UP), "stream_id": sid}))
                for sid, p in prompts.items()}
    for sid in prompts:
        await progressed(a, sid, 1)
    followers = {sid: asyncio.create_task(read_some("ws" if i % 2 else "sse", b, stream_id=sid, after=-1))
                 for i, sid in enumerate(prompts)}
    for sid in prompts:
        await progressed(b, sid, 10)  # every follower is attached by now, the streams still live
    readers = await blocked_readers(pair.redis.url)
    assert len(readers) == 1, readers  # B's one reader; A follows nothing that another relay writes
    for sid in prompts:  # followers on B and the owner's own clients on A: every answer whole
        for events in (await followers[sid], await starters[sid]):
            assert_well_formed(events)
            assert text_of(events) == expected_text(prompts[sid])
