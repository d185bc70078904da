"""Tracing: a request with `"trace": true` also streams the raw provider frames, in order."""

import asyncio
import json

import pytest
import websockets

from clients import CHAT, TIMEOUT, chat_body, expected_text, text_of


@pytest.mark.parametrize("down,up", [("sse", "openai"), ("ws", "spark"), ("ws", "baidu")])
async def test_trace_shows_provider_frames_in_order(relay_url, down, up):
    """Trace events carry the request sent and every provider frame, before the text they hold."""
    prompt = "trace me\n#mock tokens=4 interval_ms=1"
    events = await CHAT[down](relay_url, {**chat_body(prompt, up), "trace": True})
    assert [e["seq"] for e in events] == list(range(len(events)))
    traces = [e for e in events if e["type"] == "trace"]
    assert traces[0]["dir"] == "out" and "trace me" in traces[0]["data"]
    assert "mock-key" not in traces[0]["data"] and "mock-secret" not in traces[0]["data"]
    assert all(t["dir"] == "in" for t in traces[1:]) and len(traces) >= 5
    first_delta = next(i for i, e in enumerate(events) if e["type"] == "delta")
    assert events[first_delta - 1]["type"] == "trace"
    assert text_of(events) == expected_text(prompt)


async def test_no_trace_by_default(relay_url):
    """Without the flag no trace event is sent."""
    events = await CHAT["sse"](relay_url, chat_body("plain\n#mock tokens=3 interval_ms=0", "openai"))
    assert {e["type"] for e in events} == {"start", "delta", "done"}


async def test_a_stopped_realtime_answer_is_cancelled_in_the_session(relay_url):
    """Stopping a Realtime stream sends `response.cancel` on the session before the socket closes."""
    body = {**chat_body("cancel me\n#mock tokens=300 interval_ms=5", "realtime"), "stream_id": "rt-stop", "trace": True}
    async with websockets.connect(relay_url.replace("http", "ws", 1) + "/v1/chat/ws") as ws:
        await ws.send(json.dumps({"type": "chat", **body}))
        events = []
        async with asyncio.timeout(TIMEOUT):
            async for frame in ws:
                events.append(json.loads(frame))
                if [e["type"] for e in events].count("delta") == 3:
                    await ws.send(json.dumps({"type": "cancel", "stream_id": "rt-stop"}))
                if events[-1]["type"] in ("done", "error"):
                    break
    outs = [json.loads(e["data"])["type"] for e in events if e["type"] == "trace" and e["dir"] == "out"]
    assert outs == ["session.update", "conversation.item.create", "response.create", "response.cancel"]
    assert events[-2]["type"] == "trace" and events[-1]["type"] == "done" and events[-1]["reason"] == "cancelled"
