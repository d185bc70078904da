"""The Anthropic Messages mock, spoken to by the official `anthropic` package and by raw httpx reads."""

from __future__ import annotations

import asyncio
import json

import anthropic
import httpx
import pytest

from conftest_mock import (  # noqa: F401
    ANTHROPIC_HEADERS, WAIT, anthropic_request, http_client, mock_url, start_mock,
)
from mock_ai import Script

PROMPT = "Explain SSE in one line\n#mock tokens=6 interval_ms=1"
EVENTS = ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_stop",
          "message_delta", "message_stop"]


def client(base: str, api_key: str = "mock-key") -> anthropic.AsyncAnthropic:
    # No retries: a retried 529 would hide the refusal under test and cost seconds of backoff.
    return anthropic.AsyncAnthropic(base_url=base, api_key=api_key, max_retries=0, timeout=WAIT)


def ask(content: str, **extra: object) -> dict:
    return {"model": "claude-mock", "max_tokens": 1024, "messages": [{"role": "user", "content": content}],
            **extra}


async def raw(base: str, text: str, headers: dict | None = None, **extra: object) -> tuple[httpx.Response, list[bytes]]:
    """The response and its body as the reads that delivered it."""
    async with http_client(base) as http:
        async with http.stream("POST", "/v1/messages", json=anthropic_request(text, stream=True, **extra),
                               headers=ANTHROPIC_HEADERS if headers is None else headers) as response:
            return response, [piece async for piece in response.aiter_raw()]


def events(body: bytes) -> list[tuple[str, dict]]:
    """`event: X` + `data: {"type": "X", ...}` blocks, checked to agree, as (name, payload)."""
    parsed = []
    for block in body.decode().split("\n\n")[:-1]:
        name, data = block.split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert name == f"event: {payload['type']}", block
        parsed.append((payload["type"], payload))
    return parsed


async def test_the_async_sdk_streams_the_script_answer_stop_reason_and_usage(mock_url: str) -> None:
    """`messages.stream` yields the exact text; the final message has end_turn and the token counts."""
    async with client(mock_url) as api:
        async with api.messages.stream(**ask(PROMPT), system="be brief") as stream:
            text = "".join([piece async for piece in stream.text_stream])
            message = await stream.get_final_message()
    assert text == Script.parse(PROMPT).answer_text() == message.content[0].text
    assert (message.role, message.model, message.stop_reason) == ("assistant", "claude-mock", "end_turn")
    assert (message.usage.input_tokens, message.usage.output_tokens) == (len("be brief" + PROMPT), 6)


async def test_the_wire_has_named_events_whose_type_matches(mock_url: str) -> None:
    """Every event is `event: X` + `data:` with `type` X, in the vendor's order, one ping after the block starts."""
    response, pieces = await raw(mock_url, "hi\n#mock tokens=3 interval_ms=0")
    parsed = events(b"".join(pieces))
    names = [name for name, _ in parsed]
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert names == EVENTS[:3] + ["content_block_delta"] * 3 + EVENTS[4:]
    start, delta = parsed[0][1]["message"], parsed[-2][1]
    assert start["content"] == [] and start["stop_reason"] is None and start["id"].startswith("msg_")
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 3  # cumulative, as the vendor's are


async def test_the_sync_sdk_streams_and_creates(mock_url: str) -> None:
    """The sync client too: a streamed call and a `stream: false` call give the same exact text."""
    def call() -> tuple[str, anthropic.types.Message]:
        with anthropic.Anthropic(base_url=mock_url, api_key="mock-key", max_retries=0, timeout=WAIT) as api:
            with api.messages.stream(**ask(PROMPT)) as stream:
                streamed = "".join(stream.text_stream)
            return streamed, api.messages.create(**ask(PROMPT))
    # The server shares this test's loop, so the blocking client runs in a thread beside it.
    streamed, message = await asyncio.wait_for(asyncio.to_thread(call), WAIT)
    assert streamed == message.content[0].text == Script.parse(PROMPT).answer_text()
    assert message.type == "message" and message.stop_reason == "end_turn" and message.usage.output_tokens == 6


