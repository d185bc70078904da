"""The events a client sees, identical on SSE and WebSocket: start, delta, done, error (and trace)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

import orjson

DoneReason = Literal["stop", "length", "content_filter", "tool_calls", "cancelled"]


@dataclass(frozen=True, slots=True)
class Start:
    stream_id: str
    seq: int
    upstream: str
    combo: str
    type: Literal["start"] = field(default="start", init=False)


@dataclass(frozen=True, slots=True)
class Delta:
    stream_id: str
    seq: int
    text: str
    type: Literal["delta"] = field(default="delta", init=False)


@dataclass(frozen=True, slots=True)
class Done:
    stream_id: str
    seq: int
    reason: DoneReason
    usage: dict[str, int] | None = None
    type: Literal["done"] = field(default="done", init=False)


@dataclass(frozen=True, slots=True)
class Error:
    stream_id: str
    seq: int
    code: str
    message: str
    retryable: bool = False
    upstream_code: str | None = None
    type: Literal["error"] = field(default="error", init=False)


@dataclass(frozen=True, slots=True)
class Trace:
    """A raw provider frame, for learners (`"trace": true` in the request): `dir` is in or out."""

    stream_id: str
    seq: int
    dir: Literal["in", "out"]
    data: str
    type: Literal["trace"] = field(default="trace", init=False)


Event = Union[Start, Delta, Done, Error, Trace]
TERMINAL = (Done, Error)


def encode(event: Event) -> bytes:
    """The event's JSON object, `type` first, omitting unset optional fields."""
    if type(event) is Delta:  # the hot path: one per token
        return orjson.dumps(
            {"type": "delta", "stream_id": event.stream_id, "seq": event.seq, "text": event.text}
        )
    body = {"type": event.type}
    for name in event.__slots__:
        value = getattr(event, name)
        if name != "type" and value is not None:
            body[name] = value
    return orjson.dumps(body)


def decode(data: str | bytes) -> Event:
    """Parse an event object (as clients and tests receive it) back into its class."""
    body = orjson.loads(data)
    kind = body.pop("type")
    return _CLASSES[kind](**body)


_CLASSES = {"start": Start, "delta": Delta, "done": Done, "error": Error, "trace": Trace}
