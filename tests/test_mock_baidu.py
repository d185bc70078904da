"""The Baidu agent mock, read byte by byte with raw httpx streams."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from conftest_mock import BAIDU_PATH, baidu_request, http_client, mock_url, start_mock  # noqa: F401
from mock_ai import Script


async def read(base: str, text: str, path: str = BAIDU_PATH,
               **extra: object) -> tuple[httpx.Response, list[bytes]]:
    """POST and collect the body read by read, as the client received it."""
    async with http_client(base) as http:
        async with http.stream("POST", path, json=baidu_request(text, **extra)) as response:
            return response, [piece async for piece in response.aiter_raw()]


def events(body: bytes) -> list[tuple[str, dict | None]]:
    """(event name, data JSON or None) per event; asserts the no-space framing on the way."""
    parsed = []
    for block in body.decode().split("\n\n")[:-1]:
        lines = block.split("\n")
        assert lines[0] in ("event:message", "event:ping"), block
        assert all(line.startswith("data:{") for line in lines[1:]), block
        parsed.append((lines[0].removeprefix("event:"), json.loads(lines[1][5:]) if lines[1:] else None))
    return parsed


def text_of(parsed: list[tuple[str, dict | None]]) -> str:
    return "".join(item["data"]["text"] for name, data in parsed if name == "message"
                   for item in data["data"]["message"]["content"] if "data" in item)


async def test_a_turn_streams_markdown_pieces_pings_and_ends_with_end_turn(mock_url: str) -> None:
    """`event:message`/`data:{` without spaces, a ping per 5 tokens, the answer, then endTurn and the end."""
    text = "你好\n#mock tokens=7 interval_ms=0"
    response, pieces = await read(mock_url, text, threadId="th-1")
    body = b"".join(pieces)
    parsed = events(body)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert body.startswith(b"event:message\ndata:{") and b"data: " not in body
    assert [name for name, _ in parsed] == ["message"] * 5 + ["ping"] + ["message"] * 3
    assert text_of(parsed) == Script.parse(text).answer_text()
    messages = [data["data"]["message"] for name, data in parsed if name == "message"]
    assert all(m["threadId"] == "th-1" and m["msgId"] == messages[0]["msgId"] for m in messages)
    assert [m["endTurn"] for m in messages] == [False] * 7 + [True]
    first = messages[0]["content"][0]
    assert (first["dataType"], first["isFinished"], first["data"]["type"], first["data"]["showType"]) == \
        ("markdown", False, "txt", "append")
    assert "feedback" in messages[-1]["content"][0] and body.endswith(b"}}}\n\n")


async def test_split_delivers_the_same_events_in_many_reads(mock_url: str) -> None:
    """split=3 writes 3-byte pieces that arrive in separate reads, cutting inside UTF-8 characters."""
    text = "你好\n#mock tokens=2 interval_ms=0 split=3"
    _, pieces = await read(mock_url, text)
    body = b"".join(pieces)
    assert len(pieces) >= len(body) // 3 // 2  # most pieces arrive on their own
    assert max(len(p) for p in pieces) <= 3 * 4
    undecodable = 0
    for piece in pieces:
        try:
            piece.decode()
        except UnicodeDecodeError:
            undecodable += 1
    assert undecodable > 0  # some boundary fell inside a multi-byte character
    assert text_of(events(body)) == Script.parse(text).answer_text()


@pytest.mark.parametrize("path, status", [
    ("/assistant/conversation?appId=nope&secretKey=mock-secret", 11),
    ("/assistant/conversation?appId=mock-agent&secretKey=nope", 13),
    ("/assistant/conversation?appId=mock-agent", 13),
])
async def test_bad_credentials_get_one_error_frame(mock_url: str, path: str, status: int) -> None:
    """A wrong appId (11) or secretKey (13) gets HTTP 200 and a single frame with that status."""
    response, pieces = await read(mock_url, "hi", path=path)
    [(name, data)] = events(b"".join(pieces))
    assert response.status_code == 200 and data["status"] == status and data["message"]


@pytest.mark.parametrize("fault, tokens", [("error_before", 0), ("error_after:2", 2)])
async def test_an_error_frame_ends_the_body_without_end_turn(mock_url: str, fault: str, tokens: int) -> None:
    """error_before/error_after:N send N pieces, then a frame with status != 0 and a message, then end."""
    text = f"hi\n#mock tokens=5 interval_ms=0 fault={fault}"
    _, pieces = await read(mock_url, text)
    parsed = events(b"".join(pieces))
    *good, (_, error) = parsed
    assert text_of(good) == "".join(Script.parse(text).answer_tokens()[:tokens])
    assert error["status"] != 0 and error["message"] and "data" not in error


@pytest.mark.parametrize("fault, status", [("http_429", 429), ("http_500", 500), ("http_503", 503),
                                           ("handshake_401", 401)])
async def test_http_faults_answer_a_json_error(mock_url: str, fault: str, status: int) -> None:
    """fault=http_* answers that HTTP status with a vendor-shaped JSON body instead of a stream."""
    response, pieces = await read(mock_url, f"hi\n#mock fault={fault}")
    body = json.loads(b"".join(pieces))
    assert response.status_code == status and body["status"] != 0 and body["message"]


async def test_a_ping_keeps_a_slow_first_token_company(mock_url: str) -> None:
    """During a long first-token wait the stream carries `event:ping` before any text."""
    _, pieces = await read(mock_url, "hi\n#mock tokens=1 first_token_ms=600")
    assert [name for name, _ in events(b"".join(pieces))][:2] == ["ping", "message"]


async def test_drop_after_truncates_the_body(mock_url: str) -> None:
    """drop_after:N aborts mid chunked body: the client gets N pieces and a protocol error."""
    text = "hi\n#mock tokens=5 interval_ms=0 fault=drop_after:3"
    got = b""
    async with http_client(mock_url) as http:
        async with http.stream("POST", BAIDU_PATH, json=baidu_request(text)) as response:
            with pytest.raises(httpx.RemoteProtocolError):
                async for piece in response.aiter_raw():
                    got += piece
    assert text_of(events(got)) == "".join(Script.parse(text).answer_tokens()[:3])


async def test_malformed_after_sends_a_data_line_that_is_not_json(mock_url: str) -> None:
    """malformed_after:N follows N pieces with a `data:` line that does not parse."""
    _, pieces = await read(mock_url, "hi\n#mock tokens=3 interval_ms=0 fault=malformed_after:1")
    blocks = b"".join(pieces).decode().split("\n\n")[:-1]
    assert len(blocks) == 2 and blocks[1].startswith("event:message\ndata:{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(blocks[1].split("\n")[1][5:])


async def test_a_missing_show_text_is_a_status_1000_frame(mock_url: str) -> None:
    """A body without message.content.value.showText is refused in-band with status 1000."""
    async with http_client(mock_url) as http:
        response = await http.post(BAIDU_PATH, json={"message": {}, "from": "openapi"})
    [(_, data)] = events(response.content)
    assert data["status"] == 1000


async def test_interval_spaces_the_tokens(mock_url: str) -> None:
    """interval_ms=40 between 3 tokens makes the turn last at least 80 ms."""
    start = time.monotonic()
    await read(mock_url, "hi\n#mock tokens=3 interval_ms=40")
    assert time.monotonic() - start >= 0.08
