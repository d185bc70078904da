"""Hostile input at the front door: each gets a clear refusal or correct handling, and the relay serves on.

One relay (with the mock providers and a hostile provider) serves the whole module, so the
last test proves that a normal stream still works on every combination after all of it.
Every SSE response is parsed from its raw bytes: each frame must be `id:`/`event:`/`data:`
lines (or a `: ping` comment) and its data one JSON object. The CORPUS tables below are
the record of every hostile input class and what the relay did with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Callable

import httpx
import pytest
import pytest_asyncio
import websockets
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from clients import TIMEOUT, UPSTREAMS as TRANSPORTS, assert_well_formed, chat_body, expected_text, text_of
from conftest import TEST_STREAM
from matrix.app import create_app, start_site
from matrix.config import Settings
from mock_ai import relay_upstreams
from mock_ai.app import create_app as create_mock
from test_fuzz import answer_to

pytestmark = pytest.mark.asyncio(loop_scope="module")

UPSTREAMS = tuple(TRANSPORTS)
# What a hostile provider says, in every field the relay passes on: line ends, a forged
# terminal frame, NUL, a Unicode line separator, quotes.
EVIL = 'boom\r\n\r\nevent: done\ndata: {}\n\nid: 99\r\x00\u2028 "end"'
EVIL_CODE = "x\r\n\r\nevent: done"
EVIL_TEXT = ["ok ", "\r\n\r\nevent: done\ndata: {}\n\n", "\x00", "\u2028\u2029\x85", "🚀 end"]


# -- the relay under attack, the mock, and a hostile provider ------------------------------


async def _serve(app: web.Application, **kw) -> tuple[web.AppRunner, int]:
    # The providers' own request errors go to their own logger: the module watches the relay's.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25,
                           logger=logging.getLogger("test.provider"), **kw)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


def _sse(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def _stream(request: web.Request, *chunks: bytes) -> web.StreamResponse:
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for chunk in chunks:
        await response.write(chunk)
    return response


def _delta(text: str) -> bytes:
    return _sse({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})


async def openai_error_in_stream(request: web.Request) -> web.StreamResponse:
    return await _stream(request, _delta("ok "), _sse({"error": {"message": EVIL, "type": "invalid_request_error",
                                                                 "code": EVIL_CODE}}))


async def openai_http_error(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"error": {"message": EVIL, "type": "invalid_request_error", "code": EVIL_CODE}},
                             status=400)


async def openai_evil_text(request: web.Request) -> web.StreamResponse:
    return await _stream(request, *map(_delta, EVIL_TEXT), b"data: [DONE]\n\n")


async def openai_invalid_utf8(request: web.Request) -> web.StreamResponse:
    return await _stream(request, b'data: {"choices":[{"index":0,"delta":{"content":"a\xff\xfeb"}}]}\n\n',
                         b"data: [DONE]\n\n")


async def baidu_error(request: web.Request) -> web.StreamResponse:
    return await _stream(request, b"data:" + json.dumps({"status": 5, "message": EVIL}).encode() + b"\n\n")


async def spark_error(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.receive(timeout=TIMEOUT)
    await ws.send_str(json.dumps({"header": {"code": 10013, "message": EVIL, "sid": "evil", "status": 2}}))
    await ws.close()
    return ws


async def spark_refuse(request: web.Request) -> web.Response:
    return web.json_response({"message": EVIL}, status=401)


def hostile_provider() -> web.Application:
    app = web.Application()
    app.router.add_post("/openai/error-in-stream", openai_error_in_stream)
    app.router.add_post("/openai/http-error", openai_http_error)
    app.router.add_post("/openai/evil-text", openai_evil_text)
    app.router.add_post("/openai/invalid-utf8", openai_invalid_utf8)
    app.router.add_post("/baidu/error", baidu_error)
    app.router.add_get("/spark/error", spark_error)
    app.router.add_get("/spark/refuse", spark_refuse)
    return app


def evil_upstreams(port: int) -> dict[str, dict]:
    http = f"http://127.0.0.1:{port}"
    openai = {"kind": "openai", "api_key": "k"}
    return {
        "evil-stream-error": {**openai, "url": f"{http}/openai/error-in-stream"},
        "evil-http-error": {**openai, "url": f"{http}/openai/http-error"},
        "evil-text": {**openai, "url": f"{http}/openai/evil-text"},
        "evil-utf8": {**openai, "url": f"{http}/openai/invalid-utf8"},
        "evil-baidu": {"kind": "baidu-agent", "url": f"{http}/baidu/error", "app_id": "a", "secret_key": "s"},
        "evil-spark": {"kind": "spark", "url": f"ws://127.0.0.1:{port}/spark/error", "app_id": "a",
                       "api_key": "k", "api_secret": "s"},
        "evil-spark-401": {"kind": "spark", "url": f"ws://127.0.0.1:{port}/spark/refuse", "app_id": "a",
                           "api_key": "k", "api_secret": "s"},
    }


class ErrorRecords(logging.Handler):
    """Every ERROR the relay's process logs: an unhandled exception, a 500, an internal error."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith("test."):
            self.records.append(record)


