"""Graceful shutdown of a real `matrix serve` process: drain, then end the rest clearly, exit 0."""

import asyncio
import contextlib
import signal
import uuid

import httpx
import pytest

from clients import TIMEOUT, chat_body, expected_text, free_port, matrix_serve, read_some, text_of
from redisd import redis_server
from test_stop import provider_connection


@pytest.fixture(params=["one", "workers"])
async def serve(request, tmp_path, mock):
    """A `matrix serve` subprocess on the test's mock providers; or `--workers 2` of them sharing Redis."""
    port = free_port()
    config = tmp_path / "matrix.toml"
    async with contextlib.AsyncExitStack() as stack:
        args, engine = ["--config", str(config)], ""
        if request.param == "workers":
            redis = await stack.enter_async_context(redis_server(tmp_path))
            args, engine = [*args, "--workers", "2"], f'[engine]\nkind = "redis"\nurl = "{redis.url}"\n'
        config.write_text(engine + f"""
[server]
port = {port}
default_upstream = "openai"
drain_timeout_s = 0.8

[upstreams.openai]
kind = "openai"
url = "http://127.0.0.1:{mock.port}/v1/chat/completions"
api_key = "mock-key"

[upstreams.spark]
kind = "spark"
url = "ws://127.0.0.1:{mock.port}/v3.5/chat"
app_id = "mock-app"
api_key = "mock-key"
api_secret = "mock-secret"
""")
        served = await stack.enter_async_context(matrix_serve(*args, port=port))
        if request.param == "workers":  # both workers answer on the one port
            assert len(await answering_pids(served[1])) == 2
        yield served


async def answering_pids(base: str, tries: int = 40) -> set[int]:
    pids = set()
    for _ in range(tries):  # a new connection each time: the kernel spreads them over the workers
        async with httpx.AsyncClient() as client:
            pids.add((await client.get(f"{base}/healthz")).json()["pid"])
    return pids


async def test_sigterm_drains_then_ends_the_rest(serve, mock_url):
    """On SIGTERM short streams finish, long ones end with shutting_down (retryable), providers close, exit 0."""
    proc, base = serve
    short_prompt = "short\n#mock tokens=20 interval_ms=20"
    tags = [uuid.uuid4().hex[:8] for _ in range(2)]
    long_body = {**chat_body(f"long\n#mock tokens=5000 interval_ms=20 tag={tags[0]}"), "stream_id": tags[0]}
    long_ws = {**chat_body(f"long\n#mock tokens=5000 interval_ms=20 tag={tags[1]}", "spark"), "stream_id": tags[1]}
    streams = [asyncio.create_task(read_some("sse", base, body=long_body)),
               asyncio.create_task(read_some("ws", base, body=long_ws)),
               asyncio.create_task(read_some("sse", base, body=chat_body(short_prompt)))]
    for tag in tags:
        await provider_connection(mock_url, tag, ended=False)
    proc.send_signal(signal.SIGTERM)
    long_sse, long_spark, short = await asyncio.gather(*streams)
    assert short[-1]["type"] == "done" and text_of(short) == expected_text(short_prompt)
    for events in (long_sse, long_spark):
        assert events[-1]["type"] == "error" and events[-1]["code"] == "shutting_down"
        assert events[-1]["retryable"] is True
    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    for tag in tags:
        assert (await provider_connection(mock_url, tag, ended=True))["outcome"] == "client_closed"
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{base}/healthz")