@pytest.mark.parametrize("extra, directive, tokens", [({"max_tokens": 3}, "", 3), ({}, " finish=length", 6)])
async def test_a_cut_answer_stops_with_max_tokens(mock_url: str, extra: dict, directive: str, tokens: int) -> None:
    """max_tokens below the script's length cuts the answer; finish=length says so without a cut."""
    content = PROMPT + directive
    async with client(mock_url) as api:
        async with api.messages.stream(**{**ask(content), **extra}) as stream:
            message = await stream.get_final_message()
    assert message.content[0].text == "".join(Script.parse(content).answer_tokens()[:tokens])
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == tokens


@pytest.mark.parametrize("fault, error, tokens", [("error_after:2", "", 2), ("error_before", "", 0),
                                                   ("error_after:1", " error=api_error", 1),
                                                   ("error_before", " error=invalid_request_error", 0)])
async def test_a_mid_stream_error_event_raises_in_the_sdk(mock_url: str, fault: str, error: str, tokens: int) -> None:
    """An `event: error` after HTTP 200 raises APIStatusError with the error's type (overloaded_error by default)."""
    content = f"hi\n#mock tokens=6 interval_ms=0 fault={fault}{error}"
    received = []
    async with client(mock_url) as api:
        stream = await api.messages.create(**ask(content), stream=True)
        with pytest.raises(anthropic.APIStatusError) as caught:
            async for event in stream:
                if event.type == "content_block_delta":
                    received.append(event.delta.text)
    assert "".join(received) == "".join(Script.parse(content).answer_tokens()[:tokens])
    assert caught.value.type == (error.removeprefix(" error=") or "overloaded_error")
    assert caught.value.body["type"] == "error" and "mock fault" in caught.value.body["error"]["message"]


@pytest.mark.parametrize("fault, error, status", [("http_529", anthropic.OverloadedError, 529),
                                                  ("http_429", anthropic.RateLimitError, 429),
                                                  ("http_500", anthropic.InternalServerError, 500),
                                                  ("handshake_401", anthropic.AuthenticationError, 401)])
async def test_http_faults_raise_the_matching_sdk_error(mock_url: str, fault: str, error: type, status: int) -> None:
    """fault=http_* answers that status before any stream, with Anthropic's error body and a request id."""
    async with client(mock_url) as api:
        with pytest.raises(error) as caught:
            await api.messages.create(**ask(f"hi\n#mock fault={fault}"), stream=True)
    body = caught.value.body
    assert caught.value.status_code == status and body["type"] == "error"
    assert body["error"]["type"] == {529: "overloaded_error", 429: "rate_limit_error", 500: "api_error",
                                     401: "authentication_error"}[status]
    assert caught.value.request_id == body["request_id"] and body["request_id"].startswith("req_")


