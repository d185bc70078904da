"""OpenAI-compatible chat completions (OpenAI, DashScope/Qwen, vLLM, DeepSeek): frames to items.

Quirks handled (docs/protocols.md, "OpenAI-compatible"): the usage chunk has empty `choices`;
`finish_reason` and usage may come in separate chunks, so the end is `data: [DONE]`;
an error may arrive mid-stream as `data: {"error": {...}}`; unknown keys are ignored.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import orjson
from pydantic import SecretStr

from matrix.config import UpstreamConfig
from matrix.errors import UpstreamError, UpstreamProtocolError, UpstreamRejected, UpstreamUnavailable, from_http_status
from matrix.request import ChatRequest
from matrix.provider import Finish, Item

REASONS = {"stop": "stop", "length": "length", "content_filter": "content_filter",
           "tool_calls": "tool_calls", "function_call": "tool_calls"}


class OpenAIConfig(UpstreamConfig):
    """`[upstreams.NAME]` with `kind = "openai"`: any chat-completions endpoint, its key and model."""

    transport: ClassVar[str] = "sse"
    kind: Literal["openai"] = "openai"
    api_key: SecretStr = SecretStr("")  # vLLM and Ollama run without one
    model: str = "gpt-4o-mini"


class OpenAIDialect:
    Config = OpenAIConfig

    def __init__(self, config: OpenAIConfig) -> None:
        self.config = config
        self.reason: str | None = None
        self.usage: dict[str, int] | None = None

    def http_request(self, chat: ChatRequest) -> tuple[str, dict[str, str], bytes]:
        body = {"model": self.config.model, "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": m.role, "content": m.content} for m in chat.messages],
                **chat.params.model_dump(exclude_none=True)}
        headers = {"Authorization": f"Bearer {self.config.api_key.get_secret_value()}",
                   "Content-Type": "application/json", "Accept": "text/event-stream"}
        return self.config.url, headers, orjson.dumps(body)

    def parse(self, event: str, data: str) -> tuple[Item, ...]:
        if data == "[DONE]":
            return (Finish(REASONS.get(self.reason or "stop", "stop"), self.usage),)
        try:
            chunk = orjson.loads(data)
            if error := chunk.get("error"):
                raise error_from_body(error)
            if chunk.get("usage"):
                self.usage = _usage(chunk["usage"])
            texts = []
            for choice in chunk.get("choices") or ():
                if (content := (choice.get("delta") or {}).get("content")):
                    texts.append(content)
                if choice.get("finish_reason"):
                    self.reason = choice["finish_reason"]
        except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
            raise UpstreamProtocolError(f"malformed chunk from provider: {data[:200]!r}") from exc
        return tuple(texts)

    def http_error(self, status: int, body: bytes) -> UpstreamError:
        return http_error(status, body)

    def eof(self) -> tuple[Item, ...]:
        raise UpstreamProtocolError("the provider closed the stream before data: [DONE]")


DIALECT = OpenAIDialect

def http_error(status: int, body: bytes) -> UpstreamError:
    """An HTTP refusal with OpenAI's `{"error": {...}}` body (chat completions, and the Realtime handshake)."""
    try:
        error = orjson.loads(body)["error"]
        return from_http_status(status, str(error.get("message")), _code(error))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return from_http_status(status, body[:200].decode("utf-8", "replace"))


def error_from_body(error: object) -> UpstreamError:
    """An in-band `{"message", "type", "code"}` error: server and rate-limit errors may pass on a retry."""
    if not isinstance(error, dict):
        return UpstreamRejected(str(error))
    message = str(error.get("message") or "provider error")
    retryable = error.get("type") in ("server_error", "rate_limit_error") or error.get("code") == "rate_limit_exceeded"
    return (UpstreamUnavailable if retryable else UpstreamRejected)(message, upstream_code=_code(error))


def _code(error: dict) -> str | None:
    code = error.get("code") or error.get("type")
    return str(code) if code is not None else None


def _usage(usage: dict) -> dict[str, int]:
    return {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens") if k in usage}
