"""Play a Script over a channel in a vendor's dialect: timing, tokens, and the scripted fault.

The three vendors differ only in their frames (a Dialect) and their transport (a
Channel); the timing and fault logic lives here once.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from .script import Fault, Script
from .stats import Connection

Frame = str | bytes  # str: a WebSocket text frame; bytes: SSE wire bytes


@dataclass(frozen=True)
class Ask:
    """What one vendor request asks for, in the terms the dialects need."""

    text: str                       # the last user message, `#mock` line included
    context: str = ""               # every message's text, for the prompt token count
    max_tokens: int | None = None
    stream: bool = True
    include_usage: bool = False
    model: str = ""
    thread_id: str = ""
    messages: tuple[tuple[str, str], ...] = ()  # (role, text) as the request listed them, for stats

    @property
    def prompt_tokens(self) -> int:
        # One "token" per code point: cheap, deterministic, and plausible for CJK text.
        return len(self.context)


def text_of(content: Any, types: tuple[str, ...] = ("text",)) -> str:
    """A message's text: a string, or the `text` of its content parts whose `type` is in `types`."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") in types)
    return ""


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def plan(script: Script, ask: Ask) -> tuple[list[str], str]:
    """The tokens to send and the finish reason: `max_tokens` cuts the answer, as vendors do."""
    tokens = script.answer_tokens()
    if ask.max_tokens is not None and len(tokens) > ask.max_tokens:
        return tokens[:ask.max_tokens], "length"
    return tokens, script.finish


class ClientGone(ConnectionError):
    """The client closed its connection; a ConnectionError so every layer treats it as one."""


class Dialect(Protocol):
    """One vendor's frames for one answer; stateful (ids, seq) and free of I/O."""

    ping: Frame | None         # keep-alive frame, or None if the vendor sends none
    ping_every_tokens: int     # also send `ping` after every this many tokens; 0 = never
    ping_every_s: float        # and during any wait longer than this

    def token(self, text: str, *, last: bool) -> list[Frame]: ...
    def finish(self) -> list[Frame]: ...
    def error(self, fault: Fault) -> list[Frame]: ...
    def malformed(self) -> Frame: ...


class Channel:
    """Where a player writes frames. Every wait ends early, raising the stop reason, once
    `stop()` was called: by a reader task that saw the client leave, or by the watchdog."""

    def __init__(self, request: web.BaseRequest) -> None:
        self._request = request
        self._stopped: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()

    def stop(self, reason: Exception) -> None:
        if not self._stopped.done():
            self._stopped.set_result(reason)

    def clear(self) -> None:
        """Forget a stop that ended only the current answer (a cancelled response), so the
        connection can serve the next one; a client that left stays left."""
        if self._stopped.done() and not isinstance(self._stopped.result(), ClientGone):
            self._stopped = asyncio.get_running_loop().create_future()

    def check(self) -> None:
        if self._stopped.done():
            raise self._stopped.result()

    async def wait(self, seconds: float, dialect: Dialect | None = None) -> None:
        """Sleep, sending the dialect's keep-alive every `ping_every_s` of the sleep."""
        deadline = time.monotonic() + seconds
        every = dialect.ping_every_s if dialect and dialect.ping else math.inf
        while True:
            self.check()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            done, _ = await asyncio.wait({self._stopped}, timeout=min(left, every))
            if not done and every < left:
                await self.send(dialect.ping)  # type: ignore[union-attr]

    async def stall(self) -> None:
        """Send nothing more; return only by raising once the client leaves."""
        raise await asyncio.shield(self._stopped)

    def abort(self) -> None:
        """Drop the TCP connection with no closing handshake (no close frame, no last chunk)."""
        if self._request.transport is not None:
            self._request.transport.abort()

    async def send(self, frame: Frame) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


async def play(script: Script, tokens: list[str], dialect: Dialect, channel: Channel,
               conn: Connection) -> None:
    """Stream `tokens` with the script's timing; end normally or by the script's fault.

    The outcome is recorded before the last frame's close or abort, because a client
    that reacts fast to the end may otherwise be seen leaving first.
    """
    fault = script.fault
    strike = min(fault.after, len(tokens)) if fault else None
    await channel.wait(script.first_token_ms / 1000, dialect)
    for index, text in enumerate(tokens):
        if index == strike:
            break
        if index:
            await channel.wait(script.interval_ms / 1000, dialect)
        if script.stamp:
            text = f"[{time.monotonic_ns()}]"
        # With a fault pending, no frame may claim to be the last one (Spark status 2).
        last = strike is None and index == len(tokens) - 1
        for frame in dialect.token(text, last=last):
            await channel.send(frame)
        conn.tokens_sent += 1
        if dialect.ping and dialect.ping_every_tokens and not last \
                and conn.tokens_sent % dialect.ping_every_tokens == 0:
            await channel.send(dialect.ping)
    if fault is None:
        for frame in dialect.finish():
            await channel.send(frame)
        conn.close("completed")
        await channel.close()
    else:
        await strike_fault(fault, dialect, channel, conn)


async def strike_fault(fault: Fault, dialect: Dialect, channel: Channel, conn: Connection) -> None:
    if fault.name == "stall_after":
        await channel.stall()
    elif fault.name == "drop_after":
        conn.close("fault")
        channel.abort()
    else:
        frames = [dialect.malformed()] if fault.name == "malformed_after" else dialect.error(fault)
        for frame in frames:
            await channel.send(frame)
        conn.close("fault")
        await channel.close()
