"""The OpenAI-compatible front door, driven by the official `openai` package on every upstream."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import openai
import pytest

from clients import TIMEOUT, UPSTREAMS, expected_text
from test_operations import samples, value
from test_stop import provider_connection

USAGE = set(UPSTREAMS) - {"baidu"}  # Baidu agents report no token usage


def async_client(base: str, key: str = "none") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=TIMEOUT)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("upstream", UPSTREAMS)
async def test_async_stream_on_every_upstream(relay_url, upstream):
    """Streamed: role first, the provider's text byte for byte, finish_reason stop, then usage when asked."""
    prompt = f"front {upstream}\n#mock tokens=12 interval_ms=1 split=3"
    async with async_client(relay_url) as client:
        stream = await client.chat.completions.create(model=upstream, messages=user(prompt), stream=True,
                                                      stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected_text(prompt)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and len({c.id for c in chunks}) == 1 and chunks[-1].model == upstream
    usage = chunks[-1].usage
    assert (usage is not None and usage.completion_tokens > 0) if upstream in USAGE else usage is None


@pytest.mark.parametrize("upstream", UPSTREAMS)
async def test_sync_client_stream_and_whole_answer(relay_url, upstream):
    """The synchronous client too: a stream without usage, and `stream: false` as one chat.completion."""
    prompt = f"sync {upstream}\n#mock tokens=7 interval_ms=1"

    def use_sync_client():  # in a thread: the relay runs on this test's event loop
        with openai.OpenAI(base_url=f"{relay_url}/v1", api_key="none", max_retries=0, timeout=TIMEOUT) as client:
            chunks = list(client.chat.completions.create(model=upstream, messages=user(prompt), stream=True))
            return chunks, client.chat.completions.create(model=upstream, messages=user(prompt), max_tokens=64)

    chunks, whole = await asyncio.to_thread(use_sync_client)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected_text(prompt)
    assert all(c.usage is None for c in chunks)
    assert whole.object == "chat.completion" and whole.choices[0].message.content == expected_text(prompt)
    assert whole.choices[0].finish_reason == "stop" and whole.model == upstream
    assert (whole.usage is not None) == (upstream in USAGE)


async def test_async_whole_answer_and_length(relay_url):
    """`stream: false` with the async client; a provider's `length` end is the finish_reason."""
    prompt = "long\n#mock tokens=5 interval_ms=1 finish=length"
    async with async_client(relay_url) as client:
        whole = await client.chat.completions.create(model="openai", messages=user(prompt))
    assert whole.choices[0].message.content == expected_text(prompt)
    assert whole.choices[0].finish_reason == "length"


@pytest.mark.parametrize("upstream, code, upstream_code", [
    ("spark", "upstream_rejected", "10014"), ("baidu", "upstream_rejected", "500"),
    ("openai", "upstream_unavailable", "server_error")])
async def test_mid_stream_error_raises_with_our_code(relay_url, upstream, code, upstream_code):
    """A provider error after some text raises APIError in the SDK, carrying our code and the vendor's."""
    prompt = "fail\n#mock tokens=6 interval_ms=1 fault=error_after:2"
    texts = []
    async with async_client(relay_url) as client:
        stream = await client.chat.completions.create(model=upstream, messages=user(prompt), stream=True)
        with pytest.raises(openai.APIError) as raised:
            async for chunk in stream:
                texts.append(chunk.choices[0].delta.content or "")
        with pytest.raises(openai.APIStatusError) as whole:  # the same failure without streaming
            await client.chat.completions.create(model=upstream, messages=user(prompt))
    assert raised.value.body["code"] == code and raised.value.body["upstream_code"] == upstream_code
    assert "".join(texts) and expected_text(prompt).startswith("".join(texts))
    assert whole.value.status_code in (502, 503) and whole.value.body["code"] == code


async def test_unknown_model_and_model_list(relay_url):
    """An unknown model is the SDK's NotFoundError; /v1/models lists the upstreams."""
    async with async_client(relay_url) as client:
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="gpt-9", messages=user("hi"))
        listed = [m.id async for m in client.models.list()]
        one = await client.models.retrieve("baidu")
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("gpt-9")
    assert missing.value.body["code"] == "unknown_upstream"
    assert listed == list(UPSTREAMS) and one.owned_by == "baidu-agent"


async def test_keys_are_the_sdks_api_key(aiohttp_server, mock):
    """With [auth] keys the SDK's api_key is the key: a wrong one is AuthenticationError, the right one streams."""
    from matrix.app import create_app
    from matrix.config import Settings
    from mock_ai import relay_upstreams
    settings = Settings(upstreams=relay_upstreams(f"127.0.0.1:{mock.port}"), auth={"clients": {"app": "sk-front"}})
    base = f"http://127.0.0.1:{(await aiohttp_server(create_app(settings))).port}"
    async with async_client(base, "sk-wrong") as wrong, async_client(base, "sk-front") as right:
        with pytest.raises(openai.AuthenticationError) as refused:
            await wrong.chat.completions.create(model="spark", messages=user("hi"), stream=True)
        whole = await right.chat.completions.create(model="spark", messages=user("k\n#mock tokens=3 interval_ms=0"))
    assert refused.value.body["code"] == "unauthorized" and refused.value.body["type"] == "authentication_error"
    assert whole.choices[0].message.content == expected_text("k\n#mock tokens=3 interval_ms=0")


