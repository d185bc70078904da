"""`mock_ai.serve`: the mock providers as `matrix mock` runs them, until cancelled."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from clients import free_port
from conftest_mock import WAIT, http_client
from mock_ai import serve


async def test_serve_answers_until_cancelled_then_frees_its_port() -> None:
    """serve() answers on its port with the given defaults, and cancelling it stops the server."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    task = asyncio.create_task(serve("127.0.0.1", port, defaults={"tokens": 2, "interval_ms": 0}))
    async with http_client(base) as http, asyncio.timeout(WAIT):
        while True:
            try:
                response = await http.post("/v1/chat/completions", headers={"Authorization": "Bearer mock-key"},
                                           json={"messages": [{"role": "user", "content": "hi"}]})
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.01)
        assert response.json()["usage"]["completion_tokens"] == 2
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(httpx.ConnectError):
            await http.get("/_mock/stats")