@dataclass
class Front:
    base: str
    port: int
    errors: ErrorRecords

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/chat/ws"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def front():
    """One relay for the module, on the mock providers and the hostile provider."""
    errors = ErrorRecords()
    logging.getLogger().addHandler(errors)
    mock_runner, mock_port = await _serve(create_mock())
    evil_runner, evil_port = await _serve(hostile_provider())
    settings = Settings(server={"header_timeout_s": 2.0},
                        stream={**TEST_STREAM, "retry_attempts": 1},
                        # one client address sends the whole corpus: lift the start rate limit
                        limits={"starts_per_minute": 1e6, "burst": 10**6},
                        upstreams={**relay_upstreams(f"127.0.0.1:{mock_port}"), **evil_upstreams(evil_port)})
    relay_runner, port = await start_site(create_app(settings), "127.0.0.1", 0, settings.server.header_timeout_s)
    try:
        yield Front(f"http://127.0.0.1:{port}", port, errors)
    finally:
        for runner in (relay_runner, evil_runner, mock_runner):
            await runner.cleanup()
        logging.getLogger().removeHandler(errors)


# -- clients that keep the raw bytes ------------------------------------------------------


def strict_sse(raw: bytes) -> list[dict]:
    """Parse an SSE body strictly: `id:`/`event:`/`data:` frames or `: ping`, data one JSON object."""
    assert raw.endswith(b"\n\n"), raw[-200:]
    assert b"\r" not in raw and b"\x00" not in raw
    events = []
    for block in raw[:-2].split(b"\n\n"):
        if block == b": ping":
            continue
        lines = block.split(b"\n")
        assert len(lines) == 3, block
        assert lines[0].startswith(b"id: ") and lines[0][4:].isdigit(), block
        assert lines[1].startswith(b"event: ") and lines[2].startswith(b"data: "), block
        event = json.loads(lines[2][6:])
        assert isinstance(event, dict) and event["type"] == lines[1][7:].decode()
        assert event["seq"] == int(lines[0][4:])
        events.append(event)
    return events


def refusal(raw: bytes) -> dict:
    """The body of an HTTP refusal, which must be exactly {"error": {"code", "message", "type", "param"}}."""
    body = json.loads(raw)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "type", "param"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def http_outcome(status: int, content_type: str, raw: bytes) -> tuple[str, list[dict]]:
    """`200 done stop` / `200 error <code>` for a stream, `<status> <code>` for a refusal."""
    assert status < 500, raw[:500]
    if status == 200 and content_type.startswith("text/event-stream"):
        events = strict_sse(raw)
        assert_contiguous(events)
        end = events[-1]
        return f"200 {end['type']} {end.get('reason') or end.get('code')}", events
    if content_type.startswith("application/json"):
        return f"{status} {refusal(raw)['code']}", []
    return f"{status} non-JSON", []


async def sse_post(front: Front, body: bytes, headers: dict | None = None, content=None) -> tuple[str, list[dict]]:
    """POST /v1/chat/sse with httpx (an independent client) and judge the raw answer."""
    async with asyncio.timeout(TIMEOUT):
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            response = await client.post(f"{front.base}/v1/chat/sse", content=body if content is None else content,
                                         headers={"Content-Type": "application/json", **(headers or {})})
    return http_outcome(response.status_code, response.headers.get("content-type", ""), response.content)


async def raw_http(front: Front, request: bytes, *, trickle: bytes = b"",
                   every: float = 0.0) -> tuple[int, dict, bytes]:
    """Send bytes no HTTP library would send (then `trickle`, a byte per `every` s, until the relay answers);
    read the answer: (status, headers, de-chunked body)."""
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)

        async def dribble() -> None:
            for byte in trickle:
                await asyncio.sleep(every)
                writer.write(bytes([byte]))

        sender = asyncio.get_running_loop().create_task(dribble())
        try:
            writer.write(request)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                head = exc.partial
            sender.cancel()
            assert head, "the relay closed the connection without an answer"
            status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
            if "content-length" in headers:  # not to EOF: aiohttp lingers on an unread request body
                body = await reader.readexactly(int(headers["content-length"]))
            else:
                body = await reader.read()
        finally:
            sender.cancel()
            writer.close()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return int(status_line.split()[1]), headers, body


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, body = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, body = out + body[:n], body[n + 2:]
    return out


