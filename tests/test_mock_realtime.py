"""The OpenAI Realtime mock, spoken to by the official `openai` package's Realtime clients and by raw websockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest
import websockets

from conftest_mock import (  # noqa: F401
    OPENAI_HEADERS, WAIT, http_client, mock_url, realtime_ask, realtime_url, settled, start_mock,
)
from mock_ai import Script

PROMPT = "Explain WebSockets in one line\n#mock tokens=5 interval_ms=1"
RESPONSE_EVENTS = ["response.created", "response.output_item.added", "response.content_part.added",
                   *["response.output_text.delta"] * 5, "response.output_text.done", "response.content_part.done",
                   "response.output_item.done", "response.done"]


def client(base: str, api_key: str = "mock-key") -> openai.AsyncOpenAI:
    # The beta client builds wss:// from base_url unless websocket_base_url says ws://.
    return openai.AsyncOpenAI(base_url=f"{base}/v1", websocket_base_url=f"{base.replace('http', 'ws', 1)}/v1",
                              api_key=api_key, max_retries=0, timeout=WAIT)


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def until_done(connection: Any) -> list[Any]:
    """SDK events up to and including `response.done` (or an `error`), bounded by WAIT."""
    events = []
    async with asyncio.timeout(WAIT):
        async for event in connection:
            events.append(event)
            if event.type in ("response.done", "error"):
                return events
    return events


def text_of(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type in ("response.output_text.delta", "response.text.delta"))


@asynccontextmanager
async def raw_session(base: str, headers: dict | None = None) -> AsyncIterator[websockets.ClientConnection]:
    """A plain websockets client past `session.created`."""
    async with websockets.connect(realtime_url(base), additional_headers=OPENAI_HEADERS if headers is None else headers,
                                  open_timeout=WAIT, close_timeout=WAIT) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), WAIT))["type"] == "session.created"
        yield ws


async def recv_json(ws: websockets.ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), WAIT))


async def test_the_ga_sdk_completes_a_text_response(mock_url: str) -> None:
    """`client.realtime.connect`: session.update, one item, response.create; the GA events, exact text, usage."""
    async with client(mock_url) as api, api.realtime.connect(model="gpt-realtime") as connection:
        await connection.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                                 "instructions": "be brief"})
        await connection.conversation.item.create(item=user(PROMPT))
        await connection.response.create()
        events = await until_done(connection)
    names = [e.type for e in events]
    assert names == ["session.created", "session.updated", "conversation.item.added", "conversation.item.done",
                     *RESPONSE_EVENTS]
    assert events[1].session.instructions == "be brief" and events[1].session.output_modalities == ["text"]
    assert text_of(events) == Script.parse(PROMPT).answer_text() == events[-4].text
    done = events[-1].response
    assert done.status == "completed" and done.status_details is None
    assert done.output[0].content[0].text == Script.parse(PROMPT).answer_text()
    assert (done.usage.input_tokens, done.usage.output_tokens) == (len("be brief" + PROMPT), 5)
    ids = {(e.response_id, e.item_id) for e in events if e.type == "response.output_text.delta"}
    assert ids == {(done.id, done.output[0].id)}


async def test_response_cancel_ends_the_response_cancelled_and_the_session_goes_on(mock_url: str) -> None:
    """`response.cancel` mid-stream gives `response.done` cancelled (client_cancelled); a next response completes."""
    slow = "tell me more\n#mock tokens=50 interval_ms=20 tag=cancel"
    async with client(mock_url) as api, api.realtime.connect(model="gpt-realtime") as connection:
        await connection.conversation.item.create(item=user(slow))
        await connection.response.create()
        events = []
        async with asyncio.timeout(WAIT):
            async for event in connection:
                events.append(event)
                if sum(e.type == "response.output_text.delta" for e in events) == 2 and \
                        event.type == "response.output_text.delta":
                    await connection.response.cancel()
                if event.type == "response.done":
                    break
        await connection.conversation.item.create(item=user(PROMPT))
        await connection.response.create()
        after = await until_done(connection)
    done = events[-1].response
    assert done.status == "cancelled" and done.status_details.reason == "client_cancelled"
    assert events[-2].type == "response.output_item.done" and done.output[0].status == "incomplete"
    sent = text_of(events)
    assert Script.parse(slow).answer_text().startswith(sent) and 2 <= done.usage.output_tokens < 50
    assert after[-1].response.status == "completed" and text_of(after) == Script.parse(PROMPT).answer_text()
    conn = await settled(mock_url, "cancel")
    assert conn["outcome"] == "client_closed" and conn["tokens_sent"] >= 2


async def test_a_cancel_during_a_stall_ends_it_too(mock_url: str) -> None:
    """stall_after:N stops sending; `response.cancel` still ends the response as cancelled."""
    async with raw_session(mock_url) as ws:
        await realtime_ask(ws, "hi\n#mock tokens=5 interval_ms=0 fault=stall_after:1")
        while (event := await recv_json(ws))["type"] != "response.output_text.delta":
            pass
        await ws.send(json.dumps({"type": "response.cancel"}))
        while (event := await recv_json(ws))["type"] != "response.done":
            assert event["type"] != "response.output_text.delta"
    assert event["response"]["status"] == "cancelled"


@pytest.mark.parametrize("fault, code", [("error_before", "server_error"), ("http_429", "rate_limit_exceeded"),
                                         ("error_before error=session_expired", "session_expired")])
async def test_the_sdk_sees_an_error_event_and_the_session_stays_open(mock_url: str, fault: str, code: str) -> None:
    """error_before (and an in-session http_* fault) answers response.create with an `error` event, no response."""
    async with client(mock_url) as api, api.realtime.connect(model="gpt-realtime") as connection:
        await connection.conversation.item.create(item=user(f"hi\n#mock fault={fault}"))
        await connection.response.create()
        events = await until_done(connection)
        await connection.conversation.item.create(item=user(PROMPT))
        await connection.response.create()
        after = await until_done(connection)
    assert [e.type for e in events][-2:] == ["conversation.item.done", "error"]
    assert events[-1].error.code == code and "mock fault" in events[-1].error.message
    assert after[-1].type == "response.done" and after[-1].response.status == "completed"


async def test_error_after_sends_the_error_then_a_failed_response(mock_url: str) -> None:
    """error_after:N: N deltas, an `error` event, then `response.done` failed carrying the same error."""
    content = "hi\n#mock tokens=5 interval_ms=0 fault=error_after:2"
    async with client(mock_url) as api, api.realtime.connect(model="gpt-realtime") as connection:
        await connection.conversation.item.create(item=user(content))
        await connection.response.create()
        events = await until_done(connection)
        events += await until_done(connection)  # the error first, then the response's end
    names = [e.type for e in events]
    assert names[-5:] == ["error", "response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.done"]
    assert text_of(events) == "".join(Script.parse(content).answer_tokens()[:2])
    status = events[-1].response.status_details
    assert events[-1].response.status == "failed" and status.error.code == events[-5].error.code == "server_error"


@pytest.mark.parametrize("where", ["session", "response"])
async def test_max_output_tokens_ends_the_response_incomplete(mock_url: str, where: str) -> None:
    """max_output_tokens (session or response) cuts the answer: status incomplete, reason max_output_tokens."""
    async with client(mock_url) as api, api.realtime.connect(model="gpt-realtime") as connection:
        if where == "session":
            await connection.session.update(session={"type": "realtime", "max_output_tokens": 2})
        await connection.conversation.item.create(item=user(PROMPT))
        await connection.response.create(**({"response": {"max_output_tokens": 2}} if where == "response" else {}))
        events = await until_done(connection)
    done = events[-1].response
    assert done.status == "incomplete" and done.status_details.reason == "max_output_tokens"
    assert text_of(events) == "".join(Script.parse(PROMPT).answer_tokens()[:2]) and done.usage.output_tokens == 2


async def test_the_beta_sdk_gets_the_beta_event_names(mock_url: str) -> None:
    """`client.beta.realtime.connect` sends `OpenAI-Beta: realtime=v1`: beta names (`response.text.delta`)."""
    async with client(mock_url) as api, api.beta.realtime.connect(model="gpt-4o-realtime-preview") as connection:
        await connection.session.update(session={"modalities": ["text"]})
        await connection.conversation.item.create(item=user(PROMPT))
        await connection.response.create()
        events = await until_done(connection)
    names = [e.type for e in events]
    assert names[:3] == ["session.created", "session.updated", "conversation.item.created"]
    assert names.count("response.text.delta") == 5 and "response.text.done" in names
    assert not any("output_text" in name for name in names)
    assert events[0].session.modalities == ["text"] and text_of(events) == Script.parse(PROMPT).answer_text()
    assert events[-1].response.status == "completed"


async def test_the_beta_directive_switches_one_response(mock_url: str) -> None:
    """`beta=1` in the message gives that response the beta text event names on a GA session."""
    async with raw_session(mock_url) as ws:
        await realtime_ask(ws, "hi\n#mock tokens=2 interval_ms=0 beta=1")
        names = []
        while not names or names[-1] != "response.done":
            names.append((await recv_json(ws))["type"])
    assert names.count("response.text.delta") == 2 and "response.output_text.delta" not in names


async def test_a_wrong_key_is_refused_at_the_handshake(mock_url: str) -> None:
    """A wrong Bearer key gets HTTP 401 and OpenAI's error body on the upgrade; the SDK raises InvalidStatus."""
    with pytest.raises(websockets.InvalidStatus) as caught:
        async with client(mock_url, api_key="sk-wrong") as api, api.realtime.connect(model="gpt-realtime"):
            pass
    response = caught.value.response
    assert response.status_code == 401
    assert json.loads(response.body)["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("fault, status", [("http_429", 429), ("http_503", 503), ("handshake_401", 401)])
async def test_armed_handshake_faults_refuse_the_upgrade_once(mock_url: str, fault: str, status: int) -> None:
    """`POST /_mock/arm` for openai-realtime refuses the next upgrade with that status; the one after opens."""
    async with http_client(mock_url) as http:
        armed = await http.post("/_mock/arm", json={"vendor": "openai-realtime", "directive": f"fault={fault}"})
        assert armed.status_code == 200
    with pytest.raises(websockets.InvalidStatus) as caught:
        async with raw_session(mock_url):
            pass
    assert caught.value.response.status_code == status and json.loads(caught.value.response.body)["error"]
    async with raw_session(mock_url) as ws:
        await realtime_ask(ws, "hi\n#mock tokens=1 interval_ms=0")
        while (await recv_json(ws))["type"] != "response.done":
            pass


async def test_a_missing_model_is_refused(mock_url: str) -> None:
    """The model is part of the URL: without it the upgrade is refused with 400."""
    with pytest.raises(websockets.InvalidStatus) as caught:
        async with websockets.connect(realtime_url(mock_url).split("?")[0], additional_headers=OPENAI_HEADERS,
                                      open_timeout=WAIT):
            pass
    assert caught.value.response.status_code == 400


async def test_drop_after_aborts_the_connection(mock_url: str) -> None:
    """drop_after:N sends N deltas, then drops TCP: no close frame (1006 for the client)."""
    content = "hi\n#mock tokens=5 interval_ms=0 fault=drop_after:2"
    deltas = []
    with pytest.raises(websockets.ConnectionClosedError) as caught:
        async with raw_session(mock_url) as ws:
            await realtime_ask(ws, content)
            while True:
                event = await recv_json(ws)
                if event["type"] == "response.output_text.delta":
                    deltas.append(event["delta"])
    assert caught.value.rcvd is None  # no close frame came
    assert "".join(deltas) == "".join(Script.parse(content).answer_tokens()[:2])


async def test_malformed_after_sends_a_frame_that_is_not_json_then_closes(mock_url: str) -> None:
    """malformed_after:N sends N deltas, a frame that is not JSON, then a normal close."""
    async with raw_session(mock_url) as ws:
        await realtime_ask(ws, "hi\n#mock tokens=5 interval_ms=0 fault=malformed_after:1")
        frames = []
        async with asyncio.timeout(WAIT):
            async for message in ws:
                frames.append(message)
    assert '"response.output_text.delta"' in frames[-2]
    with pytest.raises(json.JSONDecodeError):
        json.loads(frames[-1])
    assert ws.close_code == 1000


async def test_bad_client_events_get_error_events(mock_url: str) -> None:
    """Bad JSON, unknown or text-less events, a GA session.update without type, a cancel with nothing
    to cancel and a bad directive each get an `error` event with a code; the session stays open."""
    sent = ["{not json", json.dumps({"type": "input_audio_buffer.append", "audio": ""}),
            json.dumps({"type": "session.update", "session": {"instructions": "x"}}),
            json.dumps({"type": "response.cancel", "event_id": "evt_1"}),
            json.dumps({"type": "conversation.item.create", "item": "hi"})]
    async with raw_session(mock_url) as ws:
        errors = []
        for frame in sent:
            await ws.send(frame)
            errors.append((await recv_json(ws))["error"])
        await realtime_ask(ws, "#mock tokns=3")
        while (event := await recv_json(ws))["type"] != "error":
            pass
        errors.append(event["error"])
    assert [e["code"] for e in errors] == ["invalid_json", "invalid_value", "missing_required_parameter",
                                           "response_cancel_not_active", "invalid_type", "invalid_value"]
    assert errors[3]["event_id"] == "evt_1" and "tokns" in errors[5]["message"]