async def test_disconnect_stops_the_provider_without_grace(make_relay, mock_url):
    """This protocol cannot resume: a client that leaves stops the provider even with disconnect grace set."""
    relay = await make_relay(disconnect_grace_s=30)
    base = f"http://127.0.0.1:{relay.port}"
    tags = [uuid.uuid4().hex[:10] for _ in range(2)]
    async with async_client(base) as client:
        stream = await client.chat.completions.create(
            model="spark", messages=user(f"bye\n#mock tokens=500 interval_ms=10 tag={tags[0]}"), stream=True)
        async for chunk in stream:
            if chunk.choices[0].delta.content:  # text: the provider connection is up (the role chunk comes before)
                break
        await stream.close()
        whole = asyncio.create_task(client.chat.completions.create(
            model="openai", messages=user(f"bye\n#mock tokens=500 interval_ms=10 tag={tags[1]}")))
        await provider_connection(mock_url, tags[1], ended=False)
        whole.cancel()
    for tag in tags:
        conn = await provider_connection(mock_url, tag, ended=True)
        assert conn["outcome"] == "client_closed" and conn["tokens_sent"] < 500
    async with httpx.AsyncClient() as http:
        m = samples((await http.get(f"{base}/metrics")).text)
    assert value(m, "matrix_streams_ended_total", combo="openai-ws", upstream="spark", end="done",
                 reason="cancelled") == 1
    assert value(m, "matrix_streams_ended_total", combo="openai-sse", upstream="openai", end="done",
                 reason="cancelled") == 1


async def test_pinned_to_a_ws_downstream_the_door_is_off(make_relay):
    """A relay pinned to ws-* refuses the SSE-based OpenAI door with combo_pinned."""
    relay = await make_relay(server={"combo": "ws-sse"})
    async with async_client(f"http://127.0.0.1:{relay.port}") as client:
        with pytest.raises(openai.NotFoundError) as refused:
            await client.chat.completions.create(model="openai", messages=user("hi"))
    assert refused.value.body["code"] == "combo_pinned"


MSG = [{"role": "user", "content": "hi\n#mock tokens=2 interval_ms=0"}]
HOSTILE = [  # body, status, code, param
    (b"{nope", 400, "invalid_json", None),
    (b"[]", 400, "invalid_request", None),
    (b"\xff\xfe", 400, "invalid_json", None),
    ({"messages": MSG}, 422, "invalid_request", "model"),
    ({"model": "openai", "messages": []}, 422, "invalid_request", "messages"),
    ({"model": "openai"}, 422, "invalid_request", "messages"),
    ({"model": "openai", "messages": [{"role": "tool", "content": "x"}]}, 422, "invalid_request", "messages.0.role"),
    ({"model": "openai", "messages": MSG, "temperature": "hot"}, 422, "invalid_request", "temperature"),
    ({"model": "openai", "messages": MSG, "temperature": 7}, 422, "invalid_request", "temperature"),
    ({"model": "openai", "messages": MSG, "max_tokens": -1}, 422, "invalid_request", "max_tokens"),
    ({"model": "openai", "messages": MSG, "stream": "yes"}, 422, "invalid_request", "stream"),
    ({"model": ["openai"], "messages": MSG}, 422, "invalid_request", "model"),
    ({"model": "x" * 100, "messages": MSG}, 422, "invalid_request", "model"),
    ({"model": "openai", "messages": MSG, "frobnicate": 1}, 400, "unknown_parameter", "frobnicate"),
    ({"model": "openai", "messages": MSG, "tools": [{"type": "function"}]}, 400, "unsupported_parameter", "tools"),
    ({"model": "openai", "messages": MSG, "n": 3}, 400, "unsupported_parameter", "n"),
    ({"model": "openai", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     400, "unsupported_content", "messages.0.content"),
    ({"model": "openai", "messages": [{"role": "assistant", "content": None}]}, 400, "unsupported_content",
     "messages.0.content"),
    ({"model": "openai", "messages": [{"role": "user", "content": "x" * 40_000}]}, 413, "message_too_long", None),
    ({"model": "openai", "messages": MSG * 300}, 413, "too_many_messages", None),
    ({"model": "nowhere", "messages": MSG}, 404, "unknown_upstream", None),
]


@pytest.mark.parametrize("body, status, code, param", HOSTILE, ids=[h[2] + str(i) for i, h in enumerate(HOSTILE)])
async def test_bad_requests_get_openai_shaped_errors(relay_url, body, status, code, param):
    """Each bad body is refused before any stream with its status and {"error": {message, type, code, param}}."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        kw = {"content": body} if isinstance(body, bytes) else {"json": body}
        response = await client.post(f"{relay_url}/v1/chat/completions", headers={"Content-Type": "application/json"},
                                     **kw)
    error = response.json()["error"]
    assert response.status_code == status and error["code"] == code and error["param"] == param, error
    assert error["message"] and error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


async def test_documented_fields_are_accepted_and_text_parts_joined(relay_url):
    """Fields OpenAI clients send by default are ignored, not refused; text parts and developer messages work."""
    prompt = "parts\n#mock tokens=4 interval_ms=0"
    async with async_client(relay_url) as client:
        whole = await client.chat.completions.create(
            model="openai", stream=False, seed=7, stop=["\n\n"], presence_penalty=0.1, frequency_penalty=0.1,
            logit_bias={}, response_format={"type": "text"}, metadata={"a": "b"}, store=False, user="u-1",
            max_completion_tokens=32, n=1, parallel_tool_calls=False, top_p=0.9, temperature=0.2,
            messages=[{"role": "developer", "content": "be brief"},
                      {"role": "user", "content": [{"type": "text", "text": "parts"},
                                                   {"type": "text", "text": "\n#mock tokens=4 interval_ms=0"}]}])
    assert whole.choices[0].message.content == expected_text(prompt)
