"""Conversations over real sockets: the provider gets the history, and every answer is saved exactly once.

Each turn is checked against what the client received (the deltas joined) and against what
the mock provider read (its stats record each request's messages), on all four
combinations, both engines and both databases; then every way a stream can end early.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from clients import TIMEOUT, CHAT, UPSTREAMS, assert_well_formed, chat_body, expected_text, read_some, text_of
from test_stop import provider_connection

SSE_UP, WS_UP = "openai", "spark"  # with both downstreams: all four combinations
assert UPSTREAMS[SSE_UP] == "sse" and UPSTREAMS[WS_UP] == "ws"
COMBOS = [(down, up) for down in ("sse", "ws") for up in (SSE_UP, WS_UP)]
COMBO_IDS = [f"{down}-{UPSTREAMS[up]}" for down, up in COMBOS]


def new_id() -> str:
    return uuid.uuid4().hex


def ask(prompt: str, cid: str, upstream: str | None = None, **extra) -> dict:
    return chat_body(prompt, upstream, conversation_id=cid, **extra)


async def transcript(base: str, cid: str, headers: dict | None = None) -> dict:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        response = await client.get(f"{base}/v1/conversations/{cid}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def answers(base: str, cid: str) -> list[dict]:
    return [m for m in (await transcript(base, cid))["messages"] if m["role"] == "assistant"]


async def provider_messages(mock_url: str, tag: str) -> list[list[str]]:
    return (await provider_connection(mock_url, tag, ended=True))["messages"]


async def replay(base: str, stream_id: str) -> list[dict]:
    """The whole stream again, from its log: what any reader that stayed to the end was shown."""
    return await read_some("sse", base, stream_id=stream_id, after=-1)


# -- the provider gets the history ---------------------------------------------------------


@pytest.mark.parametrize("store_kind", ["sqlite", "postgresql"])
@pytest.mark.parametrize("engine", ["memory", "redis"])
@pytest.mark.parametrize("down,up", COMBOS, ids=COMBO_IDS)
async def test_turns_send_the_history_and_save_what_the_client_got(relay_url, mock_url, down, up):
    """Three turns: each provider request holds the earlier turns, byte for byte what the client was shown."""
    cid, history = new_id(), []
    for n in range(3):
        tag = new_id()[:10]
        prompt = f"turn {n} 你好\n#mock tokens={4 + n} interval_ms=1 tag={tag}"
        events = await CHAT[down](relay_url, ask(prompt, cid, up))
        assert_well_formed(events)
        assert events[-1]["type"] == "done" and text_of(events) == expected_text(prompt)
        history.append(["user", prompt])
        assert await provider_messages(mock_url, tag) == history  # the history, then the new message
        history.append(["assistant", text_of(events)])
    saved = await transcript(relay_url, cid)
    assert [[m["role"], m["text"]] for m in saved["messages"]] == history
    for message in saved["messages"][1::2]:
        assert message["status"] == "stop" and message["combo"] == f"{down}-{UPSTREAMS[up]}"
        assert message["upstream"] == up and message["usage"]["completion_tokens"] >= 4
        assert message["ttft_ms"] is not None and message["duration_ms"] >= message["ttft_ms"]
    assert saved["title"].startswith("turn 0 你好 #mock") and len(saved["title"]) <= 60  # its first message


async def test_a_system_message_is_kept_and_sent_first(relay_url, mock_url):
    cid = new_id()
    first = {"messages": [{"role": "system", "content": "be brief"},
                          {"role": "user", "content": "one\n#mock tokens=2 interval_ms=0"}],
             "upstream": SSE_UP, "conversation_id": cid}
    one = await CHAT["sse"](relay_url, first)
    tag = new_id()[:10]
    two = await CHAT["ws"](relay_url, ask(f"two\n#mock tokens=2 interval_ms=0 tag={tag}", cid, SSE_UP))
    assert await provider_messages(mock_url, tag) == [
        ["system", "be brief"], ["user", "one\n#mock tokens=2 interval_ms=0"], ["assistant", text_of(one)],
        ["user", f"two\n#mock tokens=2 interval_ms=0 tag={tag}"]]
    saved = await transcript(relay_url, cid)
    assert saved["system"] == "be brief" and saved["messages"][-1]["text"] == text_of(two)


async def test_history_is_the_last_history_messages(make_relay, mock_url):
    relay = await make_relay(store={"history_messages": 2})
    base, cid = f"http://127.0.0.1:{relay.port}", new_id()
    for n in range(3):
        tag = new_id()[:10]
        await CHAT["sse"](base, ask(f"t{n}\n#mock tokens=1 interval_ms=0 tag={tag}", cid, SSE_UP))
    sent = await provider_messages(mock_url, tag)
    assert [role for role, _ in sent] == ["user", "assistant", "user"] and sent[0][1].startswith("t1")


async def test_the_openai_sdk_continues_a_conversation(relay_url, mock_url):
    """`extra_body={"conversation_id": ...}`: streamed and whole answers both join the history."""
    cid = new_id()
    client = openai.AsyncOpenAI(base_url=f"{relay_url}/v1", api_key="none", max_retries=0, timeout=TIMEOUT)
    async with client:
        streamed = await client.chat.completions.create(
            model=SSE_UP, stream=True, extra_body={"conversation_id": cid},
            messages=[{"role": "user", "content": "one\n#mock tokens=3 interval_ms=0"}])
        first = "".join([c.choices[0].delta.content or "" async for c in streamed if c.choices])
        tag = new_id()[:10]
        whole = await client.chat.completions.create(
            model=WS_UP, extra_body={"conversation_id": cid},
            messages=[{"role": "user", "content": f"two\n#mock tokens=2 interval_ms=0 tag={tag}"}])
    assert (await provider_messages(mock_url, tag))[:2] == [["user", "one\n#mock tokens=3 interval_ms=0"],
                                                             ["assistant", first]]
    saved = await answers(relay_url, cid)
    assert [(m["text"], m["combo"]) for m in saved] == [(first, "openai-sse"),
                                                       (whole.choices[0].message.content, "openai-ws")]


# -- exactly once, however a stream ends ---------------------------------------------------------


@pytest.mark.parametrize("store_kind", ["sqlite", "postgresql"])
@pytest.mark.parametrize("down", ["sse", "ws"])
async def test_a_stop_saves_what_was_shown_as_cancelled(relay_url, down):
    cid, sid = new_id(), new_id()
    first = await read_some(down, relay_url, body=ask("stop\n#mock tokens=500 interval_ms=10", cid, SSE_UP,
                                                      stream_id=sid), limit=4)
    async with httpx.AsyncClient() as client:
        assert (await client.post(f"{relay_url}/v1/streams/{sid}/cancel")).status_code == 200
    shown = await replay(relay_url, sid)
    assert shown[-1] == {**shown[-1], "type": "done", "reason": "cancelled"}
    assert text_of(shown).startswith(text_of(first))
    [saved] = await answers(relay_url, cid)
    assert (saved["status"], saved["text"], saved["stream_id"]) == ("cancelled", text_of(shown), sid)


@pytest.mark.parametrize("down", ["sse", "ws"])
async def test_a_client_gone_past_the_grace_saves_the_stream_as_cancelled(make_relay, mock_url, down):
    relay = await make_relay(disconnect_grace_s=0.3)
    base, cid, sid, tag = f"http://127.0.0.1:{relay.port}", new_id(), new_id(), new_id()[:10]
    await read_some(down, base, body=ask(f"gone\n#mock tokens=500 interval_ms=10 tag={tag}", cid, WS_UP,
                                         stream_id=sid), limit=3)
    await provider_connection(mock_url, tag, ended=True)  # the grace ran out: the provider was stopped
    shown = await replay(base, sid)
    [saved] = await answers(base, cid)
    assert (saved["status"], saved["text"]) == ("cancelled", text_of(shown)) and len(text_of(shown)) > 0


@pytest.mark.parametrize("store_kind", ["sqlite", "postgresql"])
@pytest.mark.parametrize("up", [SSE_UP, WS_UP])
async def test_a_provider_error_mid_stream_saves_the_text_with_its_code(relay_url, up):
    cid = new_id()
    prompt = "fails\n#mock tokens=10 interval_ms=1 fault=error_after:3"
    events = await CHAT["sse"](relay_url, ask(prompt, cid, up))
    assert events[-1]["type"] == "error" and len(text_of(events)) > 0
    [saved] = await answers(relay_url, cid)
    assert (saved["status"], saved["text"]) == (events[-1]["code"], text_of(events))


async def test_a_retry_before_the_first_token_saves_one_answer(relay_url, mock_url):
    cid, tag = new_id(), new_id()[:10]
    prompt = f"retried\n#mock tokens=4 interval_ms=0 fault=http_503 fail_times=1 tag={tag}"
    events = await CHAT["sse"](relay_url, ask(prompt, cid, SSE_UP))
    assert events[-1]["type"] == "done"
    async with httpx.AsyncClient() as client:
        tried = (await client.get(f"{mock_url}/_mock/stats", params={"tag": tag})).json()["connections"]
    assert [c["outcome"] for c in tried] == ["fault", "completed"]
    assert [(m["status"], m["text"]) for m in await answers(relay_url, cid)] == [("stop", text_of(events))]


@pytest.mark.parametrize("engine", ["memory", "redis"])
@pytest.mark.parametrize("first,then", [("sse", "ws"), ("ws", "sse")])
async def test_resumes_and_several_readers_save_it_once(make_relay, first, then):
    relay = await make_relay(disconnect_grace_s=5)
    base, cid, sid = f"http://127.0.0.1:{relay.port}", new_id(), new_id()
    head = await read_some(first, base, body=ask("resumed\n#mock tokens=60 interval_ms=5", cid, SSE_UP,
                                                 stream_id=sid), limit=5)
    tails = await asyncio.gather(read_some(then, base, stream_id=sid, after=head[-1]["seq"]),
                                 read_some(first, base, stream_id=sid, after=-1),
                                 read_some(then, base, stream_id=sid, after=2))
    assert tails[1][-1]["type"] == "done"
    whole = text_of(head + tails[0])
    assert whole == text_of(tails[1]) == expected_text("resumed\n#mock tokens=60 interval_ms=5")
    assert [(m["status"], m["text"]) for m in await answers(base, cid)] == [("stop", whole)]


@pytest.mark.parametrize("engine", ["memory", "redis"])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["sse", "ws"]), st.integers(1, 12)), min_size=1, max_size=3),
       st.sampled_from([None, "cancel", "leave"]), st.sampled_from([SSE_UP, WS_UP]))
async def test_any_drops_resumes_and_stop_leave_one_answer(make_relay, hops, end, up):
    """Read a few events per connection, drop, resume elsewhere; then read to the end, stop, or leave."""
    relay = await make_relay(disconnect_grace_s=0.3)
    base, cid, sid = f"http://127.0.0.1:{relay.port}", new_id(), new_id()
    body = ask("prop\n#mock tokens=40 interval_ms=3", cid, up, stream_id=sid)
    after, seen = -1, []
    for i, (down, limit) in enumerate(hops):
        got = await read_some(down, base, body=body if i == 0 else None, stream_id=None if i == 0 else sid,
                              after=after, limit=limit)
        seen += got
        after = got[-1]["seq"]
        if got[-1]["type"] in ("done", "error"):
            break
    if seen[-1]["type"] not in ("done", "error"):
        if end == "cancel":
            async with httpx.AsyncClient() as client:
                await client.post(f"{base}/v1/streams/{sid}/cancel")
        elif end is None:
            seen += await read_some("sse", base, stream_id=sid, after=after)
        async with asyncio.timeout(TIMEOUT):  # "leave": the grace stops it
            while not (await answers(base, cid)):
                await asyncio.sleep(0.02)
    shown = await replay(base, sid)
    assert text_of(shown).startswith(text_of(seen))
    [saved] = await answers(base, cid)
    assert saved["text"] == text_of(shown) and saved["status"] == shown[-1].get("reason", shown[-1].get("code"))
