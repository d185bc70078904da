"""Anthropic Messages (`POST /v1/messages`): named SSE events from `message_start` to `message_stop`.

Wire facts as in docs/protocols.md, "Anthropic Messages", checked against the `anthropic`
SDK's types (`RawMessageStreamEvent`): every event has an `event:` name equal to its
JSON `type`; text arrives as `content_block_delta` / `text_delta` inside one text block;
`message_delta` carries `stop_reason` and cumulative `usage.output_tokens`; no `[DONE]`.
`ping` events are outside that union (the SDK skips them by name), and an `error` event
after HTTP 200 is what the SDK raises on, as `APIStatusError` with the error's `type`.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import orjson
from aiohttp import web

from .play import Ask, text_of
from .script import Fault, Script
from .sse import json_frame, json_response
from .state import Credentials

NAME = "anthropic"
HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
# `anthropic-version` is a release date: the research notes know 2023-06-01, the SDK
# (2.x) sends a later one (2026-10-21), so any date is accepted and anything else refused.
VERSION = re.compile(r"20\d\d-\d\d-\d\d")
PING = b'event: ping\ndata: {"type":"ping"}\n\n'
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}
# Error `type` -> message, as the API writes them (HTTP errors and `event: error` alike).
MESSAGES = {
    "invalid_request_error": "Invalid request",
    "authentication_error": "invalid x-api-key",
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit",
    "api_error": "Internal server error",
    "overloaded_error": "Overloaded",
}
# fault=http_* and handshake_401: the status -> error type; any other status is an api_error.
HTTP_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error",
              500: "api_error", 529: "overloaded_error"}


def event(name: str, payload: dict[str, Any]) -> bytes:
    """`event: <name>` and `data: <json>` whose `type` is the same name."""
    return json_frame(b"event: %s\ndata: " % name.encode(), {"type": name, **payload})


def error(type_: str, message: str | None = None) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message or MESSAGES.get(type_, type_)}}


def _id(prefix: str) -> str:
    return f"{prefix}_mock{secrets.token_hex(10)}"


class AnthropicDialect:
    """The events of one streamed message: a single text block at index 0."""

    ping = PING
    ping_every_tokens = 0
    ping_every_s = 1.0  # keep-alives during a long first-token wait

    def __init__(self, model: str, finish: str, input_tokens: int, error_type: str) -> None:
        self._message = {"id": _id("msg"), "type": "message", "role": "assistant", "model": model,
                         "content": [], "stop_reason": None, "stop_sequence": None}
        self._stop_reason = STOP_REASONS[finish]
        self._input_tokens = input_tokens
        self._error_type = error_type or "overloaded_error"
        self._started = False
        self._output_tokens = 0

    def _head(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        # The API's message_start counts one output token already; message_delta corrects it.
        usage = {"input_tokens": self._input_tokens, "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0, "output_tokens": 1}
        return [event("message_start", {"message": {**self._message, "usage": usage}}),
                event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
                PING]

    def token(self, text: str, *, last: bool) -> list[bytes]:
        self._output_tokens += 1
        return [*self._head(), event("content_block_delta",
                                     {"index": 0, "delta": {"type": "text_delta", "text": text}})]

    def finish(self) -> list[bytes]:
        # message_delta usage is cumulative (the vendor's streaming doc), so it is the total.
        return [*self._head(), event("content_block_stop", {"index": 0}),
                event("message_delta", {"delta": {"stop_reason": self._stop_reason, "stop_sequence": None},
                                        "usage": {"input_tokens": self._input_tokens,
                                                  "output_tokens": self._output_tokens}}),
                event("message_stop", {})]

    def error(self, fault: Fault) -> list[bytes]:
        # error_before: the first event is the error; error_after:N: after the stream began.
        head = self._head() if fault.name == "error_after" else []
        message = f"{MESSAGES.get(self._error_type, self._error_type)} (mock fault {fault})"
        return [*head, json_frame(b"event: error\ndata: ", error(self._error_type, message))]

    def malformed(self) -> bytes:
        return b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type\n\n'


class AnthropicMessages:
    """The SSE vendor behind `POST /v1/messages` with `x-api-key` and `anthropic-version`."""

    name = NAME
    headers = HEADERS

    def refusal(self, request: web.Request, credentials: Credentials) -> web.Response | None:
        # The API key comes as `x-api-key` (research notes, SDK 0.x) or, from SDK 2.x on,
        # as `Authorization: Bearer`; either must match.
        if credentials.anthropic_api_key not in (request.headers.get("x-api-key"),
                                                 request.headers.get("Authorization", "").removeprefix("Bearer ")):
            return self.http_error(401)
        version = request.headers.get("anthropic-version")
        if version is None or not VERSION.fullmatch(version):
            return self.bad_request("anthropic-version: header is required" if version is None
                                    else f"anthropic-version: unknown version {version!r}")
        return None

    def read(self, body: bytes) -> Ask:
        request = orjson.loads(body)
        if not isinstance(request, dict):
            raise ValueError("the request body must be a JSON object")
        for key, kind in (("model", str), ("max_tokens", int), ("messages", list)):
            if key not in request:
                raise ValueError(f"{key}: Field required")
            if not isinstance(request[key], kind) or isinstance(request[key], bool):
                raise ValueError(f"{key}: Input should be a valid {kind.__name__}")
        if request["max_tokens"] < 1:
            raise ValueError("max_tokens: Input should be greater than or equal to 1")
        texts = [(m.get("role"), text_of(m.get("content"))) for m in request["messages"] if isinstance(m, dict)]
        if not texts or any(role not in ("user", "assistant") for role, _ in texts):
            raise ValueError("messages: each message needs role 'user' or 'assistant'")
        user = [text for role, text in texts if role == "user"]
        return Ask(text=user[-1] if user else "", context=text_of(request.get("system")) + "".join(t for _, t in texts),
                   max_tokens=request["max_tokens"], stream=bool(request.get("stream")), model=request["model"],
                   messages=(("system", text_of(request.get("system"))),) * ("system" in request) + tuple(texts))

    def bad_request(self, message: str) -> web.Response:
        return _error_response(400, error("invalid_request_error", message))

    def http_error(self, status: int) -> web.Response:
        return _error_response(status, error(HTTP_TYPES.get(status, "api_error")))

    def dialect(self, script: Script, ask: Ask, finish: str) -> AnthropicDialect:
        return AnthropicDialect(ask.model, finish, ask.prompt_tokens, script.error)

    def whole(self, script: Script, tokens: list[str], finish: str, ask: Ask) -> dict[str, Any]:
        return {"id": _id("msg"), "type": "message", "role": "assistant", "model": ask.model,
                "content": [{"type": "text", "text": "".join(tokens)}],
                "stop_reason": STOP_REASONS[finish], "stop_sequence": None,
                "usage": {"input_tokens": ask.prompt_tokens, "output_tokens": len(tokens)}}


def _error_response(status: int, body: dict[str, Any]) -> web.Response:
    # Error bodies carry the request id, as the API's do (the SDK reads `request-id` too).
    request_id = _id("req")
    return json_response(status, {**body, "request_id": request_id}, {"request-id": request_id})
