"""The OpenAI mock, spoken to by the official `openai` package and by raw httpx reads."""

from __future__ import annotations

import json
import re
import time

import httpx
import openai
import pytest

from conftest_mock import (  # noqa: F401
    OPENAI_HEADERS, WAIT, http_client, mock_url, openai_request, start_mock,
)
from mock_ai import Script

PROMPT = "Explain SSE in one line\n#mock tokens=6 interval_ms=1"


def client(base: str, api_key: str = "mock-key") -> openai.AsyncOpenAI:
    # No retries: a retried 429 would hide the refusal under test and cost seconds of backoff.
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=api_key, max_retries=0, timeout=WAIT)


async def raw_body(base: str, text: str, **extra: object) -> tuple[int, bytes]:
    async with http_client(base) as http:
        response = await http.post("/v1/chat/completions", headers=OPENAI_HEADERS,
                                   json=openai_request(text, stream=True, **extra))
        return response.status_code, response.content


async def test_the_sdk_streams_the_script_answer_and_usage(mock_url: str) -> None:
    """`stream=True` with include_usage yields the script's exact text, then a usage chunk with no choices."""
    async with client(mock_url) as api:
        stream = await api.chat.completions.create(
            model="qwen-plus", messages=[{"role": "user", "content": PROMPT}],
            stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == Script.parse(PROMPT).answer_text()
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens == len(PROMPT)
    assert len({(c.id, c.created, c.model) for c in chunks}) == 1 and chunks[0].model == "qwen-plus"


async def test_the_wire_has_data_lines_with_a_space_and_ends_with_done(mock_url: str) -> None:
    """Every event is one `data: ` line plus a blank line; `[DONE]` is last; usage=0 drops the usage chunk."""
    status, body = await raw_body(mock_url, "hi\n#mock tokens=2 interval_ms=0 usage=0",
                                  stream_options={"include_usage": True})
    events = body.decode().split("\n\n")
    assert status == 200 and events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") and "\n" not in e for e in events[:-2])
    assert len(events[:-2]) == 4  # role, 2 tokens, finish: no usage chunk
    assert all(json.loads(e[6:])["usage"] is None for e in events[:-2])


async def test_a_wrong_key_raises_authentication_error(mock_url: str) -> None:
    """A wrong Bearer key gets HTTP 401 with OpenAI's invalid_api_key error body."""
    async with client(mock_url, api_key="sk-wrong") as api:
        with pytest.raises(openai.AuthenticationError) as caught:
            await api.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 401
    assert caught.value.body == {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                 "param": None, "code": "invalid_api_key"}


@pytest.mark.parametrize("fault, error", [("http_429", openai.RateLimitError),
                                          ("http_500", openai.InternalServerError),
                                          ("http_503", openai.InternalServerError),
                                          ("handshake_401", openai.AuthenticationError)])
async def test_http_faults_raise_the_matching_sdk_error(mock_url: str, fault: str, error: type) -> None:
    """fault=http_* answers that status before any stream, with a vendor-shaped body."""
    async with client(mock_url) as api:
        with pytest.raises(error) as caught:
            await api.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"hi\n#mock fault={fault}"}], stream=True)
    assert caught.value.status_code == int(fault[-3:])


async def test_fail_times_limits_a_fault_to_the_first_requests(mock_url: str) -> None:
    """With fail_times=2 the same message fails twice, then streams normally."""
    content = "retry me\n#mock tokens=2 interval_ms=0 fault=http_429 fail_times=2"
    async with client(mock_url) as api:
        for _ in range(2):
            with pytest.raises(openai.RateLimitError):
                await api.chat.completions.create(model="m", messages=[{"role": "user", "content": content}])
        answer = await api.chat.completions.create(model="m", messages=[{"role": "user", "content": content}])
    assert answer.choices[0].message.content == Script.parse(content).answer_text()


async def test_a_non_streamed_call_returns_one_completion(mock_url: str) -> None:
    """`stream=False` returns one chat.completion with the whole answer and usage."""
    async with client(mock_url) as api:
        answer = await api.chat.completions.create(model="m", messages=[{"role": "user", "content": PROMPT}])
    assert answer.object == "chat.completion" and answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == Script.parse(PROMPT).answer_text()
    assert answer.usage.completion_tokens == 6


@pytest.mark.parametrize("extra, directive, tokens", [({"max_tokens": 3}, "", 3),
                                                      ({"max_completion_tokens": 2}, "", 2),
                                                      ({}, " finish=length", 6)])
