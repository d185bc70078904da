"""OpenAI Realtime server events for a text-only session, in the GA names or the beta ones.

Wire facts as in docs/protocols.md, "OpenAI Realtime", with names and fields taken from the
`openai` SDK's types: `openai/types/realtime/` (GA) and `openai/types/beta/realtime/`
(beta). Both list the same response events except text and item creation: GA
`response.output_text.delta|done` and `conversation.item.added` + `conversation.item.done`,
beta `response.text.delta|done` and `conversation.item.created`; GA sessions and
responses say `output_modalities`, beta ones `modalities`. Every event has an `event_id`.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from .play import Ask, text_of
from .script import Fault

NAME = "openai-realtime"
# A fault's `error` event: fault -> (type, code, message); `error=WORD` replaces the code.
FAULT_ERRORS = {
    "http_429": ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached. Please try again later."),
    "handshake_401": ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
}
SERVER_ERROR = ("server_error", "server_error", "The server had an error while processing your request.")


def new_id(prefix: str) -> str:
    return f"{prefix}_mock{secrets.token_hex(8)}"


def dump(payload: dict[str, Any]) -> str:
    """One server event as a text frame: `type` first, then a fresh `event_id`."""
    return orjson.dumps({"type": payload.pop("type"), "event_id": new_id("event"), **payload}).decode()


def error_event(type_: str, code: str | None, message: str, param: str | None = None,
                event_id: str | None = None) -> str:
    """An `error` event; `event_id` inside `error` names the client event that caused it."""
    return dump({"type": "error", "error": {"type": type_, "code": code, "message": message,
                                            "param": param, "event_id": event_id}})


@dataclass
class Session:
    """One connection's session: what `session.update` set and the conversation so far."""

    model: str
    beta: bool = False                  # the client asked for the beta interface
    id: str = field(default_factory=lambda: new_id("sess"))
    instructions: str = ""
    max_output_tokens: int | None = None
    items: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """The `session` object of `session.created` / `session.updated`; text is all this mock speaks."""
        limit = "inf" if self.max_output_tokens is None else self.max_output_tokens
        common = {"object": "realtime.session", "id": self.id, "model": self.model,
                  "instructions": self.instructions, "expires_at": int(time.time()) + 3600}
        if self.beta:
            return {**common, "modalities": ["text"], "max_response_output_tokens": limit}
        return {"type": "realtime", **common, "output_modalities": ["text"], "max_output_tokens": limit}

    def update(self, session: dict[str, Any]) -> None:
        if "instructions" in session:
            self.instructions = str(session["instructions"])
        limit_key = "max_response_output_tokens" if self.beta else "max_output_tokens"
        if limit_key in session:
            self.max_output_tokens = limit(session[limit_key])

    def add(self, item: dict[str, Any]) -> list[str]:
        """Keep a `conversation.item.create` item; the events that confirm it."""
        previous = self.items[-1]["id"] if self.items else None
        item = {"id": new_id("item"), "object": "realtime.item", "status": "completed", **item}
        self.items.append(item)
        if self.beta:
            return [dump({"type": "conversation.item.created", "previous_item_id": previous, "item": item})]
        return [dump({"type": name, "previous_item_id": previous, "item": item})
                for name in ("conversation.item.added", "conversation.item.done")]

    def ask(self, response: dict[str, Any]) -> Ask:
        """What a `response.create` asks: its own `input` items, else the conversation."""
        items = response.get("input") if isinstance(response.get("input"), list) else self.items
        texts = [(i.get("role"), text_of(i.get("content"), ("input_text", "text", "output_text")))
                 for i in items if isinstance(i, dict) and i.get("type") == "message"]
        user = [text for role, text in texts if role == "user"]
        max_tokens = limit(response["max_output_tokens"]) if "max_output_tokens" in response \
            else self.max_output_tokens
        instructions = str(response.get("instructions", self.instructions))
        return Ask(text=user[-1] if user else "", context=instructions + "".join(t for _, t in texts),
                   max_tokens=max_tokens, model=self.model,
                   messages=(("system", instructions),) * bool(instructions) + tuple(texts))


def limit(value: Any) -> int | None:
    """A `max_output_tokens` value: a positive int, or "inf" for none."""
    if value == "inf":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError("max_output_tokens must be a positive integer or 'inf'")


