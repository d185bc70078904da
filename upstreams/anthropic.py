"""Anthropic Messages over SSE (`POST /v1/messages`): named events to items.

Quirks handled (docs/protocols.md, "Anthropic Messages"): events are named, and the name
is the JSON `type`; text comes as `content_block_delta` with a `text_delta` (other block
types, tool input or thinking, carry no answer text and are skipped); `message_delta`
carries `stop_reason` and the cumulative output usage, `message_start` the input usage;
`message_stop` is the end marker (there is no `[DONE]`); `ping` keeps the connection
alive; an `error` event can arrive after HTTP 200, where `overloaded_error` is worth
retrying. System messages go in the top-level `system`, and `max_tokens` is required.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import orjson
from pydantic import Field, SecretStr

from matrix.config import UpstreamConfig
from matrix.errors import UpstreamError, UpstreamProtocolError, UpstreamRejected, UpstreamUnavailable, from_http_status
from matrix.provider import Finish, Item
from matrix.request import ChatRequest

REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
           "refusal": "content_filter", "pause_turn": "stop"}
RETRYABLE_TYPES = {"overloaded_error", "rate_limit_error", "api_error"}


class AnthropicConfig(UpstreamConfig):
    """`[upstreams.NAME]` with `kind = "anthropic"`: key, model, API version, default max_tokens."""

    transport: ClassVar[str] = "sse"
    kind: Literal["anthropic"] = "anthropic"
    api_key: SecretStr
    model: str
    version: str = "2023-06-01"  # the `anthropic-version` header
    max_tokens: int = Field(1024, gt=0)  # the API requires one; a client's own max_tokens wins


class AnthropicDialect:
    Config = AnthropicConfig

    def __init__(self, config: AnthropicConfig) -> None:
        self.config = config
        self.reason = "stop"
        self.usage: dict[str, int] = {}

    def http_request(self, chat: ChatRequest) -> tuple[str, dict[str, str], bytes]:
        params = chat.params
        body = {"model": self.config.model, "max_tokens": params.max_tokens or self.config.max_tokens,
                "stream": True,
                "messages": [{"role": m.role, "content": m.content} for m in chat.messages if m.role != "system"],
                **params.model_dump(include={"temperature", "top_p"}, exclude_none=True)}
        if system := "\n\n".join(m.content for m in chat.messages if m.role == "system"):
            body["system"] = system
        if params.user:
            body["metadata"] = {"user_id": params.user}
        headers = {"x-api-key": self.config.api_key.get_secret_value(), "anthropic-version": self.config.version,
                   "Content-Type": "application/json", "Accept": "text/event-stream"}
        return self.config.url, headers, orjson.dumps(body)

    def parse(self, event: str, data: str) -> tuple[Item, ...]:
        if event == "ping":
            return ()
        try:
            frame = orjson.loads(data)
            kind = frame["type"]
            if kind == "content_block_delta":
                delta = frame["delta"]
                return (delta["text"],) if delta.get("type") == "text_delta" and delta["text"] else ()
            if kind == "message_start":
                self._count(frame["message"].get("usage"))
            elif kind == "message_delta":
                self.reason = REASONS.get(frame["delta"].get("stop_reason") or "", "stop")
                self._count(frame.get("usage"))
            elif kind == "message_stop":
                return (Finish(self.reason, self._usage()),)
            elif kind == "error":
                raise error_from_body(frame.get("error"))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamProtocolError(f"malformed event from provider: {data[:200]!r}") from exc
        return ()

    def _count(self, usage: object) -> None:
        if isinstance(usage, dict):  # cumulative: the latest figure is the total
            self.usage.update({k: v for k, v in usage.items() if k in ("input_tokens", "output_tokens")
                               and isinstance(v, int)})

    def _usage(self) -> dict[str, int] | None:
        if not self.usage:
            return None
        prompt, completion = self.usage.get("input_tokens", 0), self.usage.get("output_tokens", 0)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def http_error(self, status: int, body: bytes) -> UpstreamError:
        try:
            error = orjson.loads(body)["error"]
            return from_http_status(status, str(error.get("message")), str(error.get("type")))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return from_http_status(status, body[:200].decode("utf-8", "replace"))

    def eof(self) -> tuple[Item, ...]:
        raise UpstreamProtocolError("the provider closed the stream before message_stop")


DIALECT = AnthropicDialect


def error_from_body(error: object) -> UpstreamError:
    if not isinstance(error, dict):
        return UpstreamRejected(str(error))
    kind = str(error.get("type") or "error")
    cls = UpstreamUnavailable if kind in RETRYABLE_TYPES else UpstreamRejected
    return cls(str(error.get("message") or kind), upstream_code=kind)