async def test_a_cut_answer_finishes_with_length(mock_url: str, extra: dict, directive: str, tokens: int) -> None:
    """max_tokens below the script's length cuts the answer; finish=length says so without a cut."""
    content = PROMPT + directive
    async with client(mock_url) as api:
        stream = await api.chat.completions.create(model="m", messages=[{"role": "user", "content": content}],
                                                   stream=True, **extra)
        chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "".join(Script.parse(content).answer_tokens()[:tokens])
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize("fault, tokens", [("error_before", 0), ("error_after:3", 3)])
async def test_a_mid_stream_error_raises_api_error(mock_url: str, fault: str, tokens: int) -> None:
    """error_before/error_after send `data: {"error": ...}` after HTTP 200; the SDK raises APIError."""
    content = f"hi\n#mock tokens=6 interval_ms=0 fault={fault}"
    received = []
    async with client(mock_url) as api:
        stream = await api.chat.completions.create(model="m", messages=[{"role": "user", "content": content}],
                                                   stream=True)
        with pytest.raises(openai.APIError) as caught:
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "".join(Script.parse(content).answer_tokens()[:tokens])
    assert caught.value.body["type"] == "server_error"


async def test_drop_after_truncates_the_chunked_body(mock_url: str) -> None:
    """drop_after:N aborts the connection mid-body: the client sees N tokens and an incomplete body."""
    content = "hi\n#mock tokens=6 interval_ms=0 fault=drop_after:2"
    got = b""
    async with http_client(mock_url) as http:
        async with http.stream("POST", "/v1/chat/completions", headers=OPENAI_HEADERS,
                               json=openai_request(content, stream=True)) as response:
            with pytest.raises(httpx.RemoteProtocolError):
                async for piece in response.aiter_bytes():
                    got += piece
    deltas = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in got.decode().split("\n\n") if e]
    assert "".join(d for d in deltas if d) == "".join(Script.parse(content).answer_tokens()[:2])


async def test_malformed_after_sends_a_line_that_is_not_json(mock_url: str) -> None:
    """malformed_after:N sends N tokens, then a `data:` line the SDK cannot parse."""
    async with client(mock_url) as api:
        stream = await api.chat.completions.create(
            model="m", stream=True,
            messages=[{"role": "user", "content": "hi\n#mock tokens=4 interval_ms=0 fault=malformed_after:1"}])
        with pytest.raises(json.JSONDecodeError):
            async for _ in stream:
                pass


async def test_stamp_replaces_each_token_with_its_send_time(mock_url: str) -> None:
    """stamp=1 sends `[<monotonic_ns>]` per token, taken on this host's monotonic clock at send time."""
    before = time.monotonic_ns()
    status, body = await raw_body(mock_url, "hi\n#mock tokens=3 interval_ms=5 stamp=1")
    after = time.monotonic_ns()
    stamps = [int(s) for s in re.findall(r'"content":"\[(\d+)\]"', body.decode())]
    assert status == 200 and len(stamps) == 3
    assert before < stamps[0] < stamps[1] < stamps[2] < after
    assert stamps[2] - stamps[1] >= 4_000_000  # the 5 ms interval passed between sends


async def test_first_token_ms_delays_the_first_token(mock_url: str) -> None:
    """first_token_ms holds the first token back for that long."""
    start = time.monotonic()
    async with client(mock_url) as api:
        stream = await api.chat.completions.create(
            model="m", stream=True, messages=[{"role": "user", "content": "hi\n#mock first_token_ms=150"}])
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
    assert 0.15 <= time.monotonic() - start < 0.15 + WAIT / 5


async def test_a_bad_directive_is_a_400(mock_url: str) -> None:
    """An unknown directive key is refused as OpenAI refuses a bad request."""
    async with client(mock_url) as api:
        with pytest.raises(openai.BadRequestError) as caught:
            await api.chat.completions.create(model="m", messages=[{"role": "user", "content": "#mock tokns=3"}])
    assert "tokns" in caught.value.body["message"]


async def test_defaults_from_the_app_factory_apply(start_mock) -> None:  # noqa: F811
    """create_app(defaults=...) sets the keys a message does not, as `matrix mock --tokens` would."""
    base = await start_mock(defaults={"tokens": 2, "interval_ms": 0})
    status, body = await raw_body(base, "hello")
    assert status == 200 and body.count(b'"content":') == 3  # the role chunk and 2 tokens


@pytest.mark.parametrize("fault, error", [("error_after:2", openai.InternalServerError),
                                          ("drop_after:2", openai.APIConnectionError)])
async def test_non_streamed_faults_fail_the_call(mock_url: str, fault: str, error: type) -> None:
    """Without streaming, an error fault is an HTTP 500 and a drop closes the connection unanswered."""
    async with client(mock_url) as api:
        with pytest.raises(error):
            await api.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"hi\n#mock fault={fault}"}])


async def test_credentials_from_the_app_factory_replace_the_defaults(start_mock) -> None:  # noqa: F811
    """create_app(credentials=...) changes the accepted key; the default one is then refused."""
    base = await start_mock(credentials={"openai_api_key": "sk-custom"})
    messages = [{"role": "user", "content": "hi\n#mock tokens=1"}]
    async with client(base, api_key="sk-custom") as api:
        assert (await api.chat.completions.create(model="m", messages=messages)).choices
    async with client(base) as api:
        with pytest.raises(openai.AuthenticationError):
            await api.chat.completions.create(model="m", messages=messages)
