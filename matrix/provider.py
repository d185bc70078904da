"""The upstream seam: what a provider transport hands the relay.

`Upstream.open(chat, tap)` is an async context manager that connects (handshake included)
and yields an async iterator of batches of items, one batch per network read (SSE) or
message (WebSocket) that carried any: a `str` is a piece of answer text, a `Finish`
ends the answer. The relay tells readers once per batch, so the pieces of one read reach
a client in one write. Provider failures raise `UpstreamError`; leaving the context closes the
provider connection on every exit path. `tap`, when given, is called with ("out", frame)
for what is sent and ("in", raw) for what is received, for tracing.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Protocol, Sequence, Union

from .request import ChatRequest


@dataclass(frozen=True, slots=True)
class Finish:
    reason: str = "stop"
    usage: dict[str, int] | None = None


Item = Union[str, Finish]
Tap = Callable[[str, str], None]


class Upstream(Protocol):
    name: str
    kind: str
    transport: str  # "sse" or "ws"
    network: dict  # for `GET /v1/upstreams`: TLS settings and the proxy in use, no credentials

    def open(self, chat: ChatRequest,
             tap: Tap | None = None) -> AbstractAsyncContextManager[AsyncIterator[Sequence[Item]]]: ...

    async def aclose(self) -> None: ...
