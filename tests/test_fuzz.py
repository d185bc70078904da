"""The fuzzed front door: request models, SSE decoding and framing, and the WS message parser, by property."""

import asyncio
import json
import uuid

import httpx_sse._decoders as httpx_sse_decoders
import pytest
import websockets
from hypothesis import HealthCheck, event, example, given, settings, strategies as st

from clients import TIMEOUT, assert_well_formed, chat_body, expected_text, text_of
from downstreams.openai_format import completion_request
from matrix.errors import RequestError
from matrix.events import Delta, Done, Error, Start, Trace, decode
from matrix.appkeys import RELAY
from matrix.request import ChatRequest, chat_request, parse_json
from matrix.sse import PING, Decoder, frame

# Characters that break naive framing, logging or JSON: line ends of every kind, NUL,
# quotes and escapes, a BOM, and text outside the BMP. No lone surrogates: no relay path
# can produce one (orjson refuses them, WS text frames and provider bytes are UTF-8).
NASTY = ["\r", "\n", "\r\n", "\x00", "\u2028", "\u2029", "\x85", "\ufeff", '"', "\\", "event: done", "data: {}",
         "🚀", "你好", "é"]
TEXT = st.lists(st.one_of(st.characters(codec="utf-8"), st.sampled_from(NASTY)), max_size=20).map("".join)
NUMBERS = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                    st.sampled_from([0, -1, 10**100, 2**63, 2**64, 1e308, 0.5]))
JSON = st.recursive(st.none() | st.booleans() | NUMBERS | TEXT,
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXT, kids, max_size=4),
                    max_leaves=12)
STREAM_IDS = st.from_regex(r"[A-Za-z0-9_.:-]{1,128}", fullmatch=True)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "", "USER"]) | JSON, "content": TEXT | JSON},
    optional={"name": TEXT})
PARAMS = st.fixed_dictionaries({}, optional={"temperature": NUMBERS, "top_p": NUMBERS, "max_tokens": NUMBERS,
                                             "user": TEXT | JSON, "stop": JSON})
CHAT_LIKE = st.fixed_dictionaries(
    {"messages": st.lists(MESSAGE | JSON, max_size=3)},
    optional={"upstream": st.sampled_from(["openai", "baidu", "spark"]) | TEXT | JSON,
              "stream_id": STREAM_IDS | TEXT | JSON, "params": PARAMS | JSON, "trace": st.booleans() | JSON})
ID_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")


def parse_or_refuse(raw: bytes | str) -> ChatRequest | RequestError:
    """What the front door does with one body: a ChatRequest or a RequestError; anything else propagates."""
    try:
        chat = chat_request(parse_json(raw))
    except RequestError as exc:
        assert exc.code in ("invalid_json", "invalid_request"), exc.code
        assert isinstance(exc.message, str) and exc.message
        assert 400 <= exc.status < 500
        assert exc.body()["error"] == {"code": exc.code, "message": exc.message, "type": "invalid_request_error",
                                       "param": exc.param}
        assert exc.param is None or exc.message.startswith(exc.param)
        return exc
    assert isinstance(chat, ChatRequest) and 1 <= len(chat.messages) <= 1000
    assert chat.stream_id is None or (1 <= len(chat.stream_id) <= 128 and set(chat.stream_id) <= ID_CHARS)
    return chat


