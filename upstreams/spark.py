"""iFlytek Spark chat over WebSocket: signed URL, request frame, response frames to items.

Quirks handled (docs/protocols.md, "iFlytek Spark"): `header.code` is checked on every
frame before any content (a relay that forgets this shows users empty answers); text is
incremental; `payload.choices.status == 2` marks the last frame, which alone carries
usage; a close before that frame is an error; a refused handshake is HTTP 401 with a
JSON `message`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import orjson
from pydantic import SecretStr

from matrix.config import UpstreamConfig
from matrix.errors import UpstreamError, UpstreamProtocolError, UpstreamRejected, UpstreamUnavailable, from_http_status
from matrix.request import ChatRequest
from matrix.provider import Finish, Item

from .spark_auth import signed_url

# Busy, rate or concurrency limits: another attempt may pass (the vendor's error-code table,
# docs/protocols.md).
RETRYABLE_CODES = {10008, 10110, 10222, 11202, 11203}


class SparkConfig(UpstreamConfig):
    """`[upstreams.NAME]` with `kind = "spark"`: the app's three credentials and the model domain."""

    transport: ClassVar[str] = "ws"
    kind: Literal["spark"] = "spark"
    app_id: str
    api_key: SecretStr
    api_secret: SecretStr
    domain: str = "generalv3.5"  # must match the URL's version path (/v3.5/chat), else vendor code 10404


class SparkDialect:
    Config = SparkConfig

    def __init__(self, config: SparkConfig) -> None:
        self.config = config

    def ws_handshake(self) -> tuple[str, dict[str, str]]:
        """A freshly signed URL (its signature works for minutes, so it is never logged); no headers."""
        return signed_url(self.config.url, self.config.api_key.get_secret_value(),
                          self.config.api_secret.get_secret_value()), {}

    def ws_requests(self, chat: ChatRequest) -> list[str]:
        return [self._request(chat)]

    def _request(self, chat: ChatRequest) -> str:
        chat_params = {"domain": self.config.domain,
                       **chat.params.model_dump(include={"temperature", "max_tokens"}, exclude_none=True)}
        frame = {"header": {"app_id": self.config.app_id, "uid": (chat.params.user or "transport-matrix")[:32]},
                 "parameter": {"chat": chat_params},
                 "payload": {"message": {"text": [{"role": m.role, "content": m.content} for m in chat.messages]}}}
        return orjson.dumps(frame).decode()

    def parse(self, data: str | bytes) -> tuple[Item, ...]:
        try:
            frame = orjson.loads(data)
            header = frame["header"]
            if header.get("code", 0) != 0:
                raise error_from_header(header)
            choices = frame["payload"]["choices"]
            texts = [t["content"] for t in choices.get("text") or () if t.get("content")]
            if choices.get("status") != 2:
                return tuple(texts)
            usage = frame["payload"].get("usage", {}).get("text")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamProtocolError(f"malformed frame from provider: {str(data)[:200]!r}") from exc
        usage = {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens") if k in usage} \
            if isinstance(usage, dict) else None
        reason = "tool_calls" if any("function_call" in t for t in choices.get("text") or ()) else "stop"
        return (*texts, Finish(reason, usage))

    def handshake_error(self, status: int, body: bytes) -> UpstreamError:
        try:
            message = str(orjson.loads(body).get("message"))
        except (orjson.JSONDecodeError, AttributeError):
            message = body[:200].decode("utf-8", "replace") or "handshake refused"
        return from_http_status(status, message)

    def eof(self) -> tuple[Item, ...]:
        raise UpstreamProtocolError("the provider closed the connection before the last frame (status 2)")

    def goodbye(self) -> None:
        return None  # one answer per connection: closing it is the whole stop


DIALECT = SparkDialect

def error_from_header(header: dict) -> UpstreamError:
    code = header.get("code")
    cls = UpstreamUnavailable if code in RETRYABLE_CODES else UpstreamRejected
    return cls(str(header.get("message") or "provider error"), upstream_code=str(code))