class RealtimeDialect:
    """The events of one response: one assistant message item with one text part."""

    ping = None  # WebSocket pings are aiohttp's business; the event catalogue has none
    ping_every_tokens = 0
    ping_every_s = 0.0

    def __init__(self, ask: Ask, finish: str, *, beta: bool, with_usage: bool, error_code: str) -> None:
        self._beta = beta
        self._text_event = "response.text" if beta else "response.output_text"
        self._response = {"object": "realtime.response", "id": new_id("resp"),
                          ("modalities" if beta else "output_modalities"): ["text"],
                          "conversation_id": new_id("conv"), "metadata": None}
        self._item_id = new_id("item")
        self._ids = {"response_id": self._response["id"], "item_id": self._item_id,
                     "output_index": 0, "content_index": 0}
        self._finish = finish
        self._prompt_tokens = ask.prompt_tokens if with_usage else None
        self._error_code = error_code
        self._text: list[str] = []
        self._created = self._opened = False

    def _item(self, status: str) -> dict[str, Any]:
        content = [{"type": "text" if self._beta else "output_text", "text": "".join(self._text)}]
        return {"id": self._item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                "status": status, "content": content if status != "in_progress" else []}

    def _head(self, opened: bool = True) -> list[str]:
        """`response.created`, then (for output) the item and its text part, each once."""
        frames = []
        if not self._created:
            self._created = True
            frames.append(dump({"type": "response.created", "response": {
                **self._response, "status": "in_progress", "status_details": None, "output": [], "usage": None}}))
        if opened and not self._opened:
            self._opened = True
            frames.append(dump({"type": "response.output_item.added", "response_id": self._response["id"],
                                "output_index": 0, "item": self._item("in_progress")}))
            frames.append(dump({"type": "response.content_part.added", **self._ids,
                                "part": {"type": "text", "text": ""}}))
        return frames

    def token(self, text: str, *, last: bool) -> list[str]:
        self._text.append(text)
        return [*self._head(), dump({"type": f"{self._text_event}.delta", **self._ids, "delta": text})]

    def finish(self) -> list[str]:
        if self._finish == "length":  # cut by max_output_tokens
            return self.end("incomplete", {"type": "incomplete", "reason": "max_output_tokens"})
        return self.end("completed", None)

    def cancelled(self) -> list[str]:
        return self.end("cancelled", {"type": "cancelled", "reason": "client_cancelled"})

    def end(self, status: str, details: dict[str, Any] | None) -> list[str]:
        """The `...done` events of the text, part and item (also for an interrupted response,
        as the SDK's docstrings say), then `response.done` with its status and usage."""
        frames = self._head(opened=status in ("completed", "incomplete") or self._opened)
        item_status = "completed" if status == "completed" else "incomplete"
        output = []
        if self._opened:
            text = "".join(self._text)
            output = [self._item(item_status)]
            frames += [dump({"type": f"{self._text_event}.done", **self._ids, "text": text}),
                       dump({"type": "response.content_part.done", **self._ids,
                             "part": {"type": "text", "text": text}}),
                       dump({"type": "response.output_item.done", "response_id": self._response["id"],
                             "output_index": 0, "item": output[0]})]
        frames.append(dump({"type": "response.done", "response": {
            **self._response, "status": status, "status_details": details, "output": output,
            "usage": self._usage()}}))
        return frames

    def _usage(self) -> dict[str, Any] | None:
        if self._prompt_tokens is None:
            return None
        output = len(self._text)
        return {"total_tokens": self._prompt_tokens + output, "input_tokens": self._prompt_tokens,
                "output_tokens": output,
                "input_token_details": {"text_tokens": self._prompt_tokens, "audio_tokens": 0, "cached_tokens": 0},
                "output_token_details": {"text_tokens": output, "audio_tokens": 0}}

    def error(self, fault: Fault) -> list[str]:
        """error_before and the refusals: an `error` event, no response (the session stays
        open, as for most Realtime errors); error_after:N: the `error` event, then the
        response ends `failed` with the same error in `status_details`."""
        type_, code, message = FAULT_ERRORS.get(fault.name, SERVER_ERROR)
        code = self._error_code or code
        message = f"{message} (mock fault {fault})"
        if fault.name != "error_after":
            return [error_event(type_, code, message)]
        return [*self._head(), error_event(type_, code, message),
                *self.end("failed", {"type": "failed", "error": {"type": type_, "code": code, "message": message}})]

    def malformed(self) -> str:
        return '{"type":"' + f"{self._text_event}.delta" + '","event_id":"event_'