def dumps(value, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode()


# -- (a) the request model --------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
@example(b"\xff\xfe\x00garbage")
@example(b"\x00" * 64)
@example(b"[" * 10_000 + b"]" * 10_000)
@example(b'{"messages":[{"role":"user","content":"a"}],"params":{"max_tokens":1e400}}')
def test_any_bytes_parse_to_a_request_or_a_request_error(raw):
    """Arbitrary bytes become a ChatRequest or a RequestError with a code and a message, nothing else."""
    parse_or_refuse(raw)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_parses_to_a_request_or_a_request_error(raw):
    """Arbitrary text (how a WS frame arrives) becomes a ChatRequest or a RequestError, nothing else."""
    parse_or_refuse(raw)


@settings(max_examples=300, deadline=None)
@given(value=JSON | CHAT_LIKE, ascii_only=st.booleans())
@example(value={"messages": [{"role": "user", "content": "x"}], "stream_id": "a\nb"}, ascii_only=True)
@example(value={"messages": [{"role": "user", "content": "x"}], "params": {"max_tokens": 10**100}}, ascii_only=True)
def test_any_json_value_parses_to_a_request_or_a_request_error(value, ascii_only):
    """Arbitrary JSON values and near-miss chat objects become a ChatRequest or a RequestError, nothing else."""
    parse_or_refuse(dumps(value, ascii_only))


def test_the_near_miss_strategy_reaches_both_outcomes():
    """The request strategy produces valid requests as well as refusals, so the property tests both sides."""
    outcomes = set()

    @settings(max_examples=300, deadline=None, database=None)
    @given(CHAT_LIKE)
    def collect(value):
        outcomes.add(type(parse_or_refuse(dumps(value, True))).__name__)
    collect()
    assert outcomes == {"ChatRequest", "RequestError"}


OPENAI_LIKE = st.builds(lambda extra, request: {**extra, **request}, st.dictionaries(TEXT, JSON, max_size=2),
                        st.fixed_dictionaries(
    {"model": st.sampled_from(["openai", "spark"]) | TEXT | JSON,
     "messages": st.lists(MESSAGE | st.fixed_dictionaries({"role": st.just("user"), "content": st.lists(
         st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]) | JSON, "text": TEXT | JSON}),
         max_size=2)}) | JSON, max_size=3)},
    optional={"stream": st.booleans() | JSON, "stream_options": JSON, "temperature": NUMBERS | JSON,
              "max_tokens": NUMBERS, "max_completion_tokens": NUMBERS, "n": NUMBERS, "seed": JSON, "tools": JSON,
              "user": TEXT | JSON}))


@settings(max_examples=300, deadline=None)
@given(value=JSON | OPENAI_LIKE)
def test_any_json_is_an_openai_request_or_a_clear_refusal(value):
    """Arbitrary JSON and near-miss OpenAI requests become a ChatRequest or a 4xx RequestError with a code."""
    try:
        chat, options = completion_request(parse_json(dumps(value, True)))
    except RequestError as exc:
        assert exc.code and exc.message and 400 <= exc.status < 500
        assert exc.param is None or isinstance(exc.param, str)
        return
    assert isinstance(chat, ChatRequest) and chat.upstream == options.model and isinstance(options.stream, bool)


# -- (b) the SSE decoder of provider streams -----------------------------------------------

SSE_PIECES = st.sampled_from([b"data:", b"data: ", b"event: ", b"event:ping", b"id: ", b"id:\x00", b":", b": ping",
                              b"retry: 10", b"\r", b"\n", b"\r\n", b"\n\n", b"\r\r", b"\xe4\xbd\xa0", b"\xe4\xbd",
                              b"\xa0", b"\xf0\x9f\x9a\x80", b"\xff", b"\x00", b" ", b"x", b"[DONE]", b'{"a":"\\n"}'])
SSE_BYTES = st.one_of(st.binary(max_size=300), st.lists(SSE_PIECES | st.binary(max_size=6), max_size=60).map(b"".join))


def decode_all(chunks: list[bytes]) -> list:
    decoder = Decoder()
    events = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events


@settings(max_examples=300, deadline=None)
@given(SSE_BYTES)
def test_decoder_never_raises_and_returns_text(raw):
    """The SSE decoder takes any bytes without raising; every field it returns is a str."""
    decoder = Decoder()
    for event in decoder.feed(raw):
        assert isinstance(event.event, str) and event.event
        assert isinstance(event.data, str)
        assert event.id is None or (isinstance(event.id, str) and "\x00" not in event.id)
    assert isinstance(decoder.pending, bool)


@settings(max_examples=300, deadline=None)
@given(raw=SSE_BYTES, data=st.data())
@example(raw=b"data: a\r\ndata: b\n\n", data=None)
def test_decoder_gives_the_same_events_however_the_bytes_are_split(raw, data):
    """Feeding a byte stream in any non-empty pieces yields exactly the events of feeding it whole."""
    if data is None:
        cuts = [len(b"data: a\r")]
    else:
        cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=12))))
    pieces = [raw[i:j] for i, j in zip([0, *cuts], [*cuts, len(raw)]) if raw[i:j]]
    assert decode_all(pieces) == decode_all([raw])


