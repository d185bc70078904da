"""Vendor dialects against example frames from the vendors' documentation (docs/protocols.md), no sockets."""

import orjson
import pytest

from matrix.errors import UpstreamProtocolError, UpstreamRejected, UpstreamUnavailable
from matrix.request import chat_request
from matrix.provider import Finish
from mock_ai import relay_upstreams
from upstreams import DIALECTS
from upstreams.anthropic import AnthropicDialect
from upstreams.baidu_agent import BaiduAgentDialect
from upstreams.openai import OpenAIDialect
from upstreams.openai_realtime import RealtimeDialect
from upstreams.spark import SparkDialect

CONFIGS = {c["kind"]: DIALECTS[c["kind"]].Config(**c) for c in relay_upstreams().values()}
CHAT = chat_request({"messages": [{"role": "system", "content": "be brief"},
                                  {"role": "user", "content": "你好"}],
                     "params": {"temperature": 0.5, "max_tokens": 64}})

SPARK_FRAMES = [
    '{"header":{"code":0,"message":"Success","sid":"cht000b1a2c@dx18c0ffee","status":0},'
    '"payload":{"choices":{"status":0,"seq":0,"text":[{"content":"Hello","role":"assistant","index":0}]}}}',
    '{"header":{"code":0,"message":"Success","sid":"cht000b1a2c@dx18c0ffee","status":1},'
    '"payload":{"choices":{"status":1,"seq":1,"text":[{"content":"! I can answer","role":"assistant","index":0}]}}}',
    '{"header":{"code":0,"message":"Success","sid":"cht000b1a2c@dx18c0ffee","status":1},'
    '"payload":{"choices":{"status":1,"seq":2,"text":[{"content":" questions,","role":"assistant","index":0}]}}}',
    '{"header":{"code":0,"message":"Success","sid":"cht000b1a2c@dx18c0ffee","status":2},'
    '"payload":{"choices":{"status":2,"seq":3,"text":[{"content":" write and translate.","role":"assistant","index":0}]},'
    '"usage":{"text":{"question_tokens":4,"prompt_tokens":12,"completion_tokens":14,"total_tokens":26}}}}',
]

OPENAI_DATA = [
    '{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}',
    '{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}],"usage":null}',
    '{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":" there!"},"finish_reason":null}],"usage":null}',
    '{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}',
    '{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}',
    '[DONE]',
]

BAIDU_EVENTS = [
    ("message", '{"status":0,"message":"succ","logid":"3307064958","data":{"message":{"content":[{"dataType":"markdown","isFinished":false,"data":{"text":"你好","type":"txt","showType":"append"}}],"endTurn":false,"msgId":"86fb227e","threadId":"th-1"}}}'),
    ("ping", ""),
    ("message", '{"status":0,"message":"succ","logid":"3307064958","data":{"message":{"content":[{"dataType":"markdown","isFinished":false,"data":{"text":"，我是","type":"txt","showType":"append"}}],"endTurn":false,"msgId":"86fb227e","threadId":"th-1"}}}'),
    ("message", '{"status":0,"message":"succ","logid":"3307064958","data":{"message":{"content":[{"dataType":"markdown","isFinished":true,"data":{"text":"你的助手。","type":"txt","showType":"append"}}],"endTurn":false,"msgId":"86fb227e","threadId":"th-1"}}}'),
    ("message", '{"status":0,"message":"succ","logid":"3307064958","data":{"message":{"content":[{"isFinished":false,"feedback":{}}],"endTurn":true,"msgId":"86fb227e","threadId":"th-1"}}}'),
]


def run(parse, frames):
    items = []
    for frame in frames:
        items.extend(parse(*frame) if isinstance(frame, tuple) else parse(frame))
    return items


def test_spark_frames_become_text_then_finish_with_usage():
    """Spark's incremental frames yield their text in order and a Finish carrying the last frame's usage."""
    items = run(SparkDialect(CONFIGS["spark"]).parse, SPARK_FRAMES)
    assert "".join(i for i in items if isinstance(i, str)) == "Hello! I can answer questions, write and translate."
    assert items[-1] == Finish("stop", {"prompt_tokens": 12, "completion_tokens": 14, "total_tokens": 26})


