"""The stream log: merging under backpressure, exactly-once reads, bounded replay, no sockets."""

import asyncio

import pytest

from matrix.errors import ResumeGap, UpstreamTimeout
from matrix.events import Delta, Done, Error, Start
from matrix.stream import Stream


async def collect(stream: Stream, after: int = -1) -> list:
    out = []
    async with asyncio.timeout(5):
        async for batch in stream.follow(after):
            out.extend(batch)
    return out


async def test_fast_reader_sees_one_delta_per_piece():
    """A reader waiting for each piece gets one delta per provider piece, numbered from 1."""
    stream = Stream("s", "up", "sse-sse")
    reader = asyncio.create_task(collect(stream))
    for piece in ("你", "好", "!"):
        await asyncio.sleep(0)
        stream.push(piece)
        await asyncio.sleep(0.001)
    stream.finish("stop", {"completion_tokens": 3})
    events = await reader
    assert events == [Start("s", 0, "up", "sse-sse"), Delta("s", 1, "你"), Delta("s", 2, "好"), Delta("s", 3, "!"),
                      Done("s", 4, "stop", {"completion_tokens": 3})]


async def test_slow_reader_gets_merged_text_and_nothing_lost():
    """Pieces pushed while nobody reads are merged into one delta; no text is lost."""
    stream = Stream("s", "up", "ws-ws", merge_at=8)
    pieces = [f"{i}," for i in range(1000)]
    for piece in pieces:
        stream.push(piece)
    assert len(stream._pending) <= 9  # a long backlog is kept as one string, not 1000 objects
    stream.finish("stop")
    events = await collect(stream)
    assert [e.type for e in events] == ["start", "delta", "done"]
    assert events[1].text == "".join(pieces)


async def test_resume_reads_exactly_after_seq():
    """Reading after any seq returns every later event once, live or finished."""
    stream = Stream("s", "up", "sse-ws")
    for piece in "abc":
        stream.push(piece)
        stream.read(-1)  # a reader commits each piece as its own delta
    stream.finish("stop")
    full = stream.read(-1)
    for after in range(-1, len(full)):
        assert stream.read(after) == full[after + 1:]


async def test_two_readers_see_the_same_events():
    """Two followers of one stream receive identical sequences."""
    stream = Stream("s", "up", "sse-sse")
    a, b = asyncio.create_task(collect(stream)), asyncio.create_task(collect(stream))
    for piece in "hello":
        await asyncio.sleep(0.001)
        stream.push(piece)
    stream.fail(UpstreamTimeout("no data"))
    first, second = await a, await b
    assert first == second and first[-1] == Error("s", first[-1].seq, "upstream_timeout", "no data", True, None)


async def test_bounded_replay_reports_gap():
    """Beyond max_events the oldest events go, and resuming before them is a resume_gap."""
    stream = Stream("s", "up", "sse-sse", max_events=4)
    for piece in "abcdef":
        stream.push(piece)
        stream.read(stream.last_seq)
    with pytest.raises(ResumeGap):
        stream.read(0)
    assert [e.seq for e in stream.read(2)] == [3, 4, 5, 6]


async def test_one_terminal_event_only():
    """After a terminal event, later finishes, failures and pushes change nothing."""
    stream = Stream("s", "up", "sse-sse")
    stream.push("x")
    stream.finish("cancelled")
    stream.fail(UpstreamTimeout("late"))
    stream.push("late text")
    stream.finish("stop")
    assert [e.type for e in stream.read(-1)] == ["start", "delta", "done"]


async def test_cancelled_reader_leaves_no_waiter():
    """A follower cancelled while waiting does not leave a stale waiter behind."""
    stream = Stream("s", "up", "sse-sse")
    task = asyncio.create_task(collect(stream, after=0))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stream._waiters == []