async def test_a_wrong_key_raises_authentication_error(mock_url: str) -> None:
    """A wrong key is 401 `authentication_error`, sent by the SDK (Bearer) or as `x-api-key` alike."""
    async with client(mock_url, api_key="sk-ant-wrong") as api:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await api.messages.create(**ask("hi"))
    assert caught.value.body["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
    response, _ = await raw(mock_url, "hi", headers={**ANTHROPIC_HEADERS, "x-api-key": "wrong"})
    assert response.status_code == 401


@pytest.mark.parametrize("headers", [{"x-api-key": "mock-key"},
                                     {"x-api-key": "mock-key", "anthropic-version": "latest"}])
async def test_a_missing_or_bad_version_header_is_a_400(mock_url: str, headers: dict) -> None:
    """`anthropic-version` is required and must be a release date."""
    response, pieces = await raw(mock_url, "hi", headers=headers)
    body = json.loads(b"".join(pieces))
    assert response.status_code == 400 and body["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in body["error"]["message"]


async def test_a_bad_body_or_directive_is_a_bad_request(mock_url: str) -> None:
    """A body without max_tokens, or an unknown directive key, is refused as invalid_request_error."""
    async with client(mock_url) as api:
        with pytest.raises(anthropic.BadRequestError) as missing:
            await api.messages.create(**ask("hi"), extra_body={"max_tokens": None})
        with pytest.raises(anthropic.BadRequestError) as directive:
            await api.messages.create(**ask("#mock tokns=3"))
    assert "max_tokens" in missing.value.body["error"]["message"]
    assert "tokns" in directive.value.body["error"]["message"]


async def test_split_delivers_the_same_events_in_many_reads(mock_url: str) -> None:
    """split=5 writes every event in 5-byte pieces; the events and the text are unchanged."""
    text = "你好\n#mock tokens=3 interval_ms=0 split=5"
    _, pieces = await raw(mock_url, text)
    body = b"".join(pieces)
    assert len(pieces) >= len(body) // 5 // 2 and max(len(p) for p in pieces) <= 5 * 4
    deltas = [payload["delta"]["text"] for name, payload in events(body) if name == "content_block_delta"]
    assert "".join(deltas) == Script.parse(text).answer_text()
    async with client(mock_url) as api:
        async with api.messages.stream(**ask(text)) as stream:
            assert (await stream.get_final_text()) == Script.parse(text).answer_text()


async def test_drop_after_truncates_the_body(mock_url: str) -> None:
    """drop_after:N aborts mid-body after N deltas, without content_block_stop or message_stop."""
    content = "hi\n#mock tokens=6 interval_ms=0 fault=drop_after:2"
    got = b""
    async with http_client(mock_url) as http:
        async with http.stream("POST", "/v1/messages", headers=ANTHROPIC_HEADERS,
                               json=anthropic_request(content, stream=True)) as response:
            with pytest.raises(httpx.RemoteProtocolError):
                async for piece in response.aiter_bytes():
                    got += piece
    parsed = events(got)
    assert [name for name, _ in parsed] == EVENTS[:3] + ["content_block_delta"] * 2
    assert "".join(p["delta"]["text"] for _, p in parsed[3:]) == "".join(Script.parse(content).answer_tokens()[:2])
    async with client(mock_url) as api:
        # Mid-stream the SDK lets its HTTP library's error through (httpx, or httpx2 in SDK 2.x).
        with pytest.raises(Exception) as caught:
            async with api.messages.stream(**ask(content)) as stream:
                await stream.get_final_message()
    assert type(caught.value).__name__ == "RemoteProtocolError"


async def test_malformed_after_sends_an_event_the_sdk_cannot_parse(mock_url: str) -> None:
    """malformed_after:N sends N deltas, then a `data:` line that is not JSON, then ends."""
    content = "hi\n#mock tokens=4 interval_ms=0 fault=malformed_after:1"
    _, pieces = await raw(mock_url, content)
    *_, last = b"".join(pieces).decode().split("\n\n")[:-1]
    assert last.startswith("event: content_block_delta\ndata: {")
    with pytest.raises(json.JSONDecodeError):
        json.loads(last.split("data: ", 1)[1])
    async with client(mock_url) as api:
        with pytest.raises(json.JSONDecodeError):
            async with api.messages.stream(**ask(content)) as stream:
                await stream.get_final_message()


@pytest.mark.parametrize("fault, error", [("error_after:2", anthropic.InternalServerError),
                                          ("drop_after:2", anthropic.APIConnectionError)])
async def test_non_streamed_faults_fail_the_call(mock_url: str, fault: str, error: type) -> None:
    """Without streaming, an error fault is an HTTP 500 api_error and a drop closes the connection unanswered."""
    async with client(mock_url) as api:
        with pytest.raises(error):
            await api.messages.create(**ask(f"hi\n#mock fault={fault}"))


async def test_credentials_from_the_app_factory_replace_the_defaults(start_mock) -> None:  # noqa: F811
    """create_app(credentials=...) changes the accepted key; the default one is then refused."""
    base = await start_mock(credentials={"anthropic_api_key": "sk-ant-custom"})
    async with client(base, api_key="sk-ant-custom") as api:
        assert (await api.messages.create(**ask("hi\n#mock tokens=1"))).content
    async with client(base) as api:
        with pytest.raises(anthropic.AuthenticationError):
            await api.messages.create(**ask("hi"))