def test_spark_error_frame_is_an_error_with_vendor_code():
    """A Spark frame with header.code != 0 raises the vendor's message and code, even without payload."""
    frame = '{"header":{"code":10013,"message":"input audit failed","sid":"cht0","status":2}}'
    with pytest.raises(UpstreamRejected) as info:
        SparkDialect(CONFIGS["spark"]).parse(frame)
    assert info.value.upstream_code == "10013" and "input audit failed" in info.value.message


def test_spark_busy_code_is_retryable():
    """Spark's capacity and rate codes (10008, 11202) are retryable; audit codes are not."""
    frame = '{"header":{"code":11202,"message":"QpsOverFlow","sid":"x","status":2}}'
    with pytest.raises(UpstreamUnavailable) as info:
        SparkDialect(CONFIGS["spark"]).parse(frame)
    assert info.value.retryable


def test_spark_request_frame_carries_app_domain_history_and_params():
    """The Spark request frame holds app_id, the configured domain, the whole history and the params."""
    frame = orjson.loads(SparkDialect(CONFIGS["spark"]).ws_requests(CHAT)[0])
    assert frame["header"]["app_id"] == "mock-app"
    assert frame["parameter"]["chat"] == {"domain": "generalv3.5", "temperature": 0.5, "max_tokens": 64}
    assert frame["payload"]["message"]["text"] == [{"role": "system", "content": "be brief"},
                                                   {"role": "user", "content": "你好"}]


def test_spark_handshake_401_keeps_vendor_message():
    """A refused Spark handshake becomes a non-retryable error carrying the vendor's JSON message."""
    exc = SparkDialect(CONFIGS["spark"]).handshake_error(
        401, b'{"message":"HMAC signature cannot be verified: fail to retrieve credential"}')
    assert isinstance(exc, UpstreamRejected) and "fail to retrieve credential" in exc.message
    assert exc.upstream_code == "401"


def test_spark_close_before_last_frame_is_an_error():
    """Spark closing before status 2 is a protocol error, never a silent end."""
    with pytest.raises(UpstreamProtocolError):
        SparkDialect(CONFIGS["spark"]).eof()


def test_openai_chunks_usage_chunk_and_done():
    """OpenAI chunks yield their text; the empty-choices usage chunk and [DONE] give Finish with usage."""
    dialect = OpenAIDialect(CONFIGS["openai"])
    items = run(lambda d: dialect.parse("message", d), OPENAI_DATA)
    assert items == ["Hello", " there!", Finish("stop", {"prompt_tokens": 9, "completion_tokens": 3,
                                                         "total_tokens": 12})]


def test_openai_midstream_error_carries_code():
    """A mid-stream `data: {"error": ...}` raises with the vendor's code; server errors are retryable."""
    dialect = OpenAIDialect(CONFIGS["openai"])
    with pytest.raises(UpstreamUnavailable) as info:
        dialect.parse("message", '{"error":{"message":"The server had an error","type":"server_error",'
                                 '"param":null,"code":null}}')
    assert info.value.upstream_code == "server_error"


def test_openai_http_error_body():
    """An HTTP 401 with an OpenAI error body becomes a rejection with the vendor's code and message."""
    exc = OpenAIDialect(CONFIGS["openai"]).http_error(
        401, b'{"error":{"message":"Incorrect API key","type":"invalid_request_error","param":null,'
             b'"code":"invalid_api_key"}}')
    assert isinstance(exc, UpstreamRejected) and exc.upstream_code == "invalid_api_key"
    assert "Incorrect API key" in exc.message
    assert isinstance(OpenAIDialect(CONFIGS["openai"]).http_error(429, b"{}"), UpstreamUnavailable)


def test_openai_length_finish_reason():
    """finish_reason length is reported as done reason length."""
    dialect = OpenAIDialect(CONFIGS["openai"])
    dialect.parse("message", '{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}')
    assert dialect.parse("message", "[DONE]") == (Finish("length", None),)


def test_openai_request_asks_for_usage_and_bearer_auth():
    """The OpenAI request streams, asks for include_usage, and authenticates with a Bearer key."""
    url, headers, body = OpenAIDialect(CONFIGS["openai"]).http_request(CHAT)
    body = orjson.loads(body)
    assert headers["Authorization"] == "Bearer mock-key"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 64 and body["model"] == "qwen-plus"