async def raw_outcome(front: Front, request: bytes, **kw) -> tuple[str, list[dict]]:
    status, headers, body = await raw_http(front, request, **kw)
    return http_outcome(status, headers.get("content-type", ""), body)


def post(path: str, body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return (f"POST {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def get(path: str, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n{extra}\r\n".encode("latin-1")


async def ws_send(front: Front, *frames: str | bytes | tuple[str, bytes]) -> tuple[str, list[dict]]:
    """Send hostile frames (("text", bytes) = raw bytes in a text frame), then a normal chat on the same
    socket: `error <code>` / `stream done stop` with the events that answered, or `close <code>`."""
    async with asyncio.timeout(TIMEOUT):
        async with websockets.connect(front.ws, max_size=None) as ws:
            try:
                for frame in frames:
                    if isinstance(frame, tuple):
                        await ws.send(frame[1], text=True)
                    else:
                        await ws.send(frame)
                other, _ = await answer_to(ws)
            except websockets.ConnectionClosed as closed:
                return f"close {closed.rcvd.code if closed.rcvd else 1006}", []
    streamed = [e for e in other if "seq" in e]
    errors = [e for e in other if "seq" not in e]
    for error in errors:
        assert error["type"] == "error" and error["code"] and isinstance(error["message"], str), error
    if streamed:
        assert not errors, other
        assert_contiguous(streamed)
        end = streamed[-1]
        return f"stream {end['type']} {end.get('reason') or end.get('code')}", streamed
    codes = {e["code"] for e in errors}
    assert len(codes) == 1, errors
    return f"error {codes.pop()}", errors


def assert_contiguous(events: list[dict]) -> None:
    """One stream's events (from its start, or resumed): seq rises by one, one terminal event, last."""
    first = events[0]["seq"]
    assert [e["seq"] for e in events] == list(range(first, first + len(events)))
    assert [e["type"] in ("done", "error") for e in events].count(True) == 1 and events[-1]["type"] in ("done", "error")
    assert first > 0 or events[0]["type"] == "start"
    assert len({e["stream_id"] for e in events}) == 1


# -- the corpus of hostile bodies, each sent over SSE and over WS --------------------------

T = b"<T>"  # where a WS frame says "type": "chat"; nothing in an SSE body
Variant = bytes | dict | Callable[[], bytes | dict]


@dataclass(frozen=True)
class Case:
    name: str                     # the hostile input class
    variants: tuple[Variant, ...]  # JSON objects, raw bytes (T marks the WS type), or makers of either
    sse: str                      # what the relay did on POST /v1/chat/sse
    ws: str                       # what it did on a WS text frame
    exact: bool = False           # handled: the deltas are exactly the mock's answer to the prompt


def msgs(content: str, role: str = "user") -> list[dict]:
    return [{"role": role, "content": content}]


def handled(content: str) -> tuple[Callable[[], dict], ...]:
    """The same content sent to every upstream, each time with a fresh prompt tag."""
    return tuple((lambda up=up: {"messages": msgs(f"{content} {uuid.uuid4().hex[:8]}\n#mock tokens=3 interval_ms=0"),
                                 "upstream": up}) for up in UPSTREAMS)


def fresh_id(make: Callable[[str], str]) -> Callable[[], dict]:
    return lambda: {"messages": msgs("id\n#mock tokens=3 interval_ms=0"), "upstream": "openai",
                    "stream_id": make(uuid.uuid4().hex[:8])}


GOOD = msgs("hi")
DEEP = 10_000
CORPUS = [
    Case("invalid UTF-8 (bad bytes, overlong '/', a lone surrogate half)",
         (b'{<T>"messages":[{"role":"user","content":"\xff\xfe"}]}',
          b'{<T>"messages":[{"role":"user","content":"\xc0\xaf"}]}', b'{<T>"messages":"\xed\xa0\x80"}'),
         "400 invalid_json", "close 1007"),
    Case("a body of only NUL bytes", (b"\x00", b"\x00" * 4096), "400 invalid_json", "error invalid_json"),
    Case("a raw NUL inside a JSON string", (b'{<T>"messages":[{"role":"user","content":"a\x00b"}]}',),
         "400 invalid_json", "error invalid_json"),
    Case("an escaped NUL (\\u0000) in message content", handled("nul \x00 inside"), "200 done stop",
         "stream done stop", exact=True),
    Case("NUL in stream_id or role", ({"messages": GOOD, "stream_id": "a\x00b"}, {"messages": msgs("x", "user\x00")}),
         "422 invalid_request", "error invalid_request"),
    Case("NUL, CR/LF, quotes, a path in the upstream name",
         tuple({"messages": GOOD, "upstream": up} for up in ("open\x00ai", "x\r\nevent: done", '"; --', "../spark")),
         "404 unknown_upstream", "error unknown_upstream"),
    Case("numbers JSON cannot hold (1e400, -1e400)",
         (b'{<T>"messages":[{"role":"user","content":"x"}],"params":{"max_tokens":1e400}}',
          b'{<T>"messages":[{"role":"user","content":"x"}],"params":{"temperature":-1e400}}'),
         "400 invalid_json", "error invalid_json"),
    Case("huge, negative or zero numbers (10**100, 2**64, -1, 0, 1e308)",
         ({"messages": GOOD, "params": {"max_tokens": 10**100}}, {"messages": GOOD, "params": {"max_tokens": 2**64}},
          {"messages": GOOD, "params": {"max_tokens": -1}}, {"messages": GOOD, "params": {"max_tokens": 0}},
          {"messages": GOOD, "params": {"temperature": 1e308}}, {"messages": GOOD, "params": {"top_p": -1e308}}),
         "422 invalid_request", "error invalid_request"),
    Case("JSON nested 10,000 levels deep",
         (b"[" * DEEP + b"]" * DEEP, b'{<T>"messages":' + b"[" * DEEP + b"]" * DEEP + b"}",
          b'{<T>"messages":[],"x":' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}"),
         "400 invalid_json", "error invalid_json"),
    Case("a 1 MB string in a message (over max_body_bytes / max_ws_frame_bytes)",
         ({"messages": msgs("x" * 2**20)},), "413 payload_too_large", "close 1009"),
    Case("a 40,000-character message (over max_message_chars)", ({"messages": msgs("x" * 40_000)},),
         "413 message_too_long", "error message_too_long"),
    Case("10,000 messages (over max_body_bytes)", ({"messages": msgs("") * 10_000},),
         "413 payload_too_large", "close 1009"),
    Case("1,000 messages (over max_messages)", ({"messages": msgs("") * 1000},),
         "413 too_many_messages", "error too_many_messages"),
    Case("1,001 messages (over the model's 1,000)", ({"messages": msgs("") * 1001},),
         "422 invalid_request", "error invalid_request"),
    Case("unknown roles", tuple({"messages": msgs("x", role)} for role in ("robot", "tool", "", "USER", "user ")) +
         ({"messages": [{"role": None, "content": "x"}]},), "422 invalid_request", "error invalid_request"),
    Case("stream_id with CR/LF and SSE field injection",
         tuple({"messages": GOOD, "stream_id": sid} for sid in
               ("x\r\nevent: done\r\ndata: {}", "x\nid: 9", "x\r", "x\n", "\ndata: {}")),
         "422 invalid_request", "error invalid_request"),
    Case("stream_id with quotes, slashes, spaces, NUL, empty",
         tuple({"messages": GOOD, "stream_id": sid} for sid in
               ('a"b', "a'b", "a/b", "../../etc/passwd", "a\\b", "a b", "", "<script>")),
         "422 invalid_request", "error invalid_request"),
    Case("1,000-character and non-string stream_ids",
         ({"messages": GOOD, "stream_id": "a" * 1000}, {"messages": GOOD, "stream_id": 5},
          {"messages": GOOD, "stream_id": ["a"]}), "422 invalid_request", "error invalid_request"),
    Case("the longest and oddest valid stream_ids (128 chars, ':', '.', '-')",
         (fresh_id(lambda t: t + "x" * 120), fresh_id(lambda t: ":" + t), fresh_id(lambda t: "..." + t),
          fresh_id(lambda t: "-_.:" + t)), "200 done stop", "stream done stop", exact=True),
    Case("wrong JSON types",
         ({"messages": "hello"}, {"messages": None}, {"messages": {}}, {"messages": [{"role": "user", "content": 5}]},
          {"messages": [{"role": "user", "content": None}]}, {"messages": GOOD, "params": []},
          {"messages": GOOD, "trace": "maybe"}, {"messages": [["user", "x"]]}),
         "422 invalid_request", "error invalid_request"),
    Case("top-level JSON that is not an object", (b"[]", b'"x"', b"null", b"1", b"true"),
         "400 invalid_request", "error invalid_request"),
    Case("unknown and prototype-polluting fields",
         ({"messages": GOOD, "__proto__": {"admin": True}}, {"messages": GOOD, "constructor": {}},
          {"messages": GOOD, "Messages": GOOD}, {"messages": [{"role": "user", "content": "x", "name": "n"}]}),
         "422 invalid_request", "error invalid_request"),
    Case("a UTF-8 byte-order mark before the JSON", (b'\xef\xbb\xbf{<T>"messages":[{"role":"user","content":"x"}]}',),
         "400 invalid_json", "error invalid_json"),
    Case("an empty or blank body", (b"", b" \r\n\t "), "400 invalid_json", "error invalid_json"),
    Case("duplicate keys (the last one wins)",
         (lambda: b'{<T>"messages":[{"role":"robot","content":"x"}],"upstream":"openai","messages":'
                  + json.dumps(msgs(f"dup {uuid.uuid4().hex[:8]}\n#mock tokens=3 interval_ms=0")).encode() + b"}",),
         "200 done stop", "stream done stop", exact=True),
    Case("CR/LF, 'event:' and 'data:' lines in message content", handled("a\r\n\r\nevent: done\ndata: {}\n\nid: 9\r"),
         "200 done stop", "stream done stop", exact=True),
    Case("Unicode separators, RTL override, emoji in message content", handled("\u2028\u2029\x85\u202e🚀\ufeff"),
         "200 done stop", "stream done stop", exact=True),
]


def render(variant: Variant, transport: str) -> bytes | str | tuple[str, bytes]:
    """The SSE body or the WS frame of one variant."""
    value = variant() if callable(variant) else variant
    if isinstance(value, dict):
        value = b"{<T>" + json.dumps(value).encode()[1:]
    if transport == "sse":
        return value.replace(T, b"")
    raw = value.replace(T, b'"type":"chat",')
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return ("text", raw)  # invalid UTF-8 in a text frame: no library sends that


def last_user_prompt(body: bytes | str | tuple) -> str:
    raw = body if isinstance(body, (bytes, str)) else body[1]
    return [m for m in json.loads(raw)["messages"] if m["role"] == "user"][-1]["content"]


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
async def test_hostile_body_over_sse(front, case):
    """Each hostile body gets a clear 4xx {"error": {"code", "message"}} or a well-formed stream."""
    for variant in case.variants:
        body = render(variant, "sse")
        outcome, events = await sse_post(front, body)
        assert outcome == case.sse, (body[:120], outcome, events[-1:])
        if case.exact:
            assert text_of(events) == expected_text(last_user_prompt(body))


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
async def test_hostile_frame_over_ws(front, case):
    """Each hostile WS text frame gets a seq-less error event with a code, a stream, or a protocol close."""
    for variant in case.variants:
        frame = render(variant, "ws")
        outcome, events = await ws_send(front, frame)
        assert outcome == case.ws, (str(frame)[:120], outcome, events[-1:])
        if case.exact:
            assert text_of(events) == expected_text(last_user_prompt(frame))


# -- HTTP-level hostility: content types, chunking, trickles, broken framing --------------

CHAT = json.dumps(chat_body("plain\n#mock tokens=3 interval_ms=0", "openai")).encode()


async def _chunks(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield data[i:i + size]


HTTP_CORPUS: list[tuple[str, Callable, str]] = [
    ("Content-Type: text/plain (a CORS 'simple request'), no Origin",
     lambda f: sse_post(f, CHAT, {"Content-Type": "text/plain"}), "200 done stop"),
    ("Content-Type: text/plain from a foreign Origin (CSRF without preflight)",
     lambda f: sse_post(f, CHAT, {"Content-Type": "text/plain", "Origin": "https://evil.example"}),
     "403 origin_not_allowed"),
    ("a form-encoded body", lambda f: sse_post(f, b"messages=hi&upstream=openai",
                                               {"Content-Type": "application/x-www-form-urlencoded"}),
     "400 invalid_json"),
    ("a chunked body", lambda f: sse_post(f, b"", content=_chunks(CHAT, 7)), "200 done stop"),
    ("a chunked body over max_body_bytes", lambda f: sse_post(f, b"", content=_chunks(b"x" * 200_000, 1000)),
     "413 payload_too_large"),
    ("a body trickled one byte at a time (slowloris)",
     lambda f: raw_outcome(f, post("/v1/chat/sse", b"").replace(b"Content-Length: 0", b"Content-Length: 500"),
                           trickle=b"{" * 40, every=0.1), "408 request_timeout"),
    ("a negative Content-Length", lambda f: raw_outcome(f, post("/v1/chat/sse", CHAT).replace(
        b"Content-Length: %d" % len(CHAT), b"Content-Length: -1")), "400 non-JSON"),
    ("Content-Length and Transfer-Encoding: chunked (request smuggling)",
     lambda f: raw_outcome(f, post("/v1/chat/sse", b"0\r\n\r\n", "Transfer-Encoding: chunked")), "400 non-JSON"),
    ("a 100 KB header", lambda f: raw_outcome(f, post("/v1/chat/sse", CHAT, "X-Big: " + "a" * 100_000)),
     "400 non-JSON"),
    ("a header with a bare CR", lambda f: raw_outcome(f, post("/v1/chat/sse", CHAT, "X-Evil: a\rb")), "400 non-JSON"),
    ("GET on the POST endpoint", lambda f: raw_outcome(f, get("/v1/chat/sse")), "405 method_not_allowed"),
    ("an unknown path", lambda f: raw_outcome(f, get("/v1/../../etc/passwd")), "404 not_found"),
]


@pytest.mark.parametrize("name,send,expect", HTTP_CORPUS, ids=[c[0] for c in HTTP_CORPUS])
async def test_hostile_http(front, name, send, expect):
    """Hostile HTTP framing and content types get a 4xx (or, when harmless, a normal stream), never a 500."""
    outcome, events = await send(front)
    assert outcome == expect, (outcome, events[-1:])


@pytest.mark.parametrize("path", ["/static/../../pyproject.toml", "/static/%2e%2e/%2e%2e/pyproject.toml",
                                  "/static/..%2f..%2fpyproject.toml", "/static/%2e%2e%2f%2e%2e%2fmatrix%2fconfig.py",
                                  "/static/....//....//pyproject.toml", "/static/%252e%252e/pyproject.toml"])
async def test_static_files_do_not_escape_their_directory(front, path):
    """A path traversal under /static/ is refused and never serves a file outside the static directory."""
    status, _, body = await raw_http(front, get(path))
    assert status in (403, 404), status
    assert b"[project]" not in body and b"SecretStr" not in body


# -- resume and cancel with hostile ids and seqs ------------------------------------------

async def finished_stream(front: Front) -> tuple[str, list[dict]]:
    sid = "fin-" + uuid.uuid4().hex[:8]
    body = json.dumps({**chat_body(f"fin {sid}\n#mock tokens=8 interval_ms=5", "openai"), "stream_id": sid}).encode()
    outcome, events = await sse_post(front, body)
    assert outcome == "200 done stop" and len(events) >= 6  # seq 3 is a delta, with more after it
    return sid, events


def resumed(after: int) -> str:
    return f"200 resumed after {after}"


# Last-Event-ID as it reaches the relay (raw header bytes) -> what the relay did.
LAST_EVENT_IDS = [
    ("3\r\nX-Injected: y", resumed(3)),  # CRLF ends the header: two headers, the relay reads "3"
    ("3\rX-Injected: y", "400 non-JSON"),  # a bare CR: aiohttp's parser refuses the request
    ("abc", "400 invalid_request"), ("1.5", "400 invalid_request"), ("0x10", "400 invalid_request"),
    ("", "400 invalid_request"), ("9" * 5000, "400 invalid_request"), ("3; 4", "400 invalid_request"),
    (" 3", resumed(3)), ("+3", resumed(3)),  # Python's int() is lenient; harmless
    ("1_0", "400 invalid_seq"), (str(10**30), "400 invalid_seq"), (str(2**63), "400 invalid_seq"),
    ("-2", "400 invalid_seq"),
]


@pytest.mark.parametrize("header,expect", LAST_EVENT_IDS, ids=[repr(h[0][:20]) for h in LAST_EVENT_IDS])
async def test_hostile_last_event_id(front, header, expect):
    """A hostile Last-Event-ID resumes correctly or gets a clear 4xx; no header is ever reflected."""
    sid, events = await finished_stream(front)
    status, headers, body = await raw_http(front, get(f"/v1/streams/{sid}/events", f"Last-Event-ID: {header}"))
    outcome, got = http_outcome(status, headers.get("content-type", ""), body)
    if outcome == "200 done stop":
        outcome = resumed(got[0]["seq"] - 1)
        assert got == events[got[0]["seq"]:]
    assert outcome == expect
    assert "x-injected" not in headers


@pytest.mark.parametrize("query,expect", [
    ("3%0D%0AX-Injected:%20y", "400 invalid_request"), ("%00", "400 invalid_request"),
    ("%D9%A3", resumed(3)),  # ARABIC-INDIC DIGIT THREE: int() reads it as 3; harmless
])
async def test_hostile_last_event_id_query(front, query, expect):
    """?last_event_id= with CR/LF, NUL or non-ASCII digits resumes correctly or gets a clear 4xx."""
    sid, events = await finished_stream(front)
    status, headers, body = await raw_http(front, get(f"/v1/streams/{sid}/events?last_event_id={query}"))
    outcome, got = http_outcome(status, headers.get("content-type", ""), body)
    if outcome == "200 done stop":
        outcome = resumed(got[0]["seq"] - 1)
    assert outcome == expect


WS_RESUMES = [("3\r\nX: y", "error invalid_request"), (1.5, "error invalid_request"), (True, "error invalid_request"),
              (None, "error invalid_request"), ([3], "error invalid_request"), ("3", "error invalid_request"),
              (10**30, "error invalid_request"), (2**63 - 1, "error invalid_seq"), (-2, "error invalid_seq"),
              (3, "stream done stop")]


@pytest.mark.parametrize("after,expect", WS_RESUMES, ids=[repr(a) for a, _ in WS_RESUMES])
async def test_hostile_ws_resume(front, after, expect):
    """A WS resume with a hostile `after` gets an error event with a code, or resumes correctly."""
    sid, events = await finished_stream(front)
    outcome, got = await ws_send(front, json.dumps({"type": "resume", "stream_id": sid, "after": after}))
    assert outcome == expect
    if got and "seq" in got[0]:
        assert got == events[after + 1:]


HOSTILE_IDS = ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "a\r\nX-Injected: y", "a%0D%0AX-Injected:%20y",
               "%00", "x" * 1000, "<script>alert(1)</script>"]


@pytest.mark.parametrize("sid", HOSTILE_IDS)
async def test_hostile_cancel_and_resume_paths(front, sid):
    """Cancel and resume of hostile ids over HTTP and WS get a 4xx or an error event; no header is reflected."""
    for request in (post(f"/v1/streams/{sid}/cancel", b""), get(f"/v1/streams/{sid}/events", "Last-Event-ID: 1")):
        status, headers, body = await raw_http(front, request)
        assert 400 <= status < 500 and "x-injected" not in headers, (status, body[:200])
        if headers.get("content-type", "").startswith("application/json"):
            # The router's 404 for bad paths; 405 where a CR cuts the path to /v1/streams/ID (GET only).
            assert refusal(body)["code"] in ("stream_not_found", "not_found", "method_not_allowed")
    for kind in ("cancel", "resume"):
        outcome, _ = await ws_send(front, json.dumps({"type": kind, "stream_id": sid, "after": 1}))
        assert outcome == "error stream_not_found"


async def test_hostile_cancel_messages_over_ws(front):
    """WS cancels without a usable stream_id are refused with an error event, and the socket serves on."""
    for message in ({"type": "cancel"}, {"type": "cancel", "stream_id": 5}, {"type": "cancel", "stream_id": ""},
                    {"type": "cancel", "stream_id": None}, {"type": "cancel", "stream_id": ["a"]}):
        assert (await ws_send(front, json.dumps(message)))[0] == "error invalid_request"


# -- WS frames ------------------------------------------------------------------------------

async def test_binary_frame_is_refused_and_the_socket_serves_on(front):
    """A binary WS frame gets an unsupported_frame error event; a chat on the same socket then completes."""
    assert (await ws_send(front, b"\x00\x01binary", b'{"type":"chat"}'))[0] == "error unsupported_frame"


async def test_ws_frame_over_the_limit_closes_with_1009(front):
    """A WS text frame over max_ws_frame_bytes closes that socket with 1009 (message too big)."""
    assert (await ws_send(front, "x" * 100_000))[0] == "close 1009"


async def test_ws_flood_of_bad_frames_gets_one_error_each(front):
    """1,000 bad frames in a row get 1,000 error events and the socket still serves a chat."""
    async with asyncio.timeout(TIMEOUT):
        async with websockets.connect(front.ws) as ws:
            other, _ = await answer_to(ws, *(["{nope"] * 1000))
    assert [e["code"] for e in other] == ["invalid_json"] * 1000


async def test_fragmented_ws_message_is_reassembled(front):
    """A chat sent as a fragmented WS message (continuation frames) streams like any other."""
    prompt = f"frag {uuid.uuid4().hex[:8]}\n#mock tokens=3 interval_ms=0"
    frame = json.dumps({"type": "chat", **chat_body(prompt, "spark")})
    async with asyncio.timeout(TIMEOUT):
        async with websockets.connect(front.ws) as ws:
            await ws.send([frame[:5], frame[5:20], frame[20:]])
            other, _ = await answer_to(ws)
    assert other[-1]["type"] == "done" and text_of(other) == expected_text(prompt)


# -- a hostile provider: CR/LF and forged frames in its errors and text ---------------------

PROVIDER_CASES = [  # upstream, terminal, reason or code, message, upstream_code, text
    ("evil-stream-error", "error", "upstream_rejected", EVIL, EVIL_CODE, "ok "),
    ("evil-http-error", "error", "upstream_rejected", f"HTTP 400: {EVIL}", EVIL_CODE, ""),
    ("evil-baidu", "error", "upstream_rejected", EVIL, "5", ""),
    ("evil-spark", "error", "upstream_rejected", EVIL, "10013", ""),
    ("evil-spark-401", "error", "upstream_rejected", f"HTTP 401: {EVIL}", "401", ""),  # refused before any frame
    ("evil-text", "done", "stop", None, None, "".join(EVIL_TEXT)),
    ("evil-utf8", "done", "stop", None, None, "a\ufffd\ufffdb"),
]


@pytest.mark.parametrize("down", ["sse", "ws"])
@pytest.mark.parametrize("upstream,end,why,message,upstream_code,text", PROVIDER_CASES,
                         ids=[c[0] for c in PROVIDER_CASES])
async def test_hostile_provider_cannot_forge_frames(front, down, upstream, end, why, message, upstream_code, text):
    """CR/LF, forged `event:` lines and NUL in a provider's errors and text reach the client intact, inside one
    well-formed event each: the stream still ends with exactly one terminal event."""
    body = {**chat_body("anything", upstream), "trace": True}
    if down == "sse":
        outcome, events = await sse_post(front, json.dumps(body).encode())
        assert outcome == f"200 {end} {why}"
    else:
        outcome, events = await ws_send(front, json.dumps({"type": "chat", **body}))
        assert outcome == f"stream {end} {why}"
    assert_well_formed(events)
    assert text_of(events) == text
    assert any(e["type"] == "trace" for e in events) == (upstream != "evil-spark-401")  # raw frames, escaped too
    if end == "error":
        assert events[-1]["message"] == message and events[-1]["upstream_code"] == upstream_code


# -- after all of it ------------------------------------------------------------------------

@pytest.mark.parametrize("down", ["sse", "ws"])
@pytest.mark.parametrize("upstream", UPSTREAMS)
async def test_after_the_corpus_every_combination_still_streams(front, down, upstream):
    """After the whole corpus, a normal stream on every combination and upstream completes exactly."""
    prompt = f"still here {uuid.uuid4().hex[:8]}\n#mock tokens=6 interval_ms=1"
    if down == "sse":
        outcome, events = await sse_post(front, json.dumps(chat_body(prompt, upstream)).encode())
    else:
        outcome, events = await ws_send(front, json.dumps({"type": "chat", **chat_body(prompt, upstream)}))
    assert outcome.endswith("done stop") and text_of(events) == expected_text(prompt)
    assert events[0]["combo"] == f"{down}-{TRANSPORTS[upstream]}"


def _client_garbage(record: logging.LogRecord) -> bool:
    """aiohttp's own record of a malformed request it answered with 400 (not a relay failure)."""
    return record.exc_info is not None and isinstance(record.exc_info[1], BadHttpMessage)


async def test_the_relay_logged_no_error_through_the_corpus(front):
    """No request in the module made the relay fail: no 500, no unhandled exception, no internal error."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        assert (await client.get(f"{front.base}/healthz")).status_code == 200
        metrics = (await client.get(f"{front.base}/metrics")).text
    assert "matrix_streams_ended_total{" in metrics and 'reason="internal"' not in metrics
    failures = [r for r in front.errors.records if not _client_garbage(r)]
    assert [f"{r.name}: {r.getMessage()} {r.exc_info and r.exc_info[1]!r}" for r in failures] == []


async def test_malformed_http_is_refused_without_an_error_log(front):
    """A client's malformed HTTP request is refused with 400 and does not log an ERROR with a traceback."""
    # aiohttp logs every malformed request at ERROR with a traceback (`aiohttp.server`): left
    # alone, any client could flood the relay's error log and page an operator.
    before = len(front.errors.records)
    outcome, _ = await raw_outcome(front, post("/v1/chat/sse", CHAT).replace(
        b"Content-Length: %d" % len(CHAT), b"Content-Length: -1"))
    assert outcome == "400 non-JSON"
    assert [r.getMessage() for r in front.errors.records[before:] if _client_garbage(r)] == []
