"""OpenAI chat completions as the client's format, sans I/O: a request to a ChatRequest, events to chunks.

What clients of the official `openai` package (and LangChain, and every tool with a
"base URL" field) send and expect: `POST /v1/chat/completions` with `model` naming one of
the relay's upstreams; with `stream: true`, `chat.completion.chunk` objects as SSE `data:`
lines (`role` in the first delta, then `content` deltas, a chunk with `finish_reason`, a
usage chunk with empty `choices` when `stream_options.include_usage`, then `data: [DONE]`);
an error after the stream started is one `data: {"error": {...}}` line, which the SDK
raises on. Without `stream`, one `chat.completion` object.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from matrix.errors import RequestError, error_body
from matrix.events import Delta, Done, Error, Event, Start
from matrix.request import ChatRequest, refusal

# Documented request fields the relay accepts and does not use: clients send them by
# default, so refusing them would refuse the clients.
IGNORED = frozenset({
    "frequency_penalty", "presence_penalty", "seed", "stop", "logit_bias", "logprobs", "top_logprobs",
    "response_format", "metadata", "store", "service_tier", "parallel_tool_calls", "modalities", "prediction",
    "reasoning_effort", "verbosity", "prompt_cache_key", "safety_identifier", "web_search_options",
})
# Documented fields whose meaning the relay cannot honour: a clear refusal beats an answer
# that silently ignores them (tools would be answered without tool calls).
UNSUPPORTED = frozenset({"tools", "tool_choice", "functions", "function_call", "audio"})
# finish_reason values the SDK's types know; our other reasons (`cancelled`) end as `stop`.
FINISH = frozenset({"stop", "length", "tool_calls", "content_filter"})


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # `name` and the like: nothing a provider here takes
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_Part] | None = None


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")  # checked by hand: documented extras are ignored, others refused
    model: str = Field(max_length=64)
    messages: list[_Message] = Field(min_length=1, max_length=1000)
    stream: StrictBool = False  # "yes" is not true here
    stream_options: _StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    user: str | None = None
    n: int | None = None
    conversation_id: str | None = None  # ours, not OpenAI's: the SDK sends it with extra_body=


class Options(BaseModel):
    """How to answer: streamed or not, with a usage chunk or not, and the model name to echo."""

    model: str
    stream: bool
    include_usage: bool


def completion_request(body: Any) -> tuple[ChatRequest, Options]:
    """Validate an OpenAI request body; refusals are 400/422 with the field in `param`."""
    if not isinstance(body, dict):
        raise RequestError("the request must be a JSON object", code="invalid_request")
    try:
        request = _Request.model_validate(body)
    except ValidationError as exc:
        raise refusal(exc) from exc
    for name in request.model_extra or {}:
        if name in UNSUPPORTED:
            raise RequestError(f"{name!r} is not supported by this relay", code="unsupported_parameter", param=name)
        if name not in IGNORED:
            raise RequestError(f"unrecognized request argument {name[:64]!r}", code="unknown_parameter",
                               param=name[:64])
    if request.n not in (None, 1):
        raise RequestError("only n=1 is supported", code="unsupported_parameter", param="n")
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": _text(m, i)}
                for i, m in enumerate(request.messages)]
    params = {"temperature": request.temperature, "top_p": request.top_p, "user": request.user,
              "max_tokens": request.max_completion_tokens or request.max_tokens}
    try:
        chat = ChatRequest.model_validate({"messages": messages, "upstream": request.model,
                                           "params": {k: v for k, v in params.items() if v is not None},
                                           "conversation_id": request.conversation_id})
    except ValidationError as exc:
        refused = refusal(exc)  # named as the client named it: `temperature`, not `params.temperature`
        ours = refused.param or ""
        theirs = "model" if ours == "upstream" else ours.removeprefix("params.")
        raise RequestError(refused.message.replace(ours, theirs, 1), code=refused.code, status=refused.status,
                           param=theirs) from exc
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    return chat, Options(model=request.model, stream=request.stream, include_usage=include_usage)


def _text(message: _Message, index: int) -> str:
    if isinstance(message.content, str):
        return message.content
    if message.content is None:
        raise RequestError("a message without content (a tool call) is not supported", code="unsupported_content",
                           param=f"messages.{index}.content")
    if any(part.type != "text" or part.text is None for part in message.content):
        raise RequestError("only text content parts are supported", code="unsupported_content",
                           param=f"messages.{index}.content")
    return "".join(part.text for part in message.content)  # type: ignore[misc]


def finish_reason(done: Done) -> str:
    return done.reason if done.reason in FINISH else "stop"


class Chunks:
    """Frames one stream's events as `chat.completion.chunk` SSE lines, one serialization per event."""

    __slots__ = ("_head", "_include_usage")

    def __init__(self, stream_id: str, options: Options, created: int) -> None:
        head = orjson.dumps({"id": f"chatcmpl-{stream_id}", "object": "chat.completion.chunk", "created": created,
                             "model": options.model})
        self._head = b"data: " + head[:-1] + b',"choices":['  # the envelope is serialised once per stream
        self._include_usage = options.include_usage

    def frames(self, events: list[Event]) -> bytes:
        return b"".join([self.frame(e) for e in events])

    def frame(self, event: Event) -> bytes:
        if type(event) is Delta:  # the hot path: only the text is serialised
            return b'%s{"index":0,"delta":{"content":%s},"finish_reason":null}]}\n\n' % (
                self._head, orjson.dumps(event.text))
        if type(event) is Start:
            return self._head + b'{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
        if type(event) is Done:
            out = b'%s{"index":0,"delta":{},"finish_reason":"%s"}]}\n\n' % (self._head, finish_reason(event).encode())
            if self._include_usage:
                out += self._head + b'],"usage":' + orjson.dumps(usage(event)) + b"}\n\n"
            return out + b"data: [DONE]\n\n"
        if type(event) is Error:
            return b"data: " + orjson.dumps(error(event)) + b"\n\n"
        return b""  # trace events are not part of this protocol


def usage(done: Done) -> dict[str, int] | None:
    """The provider's token counts; None for a provider that reports none (Baidu agents)."""
    if done.usage is None:
        return None
    return {k: done.usage.get(k, 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def error(event: Error) -> dict:
    """An error that ended a started stream, as the SDK reads it: our code and the vendor's."""
    body = error_body(503 if event.retryable else 502, event.code, event.message)
    body["error"]["upstream_code"] = event.upstream_code
    return body


def completion(stream_id: str, options: Options, created: int, text: str, done: Done) -> dict:
    """The whole answer as one `chat.completion` object (`stream: false`)."""
    return {"id": f"chatcmpl-{stream_id}", "object": "chat.completion", "created": created, "model": options.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": finish_reason(done)}],
            "usage": usage(done)}