def test_openai_malformed_chunk_is_protocol_error():
    """A non-JSON data line is a protocol error, not a crash."""
    with pytest.raises(UpstreamProtocolError):
        OpenAIDialect(CONFIGS["openai"]).parse("message", "{not json")


def test_baidu_frames_pings_and_end_turn():
    """Baidu agent frames yield text, pings yield nothing, endTurn gives Finish."""
    items = run(BaiduAgentDialect(CONFIGS["baidu-agent"]).parse, BAIDU_EVENTS)
    assert items == ["你好", "，我是", "你的助手。", Finish("stop")]


def test_baidu_nonzero_status_is_error_with_code():
    """A Baidu frame with status != 0 raises with the status as vendor code; 18 (rate) is retryable."""
    dialect = BaiduAgentDialect(CONFIGS["baidu-agent"])
    with pytest.raises(UpstreamRejected) as info:
        dialect.parse("message", '{"status":13,"message":"secretKey invalid","logid":"1"}')
    assert info.value.upstream_code == "13"
    with pytest.raises(UpstreamUnavailable):
        dialect.parse("message", '{"status":18,"message":"rate limited"}')


def test_baidu_request_sends_last_user_text_with_query_auth():
    """The Baidu request authenticates in the query and sends only the last user text."""
    url, headers, body = BaiduAgentDialect(CONFIGS["baidu-agent"]).http_request(CHAT)
    assert "appId=mock-agent" in url and "secretKey=mock-secret" in url
    assert orjson.loads(body)["message"]["content"]["value"]["showText"] == "你好"


