"""OpenAI-compatible chat completions (`POST /v1/chat/completions`): `chat.completion.chunk` frames.

Wire facts as in docs/protocols.md, "OpenAI-compatible": `data: ` with a space, the same
`id`/`created`/`model` on every chunk, a first chunk with the role, a finish chunk, an
optional usage chunk with `choices: []`, then `data: [DONE]`; errors before the stream
are HTTP errors with an `{"error": {...}}` body, errors after it a `data:` line with
an `error` key.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from .play import Ask, text_of, usage
from .script import Fault, Script
from .sse import json_frame, json_response
from .state import Credentials

NAME = "openai"
DONE = b"data: [DONE]\n\n"
HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
# fault=http_* and handshake_401: status -> (message, type, code) as the OpenAI API writes them.
HTTP_ERRORS = {
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    429: ("Rate limit reached for requests. Please try again later.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


def error(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def frame(payload: dict[str, Any]) -> bytes:
    return json_frame(b"data: ", payload)


class OpenAIDialect:
    """The chunks of one streamed completion."""

    ping = None  # OpenAI sends no keep-alives
    ping_every_tokens = 0
    ping_every_s = 0.0

    def __init__(self, model: str, finish: str, prompt_tokens: int | None, include_usage: bool) -> None:
        self._head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                      "created": int(time.time()), "model": model, "system_fingerprint": None}
        self._finish = finish
        self._prompt_tokens = prompt_tokens  # None: no usage chunk even if asked (usage=0)
        self._include_usage = include_usage  # adds `"usage": null` to every chunk, as the API does
        self._role_sent = False
        self._completion_tokens = 0

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        extra = {"usage": None} if self._include_usage else {}
        return frame({**self._head, "choices": [choice], **extra})

    def _role(self) -> list[bytes]:
        if self._role_sent:
            return []
        self._role_sent = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def token(self, text: str, *, last: bool) -> list[bytes]:
        self._completion_tokens += 1
        return [*self._role(), self._chunk({"content": text})]

    def finish(self) -> list[bytes]:
        frames = [*self._role(), self._chunk({}, self._finish)]
        if self._include_usage and self._prompt_tokens is not None:
            totals = usage(self._prompt_tokens, self._completion_tokens)
            frames.append(frame({**self._head, "choices": [], "usage": totals}))
        return [*frames, DONE]

    def error(self, fault: Fault) -> list[bytes]:
        message, type_, code = HTTP_ERRORS[500]
        return [frame(error(f"{message} (mock fault {fault})", type_, code))]

    def malformed(self) -> bytes:
        return b'data: {"id":"chatcmpl-\n\n'


class OpenAIChat:
    """The SSE vendor behind `POST /v1/chat/completions` with `Authorization: Bearer <key>`."""

    name = NAME
    headers = HEADERS

    def refusal(self, request: web.Request, credentials: Credentials) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {credentials.openai_api_key}":
            return self.http_error(401)
        return None

    def read(self, body: bytes) -> Ask:
        request = orjson.loads(body)
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            raise ValueError("'messages' is a required property")
        texts = [(m.get("role"), text_of(m.get("content"))) for m in request["messages"] if isinstance(m, dict)]
        user = [text for role, text in texts if role == "user"]
        max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise ValueError("max_tokens must be a positive integer")
        options = request.get("stream_options") or {}
        return Ask(text=user[-1] if user else "", context="".join(text for _, text in texts),
                   max_tokens=max_tokens, stream=bool(request.get("stream")),
                   include_usage=bool(options.get("include_usage")),
                   model=str(request.get("model") or "mock-model"), messages=tuple(texts))

    def bad_request(self, message: str) -> web.Response:
        return json_response(400, error(message, "invalid_request_error"))

    def http_error(self, status: int) -> web.Response:
        # A status the vendor has no body for (fault=http_529 is Anthropic's) gets its 500 body.
        return json_response(status, error(*HTTP_ERRORS.get(status, HTTP_ERRORS[500])))

    def dialect(self, script: Script, ask: Ask, finish: str) -> OpenAIDialect:
        return OpenAIDialect(ask.model, finish, ask.prompt_tokens if script.usage else None,
                             ask.include_usage)

    def whole(self, script: Script, tokens: list[str], finish: str, ask: Ask) -> dict[str, Any]:
        completion = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
            "created": int(time.time()), "model": ask.model, "system_fingerprint": None,
            "choices": [{"index": 0, "logprobs": None, "finish_reason": finish,
                         "message": {"role": "assistant", "content": "".join(tokens), "refusal": None}}],
        }
        if script.usage:
            completion["usage"] = usage(ask.prompt_tokens, len(tokens))
        return completion
