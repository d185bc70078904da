"""What a client may ask for: the ChatRequest model and the parsing that refuses bad input."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import RequestError

# Stream ids travel in SSE `data:` JSON, URLs and logs: a narrow alphabet keeps CR/LF,
# quotes and path separators out of every one of them.
STREAM_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=100_000)


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, gt=0, le=1_000_000)
    user: str | None = Field(None, max_length=64)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    messages: list[Message] = Field(min_length=1, max_length=1000)
    upstream: str | None = Field(None, max_length=64)
    stream_id: str | None = Field(None, pattern=STREAM_ID_PATTERN)
    params: Params = Params()
    trace: bool = False  # also stream the raw provider frames, as `trace` events
    # Continue (or start) a conversation kept by the relay (matrix/conversations.py); checked there.
    conversation_id: str | None = None

    @property
    def last_user_text(self) -> str:
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")


def refusal(exc: ValidationError) -> RequestError:
    """A 422 naming the first field at fault (as `param` too) and what is wrong with it."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return RequestError(f"{where}: {first['msg']}", code="invalid_request", status=422, param=where)


def parse_json(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"body is not valid JSON: {exc}", code="invalid_json") from exc


def chat_request(body: Any) -> ChatRequest:
    """Validate a decoded JSON object as a ChatRequest, with a message a person can act on."""
    if not isinstance(body, dict):
        raise RequestError("the request must be a JSON object", code="invalid_request")
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as exc:
        raise refusal(exc) from exc