# Anthropic's documented stream (docs.anthropic.com, "Streaming Messages"): named events,
# a non-text block in between (tool input), a ping, cumulative usage in message_delta.
ANTHROPIC_EVENTS = [
    ("message_start", '{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
                      '"content":[],"model":"claude-sonnet-4-5","stop_reason":null,"stop_sequence":null,'
                      '"usage":{"input_tokens":25,"output_tokens":1}}}'),
    ("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}'),
    ("ping", '{"type": "ping"}'),
    ("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}'),
    ("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"!"}}'),
    ("content_block_stop", '{"type":"content_block_stop","index":0}'),
    ("content_block_delta", '{"type":"content_block_delta","index":1,'
                            '"delta":{"type":"input_json_delta","partial_json":"{\\"a\\":"}}'),
    ("message_delta", '{"type":"message_delta","delta":{"stop_reason":"max_tokens","stop_sequence":null},'
                      '"usage":{"output_tokens":15}}'),
    ("message_stop", '{"type":"message_stop"}'),
]

# OpenAI Realtime, GA names (openai SDK types/realtime), with the beta text event mixed in.
REALTIME_EVENTS = [
    '{"type":"session.created","event_id":"e1","session":{"type":"realtime","model":"gpt-realtime"}}',
    '{"type":"response.created","event_id":"e2","response":{"id":"resp_1","status":"in_progress"}}',
    '{"type":"response.output_text.delta","event_id":"e3","response_id":"resp_1","item_id":"i1",'
    '"output_index":0,"content_index":0,"delta":"Hel"}',
    '{"type":"response.text.delta","event_id":"e4","response_id":"resp_1","item_id":"i1",'
    '"output_index":0,"content_index":0,"delta":"lo"}',
    '{"type":"response.output_text.done","event_id":"e5","response_id":"resp_1","item_id":"i1",'
    '"output_index":0,"content_index":0,"text":"Hello"}',
    '{"type":"response.done","event_id":"e6","response":{"id":"resp_1","status":"completed","status_details":null,'
    '"usage":{"total_tokens":30,"input_tokens":28,"output_tokens":2}}}',
]


def test_anthropic_events_text_reason_and_usage():
    """Anthropic text deltas yield text; ping and other block types yield nothing; message_stop ends with usage."""
    items = run(AnthropicDialect(CONFIGS["anthropic"]).parse, ANTHROPIC_EVENTS)
    assert items == ["Hello", "!", Finish("length", {"prompt_tokens": 25, "completion_tokens": 15,
                                                     "total_tokens": 40})]


@pytest.mark.parametrize("kind, cls", [("overloaded_error", UpstreamUnavailable),
                                       ("invalid_request_error", UpstreamRejected)])
def test_anthropic_error_event(kind, cls):
    """A mid-stream error event raises with its type as vendor code; overloaded is retryable."""
    with pytest.raises(cls) as info:
        AnthropicDialect(CONFIGS["anthropic"]).parse("error", '{"type":"error","error":{"type":"%s",'
                                                              '"message":"Overloaded"}}' % kind)
    assert info.value.upstream_code == kind


def test_anthropic_request_system_max_tokens_and_headers():
    """System messages go top-level, max_tokens is always sent, the key and version travel as headers."""
    url, headers, body = AnthropicDialect(CONFIGS["anthropic"]).http_request(CHAT)
    body = orjson.loads(body)
    assert headers["x-api-key"] == "mock-key" and headers["anthropic-version"] == "2023-06-01"
    assert body["system"] == "be brief" and body["messages"] == [{"role": "user", "content": "你好"}]
    assert body["max_tokens"] == 64 and body["stream"] is True and body["temperature"] == 0.5
    exc = AnthropicDialect(CONFIGS["anthropic"]).http_error(
        529, b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')
    assert isinstance(exc, UpstreamUnavailable) and exc.upstream_code == "overloaded_error"


def test_realtime_events_ga_and_beta_text_then_done():
    """Realtime text deltas in GA and beta names yield text; response.done gives Finish with usage."""
    items = run(RealtimeDialect(CONFIGS["openai-realtime"]).parse, REALTIME_EVENTS)
    assert items == ["Hel", "lo", Finish("stop", {"prompt_tokens": 28, "completion_tokens": 2, "total_tokens": 30})]


@pytest.mark.parametrize("status, details, expected", [
    ("incomplete", '{"type":"incomplete","reason":"max_output_tokens"}', Finish("length", None)),
    ("cancelled", '{"type":"cancelled","reason":"client_cancelled"}', Finish("cancelled", None)),
])
def test_realtime_done_statuses(status, details, expected):
    """response.done's incomplete and cancelled statuses end the answer with length and cancelled."""
    event = '{"type":"response.done","response":{"status":"%s","status_details":%s}}' % (status, details)
    assert RealtimeDialect(CONFIGS["openai-realtime"]).parse(event) == (expected,)


def test_realtime_failed_and_error_events_raise():
    """A failed response and an error event raise with the vendor's code; server errors are retryable."""
    dialect = RealtimeDialect(CONFIGS["openai-realtime"])
    with pytest.raises(UpstreamUnavailable) as failed:
        dialect.parse('{"type":"response.done","response":{"status":"failed","status_details":{"type":"failed",'
                      '"error":{"type":"server_error","code":"server_error","message":"boom"}}}}')
    with pytest.raises(UpstreamRejected) as refused:
        dialect.parse('{"type":"error","error":{"type":"invalid_request_error","code":"invalid_value",'
                      '"message":"bad","param":"session.type"}}')
    assert failed.value.upstream_code == "server_error" and refused.value.upstream_code == "invalid_value"


def test_realtime_handshake_and_session_events():
    """The model rides in the query, the key in a Bearer header; the session gets instructions, the
    conversation one item per message, then response.create; a stop says response.cancel."""
    dialect = RealtimeDialect(CONFIGS["openai-realtime"])
    url, headers = dialect.ws_handshake()
    assert url.endswith("/v1/realtime?model=gpt-realtime") and headers == {"Authorization": "Bearer mock-key"}
    events = [orjson.loads(e) for e in dialect.ws_requests(CHAT)]
    assert [e["type"] for e in events] == ["session.update", "conversation.item.create", "response.create"]
    assert events[0]["session"] == {"type": "realtime", "output_modalities": ["text"], "instructions": "be brief",
                                    "max_output_tokens": 64}
    assert events[1]["item"]["content"] == [{"type": "input_text", "text": "你好"}]
    assert orjson.loads(dialect.goodbye()) == {"type": "response.cancel"}
