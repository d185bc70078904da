"""A stream's conversation: its turn begun before the provider is called, its answer saved once when it ends.

The relay calls `begin` when a request names `conversation_id` and `finish` when that
stream's pump ends, however it ends, before the terminal event goes out: a client that
sends its next message on `done` finds the answer in the history. Exactly once is the
store's (a unique stream id); here a save outlives a pump cancelled while it runs, and
`aclose` waits for saves in flight before the store closes. A stream whose relay was
killed is saved by the relay whose engine ends it (`lost`, Redis engine).

A store that cannot be reached at start-up does not stop the relay: requests without a
conversation stream as ever, requests with one are refused with 503 `store_unavailable`,
and the store is opened again at the first such request after `REOPEN_S`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from .errors import MatrixError, RequestError, ResumeGap, StoreUnavailable
from .events import Delta, Error
from .logs import event
from .request import ChatRequest
from .store import Store, Turn, check_conversation_id
from .stream import Stream

log = logging.getLogger("matrix.conversations")
REOPEN_S = 1.0  # between attempts to open a store that was down: a refusal stays cheap meanwhile


class Conversations:
    def __init__(self, store: Store, timeout_s: float, count: Callable[[str], None] = lambda result: None) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self._count = count  # an answer's save: saved, duplicate or failed (for /metrics)
        self._opened = False
        self._down: str | None = "the store is not open yet"
        self._next_try = 0.0
        self._opening = asyncio.Lock()
        self._saves: set[asyncio.Task] = set()

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """At start-up: a store that does not answer is logged, not fatal (a bad config still is)."""
        try:
            await self._open()
        except StoreUnavailable as exc:
            event(log, "store unavailable at start-up", error=exc.message)

    async def aclose(self) -> None:
        """After the pumps have ended: let the saves in flight finish (bounded), then close the store."""
        if self._saves:
            await asyncio.wait(self._saves, timeout=self.timeout_s * 2)
        await self.store.aclose()

    def ready(self) -> str | None:
        """None while conversations can start, else why not."""
        return self._down if not self._opened else self.store.ready()

    async def _open(self) -> None:
        async with self._opening:
            if self._opened:
                return
            self._next_try = time.monotonic() + REOPEN_S
            try:
                await self.store.open()
            except StoreUnavailable as exc:  # a ConfigError (bad URL, newer schema) goes up as it is
                self._down = exc.message
                raise
            self._opened, self._down = True, None

    async def opened(self) -> Store:
        """The store, opened now if start-up could not: StoreUnavailable while it does not answer."""
        if not self._opened:
            if time.monotonic() < self._next_try:  # tried a moment ago: refuse now rather than wait again
                raise StoreUnavailable(self._down or "the store is not open yet")
            await self._open()
        return self.store

    # -- a stream's two calls -------------------------------------------------------------

    async def begin(self, chat: ChatRequest, owner: str) -> tuple[ChatRequest, Turn]:
        """Save the new user message and return the request the provider gets: history, then the message."""
        cid = check_conversation_id(chat.conversation_id)
        system, user_text = new_messages(chat)
        turn = await (await self.opened()).begin_turn(owner, cid, user_text, system=system)
        return chat.model_copy(update={"messages": list(turn.history)}), turn

    async def finish(self, turn: Turn, stream: Stream, text: str, status: str, usage: dict[str, int] | None,
                     duration_ms: float) -> None:
        """Save the answer; a pump cancelled meanwhile stops waiting, the save does not stop."""
        ttft_ms = (round((stream.first_text_at - stream.started_at) * 1000, 1)
                   if stream.first_text_at is not None else None)
        await asyncio.shield(self._spawn(turn.conversation_id, stream, text, status, usage=usage, ttft_ms=ttft_ms,
                                         duration_ms=duration_ms))

    def lost(self, ended: Stream, conversation_id: str) -> None:
        """A stream that died with the relay running it (the engine ended it on another): save its log's text."""
        try:
            text = "".join(e.text for e in ended.read(-1) if type(e) is Delta)
        except ResumeGap:  # the log was trimmed: a partial copy would pass for the whole answer
            self._count("failed")
            event(log, "answer not saved", stream_id=ended.id, conversation_id=conversation_id, code="resume_gap")
            return
        end = ended.terminal
        self._spawn(conversation_id, ended, text, end.code if isinstance(end, Error) else getattr(end, "reason", ""))

    def _spawn(self, conversation_id: str, stream: Stream, text: str, status: str, **numbers) -> asyncio.Task:
        save = asyncio.get_running_loop().create_task(self._save(conversation_id, stream, text, status, **numbers))
        self._saves.add(save)  # held until done, and awaited by aclose
        save.add_done_callback(self._saves.discard)
        return save

    async def _save(self, conversation_id: str, stream: Stream, text: str, status: str, **numbers) -> None:
        try:
            saved = await self.store.finish_turn(conversation_id, stream.id, text, status,
                                                 upstream=stream.upstream, combo=stream.combo, **numbers)
        except MatrixError as exc:  # the answer was streamed; only its copy is lost, and said so
            self._count("failed")
            event(log, "answer not saved", stream_id=stream.id, conversation_id=conversation_id,
                  code=exc.code, error=exc.message)
            return
        self._count("saved" if saved else "duplicate")
        if not saved:  # already saved, or the conversation was deleted meanwhile
            event(log, "answer not saved twice", stream_id=stream.id, conversation_id=conversation_id)

    async def refused(self, turn: Turn, code: str) -> None:
        """The stream could not start after its user message was saved: the message's answer says why."""
        try:
            await self.store.finish_turn(turn.conversation_id, f"refused-{turn.message_id}", "", code)
        except MatrixError as exc:
            event(log, "answer not saved", conversation_id=turn.conversation_id, code=exc.code, error=exc.message)


def new_messages(chat: ChatRequest) -> tuple[str | None, str]:
    """(system, user text) of a request that continues a conversation: the relay keeps the rest."""
    messages = chat.messages
    system = messages[0].content if len(messages) == 2 and messages[0].role == "system" else None
    if messages[-1].role != "user" or len(messages) > 1 + (system is not None):
        raise RequestError("with conversation_id, send only the new user message (after at most one system "
                           "message): the relay keeps the history", code="invalid_request", param="messages")
    return system, messages[-1].content
