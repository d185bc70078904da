"""Resume exactly once: drop the client anywhere, resume on either transport, lose and repeat nothing."""

import asyncio
import json
import uuid

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from clients import TIMEOUT, UPSTREAMS, assert_well_formed, chat_body, expected_text, read_some, text_of

# Every test here runs on both engines: one relay's memory, and Redis (tests/redisd.py).
pytestmark = pytest.mark.parametrize("engine", ["memory", "redis"])



@pytest.fixture
async def graceful(make_relay):
    return f"http://127.0.0.1:{(await make_relay(disconnect_grace_s=5)).port}"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(up=st.sampled_from(sorted(UPSTREAMS)),
       legs=st.lists(st.tuples(st.sampled_from(["sse", "ws"]), st.integers(1, 8)), min_size=1, max_size=4),
       last=st.sampled_from(["sse", "ws"]))
async def test_drop_anywhere_and_resume_gives_exact_answer(graceful, up, legs, last):
    """Across drops at random points and resumes on random transports, text and seq are exact."""
    sid = uuid.uuid4().hex[:12]
    prompt = f"resume {sid}\n#mock tokens=25 interval_ms=3"
    events: list[dict] = []
    for i, (down, limit) in enumerate(legs):
        after = events[-1]["seq"] if events else -1
        if i == 0:
            events += await read_some(down, graceful, body={**chat_body(prompt, up), "stream_id": sid}, limit=limit)
        else:
            events += await read_some(down, graceful, stream_id=sid, after=after, limit=limit)
        if events[-1]["type"] in ("done", "error"):
            break
    else:
        events += await read_some(last, graceful, stream_id=sid, after=events[-1]["seq"])
    assert_well_formed(events)
    assert events[-1]["type"] == "done" and text_of(events) == expected_text(prompt)


@pytest.mark.parametrize("down", ["sse", "ws"])
async def test_resume_finished_stream(graceful, down):
    """A finished stream replays every event after the given seq."""
    sid = uuid.uuid4().hex[:12]
    prompt = "finished\n#mock tokens=6 interval_ms=5"
    full = await read_some("sse", graceful, body={**chat_body(prompt, "openai"), "stream_id": sid})
    # Usually start, 6 deltas, done; the Redis engine merges tokens that land in one flush.
    assert full[-1]["type"] == "done" and text_of(full) == expected_text(prompt) and len(full) >= 3
    for after in range(-1, len(full) - 1):
        assert await read_some(down, graceful, stream_id=sid, after=after) == full[after + 1:]
    events = await read_some(down, graceful, stream_id=sid, after=len(full))
    assert events[0]["code"] == "invalid_seq"


async def test_resume_unknown_stream_is_clear_error(graceful):
    """Resuming an unknown stream is 404 stream_not_found on SSE and an error event on WS."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{graceful}/v1/streams/never/events", headers={"Last-Event-ID": "3"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "stream_not_found"
    events = await read_some("ws", graceful, stream_id="never", after=3)
    assert events[0]["type"] == "error" and events[0]["code"] == "stream_not_found"


async def test_expired_stream_is_not_found(make_relay):
    """After replay_ttl_s a finished stream is gone: resume says stream_not_found."""
    base = f"http://127.0.0.1:{(await make_relay(replay_ttl_s=0.2)).port}"
    sid = uuid.uuid4().hex[:12]
    await read_some("ws", base, body={**chat_body("expire\n#mock tokens=2 interval_ms=0", "openai"), "stream_id": sid})
    await asyncio.sleep(0.4)
    events = await read_some("ws", base, stream_id=sid, after=0)
    assert events[0]["code"] == "stream_not_found"


async def test_resume_gap_is_clear_error(make_relay):
    """Resuming before what the bounded replay buffer still holds is 410 resume_gap."""
    base = f"http://127.0.0.1:{(await make_relay(replay_max_events=5)).port}"
    sid = uuid.uuid4().hex[:12]
    await read_some("ws", base, body={**chat_body("gap\n#mock tokens=20 interval_ms=2", "openai"), "stream_id": sid})
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{base}/v1/streams/{sid}/events?last_event_id=1")
    assert response.status_code == 410 and response.json()["error"]["code"] == "resume_gap"
    events = await read_some("ws", base, stream_id=sid, after=1)
    assert events[0]["code"] == "resume_gap"


async def test_query_last_event_id_for_eventsource_first_connect(graceful):
    """`?last_event_id=` works like the header, for EventSource's first connect."""
    sid = uuid.uuid4().hex[:12]
    full = await read_some("ws", graceful, body={**chat_body("q\n#mock tokens=4 interval_ms=0", "openai"),
                                                 "stream_id": sid})
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        response = await client.get(f"{graceful}/v1/streams/{sid}/events?last_event_id=2")
    datas = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert datas == full[3:]


async def test_resume_after_the_end_is_204(graceful):
    """Resuming after the terminal event is 204 No Content, which tells EventSource to stop reconnecting."""
    sid = uuid.uuid4().hex[:12]
    full = await read_some("ws", graceful, body={**chat_body("end\n#mock tokens=2 interval_ms=0", "openai"),
                                                 "stream_id": sid})
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{graceful}/v1/streams/{sid}/events", headers={"Last-Event-ID": str(full[-1]["seq"])})
    assert response.status_code == 204 and response.content == b""
