"""Baidu agents conversation API (agentapi.baidu.com/assistant/conversation): frames to items.

Quirks handled (docs/protocols.md, "Baidu agent"): `data:{` with no space (the SSE
decoder accepts both); `event:ping` keep-alives; the turn ends with
`data.message.endTurn: true`, not `[DONE]`; errors are a top-level `status != 0`, either
as a frame of a 200 response or as a plain JSON body. Context lives on Baidu's side
(threads), so only the last user message is sent.
"""

from __future__ import annotations

from urllib.parse import urlencode

from typing import ClassVar, Literal

import orjson
from pydantic import SecretStr

from matrix.config import UpstreamConfig
from matrix.errors import UpstreamError, UpstreamProtocolError, UpstreamRejected, UpstreamUnavailable, from_http_status
from matrix.request import ChatRequest
from matrix.provider import Finish, Item

RETRYABLE_STATUS = {18}  # rate limited (as mapped by clients; Baidu's own table is unpublished)


class BaiduAgentConfig(UpstreamConfig):
    """`[upstreams.NAME]` with `kind = "baidu-agent"`: the agent's id and secret key."""

    transport: ClassVar[str] = "sse"
    kind: Literal["baidu-agent"] = "baidu-agent"
    app_id: str
    secret_key: SecretStr


class BaiduAgentDialect:
    Config = BaiduAgentConfig

    def __init__(self, config: BaiduAgentConfig) -> None:
        self.config = config

    def http_request(self, chat: ChatRequest) -> tuple[str, dict[str, str], bytes]:
        query = urlencode({"appId": self.config.app_id, "secretKey": self.config.secret_key.get_secret_value()})
        body = {"message": {"content": {"type": "text", "value": {"showText": chat.last_user_text}}},
                "source": self.config.app_id, "from": "openapi",
                "openId": chat.params.user or "transport-matrix"}
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        return f"{self.config.url}?{query}", headers, orjson.dumps(body)

    def parse(self, event: str, data: str) -> tuple[Item, ...]:
        if event == "ping":
            return ()
        try:
            frame = orjson.loads(data)
            if frame.get("status", 0) != 0:
                raise error_from_body(frame)
            message = frame["data"]["message"]
            texts = [item["data"]["text"] for item in message.get("content") or ()
                     if item.get("dataType") in ("markdown", "text", "txt")
                     and isinstance(item.get("data"), dict) and item["data"].get("text")]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamProtocolError(f"malformed frame from provider: {data[:200]!r}") from exc
        if message.get("endTurn"):
            return (*texts, Finish("stop"))
        return tuple(texts)

    def http_error(self, status: int, body: bytes) -> UpstreamError:
        try:
            frame = orjson.loads(body)
            if status == 200:  # an error as a plain JSON body instead of an event stream
                return error_from_body(frame)
            return from_http_status(status, str(frame.get("message")), str(frame.get("status") or status))
        except (orjson.JSONDecodeError, AttributeError):
            return from_http_status(status, body[:200].decode("utf-8", "replace"))

    def eof(self) -> tuple[Item, ...]:
        raise UpstreamProtocolError("the provider closed the stream before endTurn")


DIALECT = BaiduAgentDialect

def error_from_body(frame: dict) -> UpstreamError:
    status = frame.get("status")
    cls = UpstreamUnavailable if status in RETRYABLE_STATUS else UpstreamRejected
    return cls(str(frame.get("message") or "agent error"), upstream_code=str(status))