def test_decoder_empty_read_between_cr_and_lf_changes_nothing():
    """An empty read between the CR and LF of one CRLF does not end the event early."""
    assert decode_all([b"data: a\r", b"", b"\ndata: b\n\n"]) == decode_all([b"data: a\r\ndata: b\n\n"])


# -- (c) framing events for clients -------------------------------------------------------

SEQS = st.integers(0, 2**53)
EVENTS = st.one_of(
    st.builds(Start, stream_id=TEXT, seq=SEQS, upstream=TEXT, combo=TEXT),
    st.builds(Delta, stream_id=TEXT, seq=SEQS, text=TEXT),
    st.builds(Done, stream_id=TEXT, seq=SEQS,
              reason=st.sampled_from(["stop", "length", "content_filter", "tool_calls", "cancelled"]),
              usage=st.none() | st.dictionaries(st.sampled_from(["prompt_tokens", "completion_tokens",
                                                                 "total_tokens"]), st.integers(0, 2**53))),
    st.builds(Error, stream_id=TEXT, seq=SEQS, code=TEXT, message=TEXT, retryable=st.booleans(),
              upstream_code=st.none() | TEXT),
    st.builds(Trace, stream_id=TEXT, seq=SEQS, dir=st.sampled_from(["in", "out"]), data=TEXT),
)


def independent_sse_events(raw: bytes) -> list:
    """httpx-sse's line splitter and decoder: an SSE parser written by somebody else."""
    decoder = httpx_sse_decoders.SSEDecoder()
    events = []
    for line in httpx_sse_decoders._splitlines_sse(raw.decode("utf-8")):
        if (sse := decoder.decode(line)) is not None:
            events.append(sse)
    return events


@settings(max_examples=400, deadline=None)
@given(EVENTS)
@example(Error("s", 7, "upstream_rejected", "boom\r\n\r\nevent: done\ndata: {}", False, "x\r\ny\x00"))
@example(Delta("s\nevent: done", 1, "\u2028\u2029\x85\x00\r"))
def test_frame_is_one_well_formed_sse_event_that_parses_back(event):
    """frame() is one `id:`, one `event:`, one `data:` line and a blank line; data parses back to the event."""
    raw = frame(event)
    assert raw.endswith(b"\n\n") and raw.count(b"\n\n") == 1
    assert b"\r" not in raw and b"\x00" not in raw
    lines = raw[:-2].split(b"\n")
    assert len(lines) == 3
    assert lines[0] == b"id: %d" % event.seq
    assert lines[1] == b"event: " + event.type.encode()
    assert lines[2].startswith(b"data: ")
    assert decode(lines[2][len(b"data: "):]) == event
    ours = decode_all([raw])
    theirs = independent_sse_events(raw)
    assert [(e.event, e.data, e.id) for e in ours] == [(event.type, lines[2][6:].decode(), str(event.seq))]
    assert [(e.event, e.data, e.id) for e in theirs] == [(event.type, lines[2][6:].decode(), str(event.seq))]


def test_ping_is_a_comment_that_dispatches_nothing():
    """The keep-alive is one SSE comment line and a blank line: no event for any parser."""
    assert PING == b": ping\n\n"
    assert decode_all([PING]) == [] and independent_sse_events(PING) == []


# -- (d) the WS message parser, end to end ---------------------------------------------------

WS_TYPES = st.sampled_from(["chat", "cancel", "resume", "other", "", "CHAT"]) | JSON
# Chats that pass validation, so the fuzzer also starts real streams (kept short by a #mock line).
VALID_CHAT = st.fixed_dictionaries(
    {"type": st.just("chat"),
     "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                                 "content": TEXT.map(lambda t: t + "\n#mock tokens=2 interval_ms=1")}),
                          min_size=1, max_size=3)},
    optional={"upstream": st.sampled_from(["openai", "baidu", "spark", "nope"]), "stream_id": STREAM_IDS,
              "params": PARAMS, "trace": st.booleans()})
