"""The Redis engine's edges: a paused owner fenced off after relay_lost, and a relay that cannot start exiting cleanly."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

import httpx
import pytest
import redis.asyncio as redis

from matrix.events import TERMINAL, decode

from clients import TIMEOUT, assert_well_formed, chat_body, read_some
from cluster import LEASE_S, cluster
from redisd import redis_server
from test_cluster import SSE_UP, long_prompt, new_id, progressed, quietly
from test_stop import provider_connection


@pytest.fixture
async def pair(tmp_path, mock_url):
    async with cluster(tmp_path, mock_url, replicas=2) as the_cluster:
        yield the_cluster


async def test_paused_owner_is_fenced_off_after_relay_lost(pair, mock_url):
    """SIGSTOP the owner past its lease: the follower gets one relay_lost; after SIGCONT the owner's
    writes are refused, it closes the provider connection itself, and Redis holds one terminal event."""
    (owner, a), (_, b) = pair.replicas
    tag = new_id()
    starter = asyncio.create_task(quietly(read_some("sse", a, body={**chat_body(long_prompt(tag), SSE_UP),
                                                                      "stream_id": tag})))
    await provider_connection(mock_url, tag, ended=False)
    await progressed(b, tag, 3)
    follower = asyncio.create_task(read_some("ws", b, stream_id=tag, after=-1))
    await progressed(b, tag, 5)
    owner.send_signal(signal.SIGSTOP)  # alive, holding its provider connection, renewing nothing
    try:
        async with asyncio.timeout(3 * LEASE_S):
            events = await follower
    finally:
        owner.send_signal(signal.SIGCONT)
    assert_well_formed(events)
    assert events[-1]["code"] == "relay_lost" and events[-1]["retryable"] is True
    # Back, the owner's next write meets the fence: it stops the pump, which closes the provider.
    assert (await provider_connection(mock_url, tag, ended=True))["outcome"] == "client_closed"
    await starter
    await asyncio.sleep(LEASE_S / 2)  # a few of its flushes, had any got through
    client = redis.from_url(pair.redis.url)
    try:
        entries = await client.xrange(f"{pair.prefix}{{{tag}}}:log")
    finally:
        await client.aclose()
    logged = [decode(fields[b"e"]) for _, fields in entries]
    assert [isinstance(e, TERMINAL) for e in logged].count(True) == 1 and isinstance(logged[-1], TERMINAL)
    assert [e.seq for e in logged] == [e["seq"] for e in events]  # nothing after the end, nothing else
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        for base in (a, b):  # the owner, too, now shows the end the other relay wrote
            status = (await http.get(f"{base}/v1/streams/{tag}")).json()
            assert status["finished"] is True and status["end"] == events[-1], (base, status)


async def test_relay_that_cannot_bind_exits_instead_of_hanging(tmp_path):
    """Its engine's loops started before the bind failed: they end with the process, which exits 1."""
    async with redis_server(tmp_path) as server:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            config = tmp_path / "matrix.toml"
            config.write_text(f'[server]\nport = {taken.getsockname()[1]}\n'
                              f'[engine]\nkind = "redis"\nurl = "{server.url}"\n')
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "matrix", "serve", "--config",
                                                        str(config), stderr=asyncio.subprocess.PIPE,
                                                        stdout=asyncio.subprocess.DEVNULL)
            try:
                _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    assert proc.returncode == 1 and b"address already in use" in err
