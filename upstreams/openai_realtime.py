"""OpenAI Realtime over WebSocket (`GET /v1/realtime?model=`), text only: client events out, server events to items.

Quirks handled (docs/protocols.md, "OpenAI Realtime"): the key is a Bearer header on the
upgrade, refused with HTTP 401; a session takes several client events before it answers
(`session.update`, one `conversation.item.create` per message, `response.create`); text
arrives as `response.output_text.delta` (GA) or `response.text.delta` (the beta names,
which the official SDK still types), and every other event carries no answer text;
`response.done` ends the answer with a `status`: completed, incomplete (cut by
`max_output_tokens`), cancelled, or failed with the error in `status_details`; an `error`
event may come with no response at all, and the session stays open after it, so the
relay ends the stream itself. The connection outlives a response, so a stop sends
`response.cancel` before closing.
"""

from __future__ import annotations

from typing import ClassVar, Literal
from urllib.parse import urlencode

import orjson
from pydantic import SecretStr

from matrix.config import UpstreamConfig
from matrix.errors import UpstreamError, UpstreamProtocolError
from matrix.provider import Finish, Item
from matrix.request import ChatRequest

from .openai import error_from_body, http_error

TEXT_DELTAS = {"response.output_text.delta", "response.text.delta"}
INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


class RealtimeConfig(UpstreamConfig):
    """`[upstreams.NAME]` with `kind = "openai-realtime"`: the key and the model."""

    transport: ClassVar[str] = "ws"
    kind: Literal["openai-realtime"] = "openai-realtime"
    api_key: SecretStr
    model: str = "gpt-realtime"


class RealtimeDialect:
    Config = RealtimeConfig

    def __init__(self, config: RealtimeConfig) -> None:
        self.config = config

    def ws_handshake(self) -> tuple[str, dict[str, str]]:
        separator = "&" if "?" in self.config.url else "?"
        return (f"{self.config.url}{separator}{urlencode({'model': self.config.model})}",
                {"Authorization": f"Bearer {self.config.api_key.get_secret_value()}"})

    def ws_requests(self, chat: ChatRequest) -> list[str]:
        session: dict = {"type": "realtime", "output_modalities": ["text"]}
        if system := "\n\n".join(m.content for m in chat.messages if m.role == "system"):
            session["instructions"] = system
        if chat.params.max_tokens:
            session["max_output_tokens"] = chat.params.max_tokens
        events = [{"type": "session.update", "session": session}]
        events += [{"type": "conversation.item.create",
                    "item": {"type": "message", "role": m.role,
                             "content": [{"type": "input_text" if m.role == "user" else "output_text",
                                          "text": m.content}]}}
                   for m in chat.messages if m.role != "system"]
        events.append({"type": "response.create"})
        return [orjson.dumps(event).decode() for event in events]

    def parse(self, data: str | bytes) -> tuple[Item, ...]:
        try:
            event = orjson.loads(data)
            kind = event["type"]
            if kind in TEXT_DELTAS:
                return (event["delta"],) if event["delta"] else ()
            if kind == "response.done":
                return (self._end(event["response"]),)
            if kind == "error":
                raise error_from_body(event.get("error"))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamProtocolError(f"malformed event from provider: {str(data)[:200]!r}") from exc
        return ()

    @staticmethod
    def _end(response: dict) -> Finish:
        status, details = response.get("status"), response.get("status_details") or {}
        if status == "failed":
            raise error_from_body(details.get("error") or {"message": "the response failed"})
        usage = response.get("usage")
        if isinstance(usage, dict):
            usage = {"prompt_tokens": usage.get("input_tokens", 0), "completion_tokens": usage.get("output_tokens", 0),
                     "total_tokens": usage.get("total_tokens", 0)}
        if status == "incomplete":
            return Finish(INCOMPLETE.get(details.get("reason"), "stop"), usage)
        return Finish("cancelled" if status == "cancelled" else "stop", usage)

    def handshake_error(self, status: int, body: bytes) -> UpstreamError:
        return http_error(status, body)

    def eof(self) -> tuple[Item, ...]:
        raise UpstreamProtocolError("the provider closed the connection before response.done")

    def goodbye(self) -> str:
        return '{"type":"response.cancel"}'


DIALECT = RealtimeDialect