WS_OBJECTS = st.one_of(
    st.dictionaries(TEXT, JSON, max_size=4).flatmap(lambda d: WS_TYPES.map(lambda kind: {"type": kind, **d})),
    CHAT_LIKE.flatmap(lambda d: WS_TYPES.map(lambda kind: {"type": kind, **d})),
    VALID_CHAT,
    st.fixed_dictionaries({"type": st.just("cancel")}, optional={"stream_id": STREAM_IDS | TEXT | JSON}),
    st.fixed_dictionaries({"type": st.just("resume")},
                          optional={"stream_id": STREAM_IDS | TEXT | JSON, "after": NUMBERS | JSON}),
)
WS_JSON_FRAMES = st.builds(lambda v, a: dumps(v, a).decode(), WS_OBJECTS, st.booleans())
WS_FRAMES = st.integers(0, 4).flatmap(lambda i: TEXT if i == 0 else WS_JSON_FRAMES)  # mostly JSON


@pytest.fixture
async def open_relay(relay):
    """The relay with per-client rate limits lifted: the fuzzer starts many streams from one address."""
    limits = relay.app[RELAY].settings.limits
    limits.starts_per_minute, limits.burst, limits.max_streams_per_client = 1e9, 10**9, 10**6
    return f"ws://127.0.0.1:{relay.port}/v1/chat/ws"


async def answer_to(ws, *frames: str | bytes) -> tuple[list[dict], list[dict]]:
    """Send `frames` (bytes as binary frames), then a normal chat on the same socket; return (every
    event that is not the chat's, the chat's events) once the chat and any stream the frames started end."""
    good_id = "good-" + uuid.uuid4().hex
    prompt = f"after {good_id}\n#mock tokens=3 interval_ms=0"
    for hostile in frames:
        await ws.send(hostile)
    await ws.send(json.dumps({"type": "chat", "stream_id": good_id, **chat_body(prompt, "openai")}))
    other: list[dict] = []
    good: list[dict] = []
    while not good or good[-1]["type"] not in ("done", "error") or _unfinished(other):
        event = json.loads(await ws.recv())
        (good if event.get("stream_id") == good_id and "seq" in event else other).append(event)
    assert_well_formed(good)
    assert good[-1]["type"] == "done" and text_of(good) == expected_text(prompt)
    return other, good


def _cancels_something(frame: str) -> bool:
    try:
        body = json.loads(frame)
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("type") == "cancel" and isinstance(body.get("stream_id"), str)


def _unfinished(events: list[dict]) -> bool:
    """Some stream among `events` has started and not yet ended."""
    live: set[str] = set()
    for e in events:
        if "seq" in e:
            (live.discard if e["type"] in ("done", "error") else live.add)(e["stream_id"])
    return bool(live)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(WS_FRAMES)
@example("{nope")
@example('{"type":"chat","messages":[{"role":"user","content":"x"}],"stream_id":"a\\r\\nevent: done"}')
@example('{"type":"resume","stream_id":"x","after":1e400}')
@example('{"type":["chat"]}')
async def test_any_ws_text_frame_gets_an_error_or_a_stream_and_the_socket_keeps_serving(open_relay, hostile):
    """Any text frame gets one seq-less `error` with a code or a well-formed stream; the socket serves on."""
    async with asyncio.timeout(TIMEOUT):
        async with websockets.connect(open_relay, max_size=2**22) as ws:
            other, _ = await answer_to(ws, hostile)
    refusals = [e for e in other if "seq" not in e]
    streamed = [e for e in other if "seq" in e]
    # A cancel that stops a stream started by an earlier example (hypothesis reuses ids like
    # "0") is answered on that stream's sockets, not on the canceller's: silence is right.
    answers = {1} if not _cancels_something(hostile) else {0, 1}
    assert len(refusals) + bool(streamed) in answers, other
    event("stream" if streamed else f"error {refusals[0].get('code')}" if refusals else "silent cancel")
    for error in refusals:
        assert error["type"] == "error" and isinstance(error["code"], str) and error["code"]
        assert isinstance(error["message"], str) and error["message"]
    if streamed:
        assert_well_formed(streamed)
