"""`/_mock/stats`: each connection's vendor, tag, tokens and ending, on the test process's clock."""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest_mock import (  # noqa: F401
    VENDORS, WAIT, http_client, mock_url, settled, start_any, start_mock, start_plain, stats, token_stream,
)
from mock_ai import Script

# Both ways of running the app are covered (`start_any`): pytest-aiohttp's server cancels a
# handler whose client leaves, a plain AppRunner does not, and the promise holds for both.


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("wait", ["stall_after:2", "first_token_ms:5000"])
async def test_a_client_leaving_early_is_seen_within_100_ms(start_any, vendor: str,  # noqa: F811
                                                            wait: str) -> None:
    """A client that leaves during a stall or a slow first token is `client_closed`, closed_at within 100 ms."""
    base = await start_any()
    name, value = wait.split(":")
    directive = f"fault=stall_after:{value}" if name == "stall_after" else f"first_token_ms={value}"
    tag = f"leave-{vendor}-{name}"
    expected = 2 if name == "stall_after" else 0
    async with asyncio.timeout(WAIT):
        async with token_stream(vendor, base, f"hi\n#mock tokens=5 interval_ms=0 {directive} tag={tag}") as pieces:
            for _ in range(expected):
                await anext(pieces)
            await asyncio.sleep(0.05)  # let the server settle into its wait
            assert (await stats(base, tag))["open"] == 1
            left_at = time.monotonic()
    conn = await settled(base, tag)
    assert conn["outcome"] == "client_closed" and conn["tokens_sent"] == expected
    assert 0 <= conn["closed_at"] - left_at < 0.1


@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_finished_answer_is_completed_with_its_token_count(start_any, vendor: str) -> None:  # noqa: F811
    """A client that reads to the end leaves a `completed` record with every token counted."""
    base = await start_any()
    text = f"hi\n#mock tokens=3 interval_ms=0 tag=done-{vendor}"
    async with asyncio.timeout(WAIT):
        async with token_stream(vendor, base, text) as pieces:
            assert "".join([p async for p in pieces]) == Script.parse(text).answer_text()
    conn = await settled(base, f"done-{vendor}")
    assert (conn["vendor"], conn["outcome"], conn["tokens_sent"]) == (vendor, "completed", 3)
    assert conn["opened_at"] <= conn["closed_at"] <= time.monotonic()


@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_drop_is_recorded_as_a_fault(mock_url: str, vendor: str) -> None:
    """drop_after ends the record as `fault`, not as a client that closed."""
    with pytest.raises(Exception):  # each client reports the drop its own way
        async with asyncio.timeout(WAIT):
            text = "hi\n#mock tokens=5 interval_ms=0 fault=drop_after:1 tag=d"
            async with token_stream(vendor, mock_url, text) as pieces:
                async for _ in pieces:
                    pass
    conn = await settled(mock_url, "d")
    assert (conn["outcome"], conn["tokens_sent"]) == ("fault", 1)


async def test_refusals_and_tags_and_reset(mock_url: str) -> None:
    """A refused request is `rejected`; ?tag= filters; POST /_mock/reset forgets everything."""
    async with http_client(mock_url) as http:
        await http.post("/v1/chat/completions", json={}, headers={"Authorization": "Bearer wrong"})
        await http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "#mock tag=x"}]},
                        headers={"Authorization": "Bearer mock-key"})
        everything = (await http.get("/_mock/stats")).json()
        tagged = (await http.get("/_mock/stats", params={"tag": "x"})).json()
        assert (await http.post("/_mock/reset")).status_code == 200
        after_reset = (await http.get("/_mock/stats")).json()
    assert [c["outcome"] for c in everything["connections"]] == ["rejected", "completed"]
    assert [c["tag"] for c in tagged["connections"]] == ["x"] and everything["open"] == 0
    assert after_reset == {"open": 0, "connections": []}
