"""The store seam: where conversations are kept, what a store returns, and the checks every store shares.

A conversation is one owner's messages in order: each user message, saved before the
provider is called, and each assistant message, saved once when its stream ends, however
it ends. The relay calls a store twice per stream (`begin_turn`, `finish_turn`), never per
token. `stores/` holds the implementation (stores/sql: SQLite or PostgreSQL through
SQLAlchemy); the core knows only this interface and imports no database library.

Ownership is equality of owner ids (matrix/identity.py): with keys a conversation belongs
to the key (or named client) that started it; without keys to the `ip:ADDRESS` that did.
Another owner's conversation is `403 forbidden`, an unknown one `404 conversation_not_found`.

What clients send (conversation ids, titles, cursors, page sizes, text) is checked here,
without I/O, so that every store refuses the same input with the same code.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from .errors import RequestError, StoreUnavailable
from .request import Message

__all__ = ["Store", "StoreUnavailable", "Conversation", "StoredMessage", "Transcript", "Turn"]

# Ids travel in URL paths (`/v1/conversations/{id}`), JSON and logs: no dot (a `..` segment
# is rewritten by clients and proxies), slash, colon, space or anything to escape.
CONVERSATION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_CONVERSATION_ID = re.compile(CONVERSATION_ID_PATTERN)
TITLE_MAX_CHARS = 200
PAGE_DEFAULT = 20
PAGE_MAX = 100
UNTITLED = "New conversation"
_CURSOR = re.compile(r"^[A-Za-z0-9_-]{4,128}$")
_CURSOR_KEY = re.compile(r"^(\d{1,19})\.([A-Za-z0-9_-]{1,64})$")


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One saved message. The assistant's carry how their stream went; the user's leave those None."""

    id: int  # rises in the order messages were saved
    role: str  # "user" or "assistant"
    text: str
    created_at: datetime  # UTC
    status: str | None = None  # the finish reason (`stop`, `length`...), `cancelled`, or the error code
    usage: Mapping[str, int] | None = None
    ttft_ms: float | None = None
    duration_ms: float | None = None
    upstream: str | None = None
    combo: str | None = None
    stream_id: str | None = None


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    owner: str
    title: str
    system: str | None  # the system message sent before the history, if the client gave one
    created_at: datetime  # UTC
    updated_at: datetime  # UTC: when its last message was saved (a rename does not move it)


@dataclass(frozen=True, slots=True)
class Transcript:
    conversation: Conversation
    messages: tuple[StoredMessage, ...]  # oldest first


@dataclass(frozen=True, slots=True)
class Turn:
    """What `begin_turn` saved and what the provider is to receive."""

    conversation_id: str
    message_id: int  # the user message just saved
    history: tuple[Message, ...]  # the system message if any, the last stored messages, then the new one
    created: bool  # the conversation was started by this turn


class Store(Protocol):
    async def open(self) -> None:
        """Connect and create or upgrade the schema; StoreUnavailable (or ConfigError) says why not in one line."""

    async def aclose(self) -> None: ...

    def ready(self) -> str | None:
        """None while the last call reached the database, else why not (for /readyz)."""

    async def begin_turn(self, owner: str, conversation_id: str | None, user_text: str, *,
                         system: str | None = None) -> Turn:
        """In one transaction: start the conversation (None: a new id; a new id of the client's
        choosing is allowed too) or continue `owner`'s, save the user message, and return the
        history to send: `system` (which replaces the conversation's when given), the last
        `[store] history_messages` stored messages (assistant ones with no text left out), and
        the new message. A new conversation's title is the start of `user_text`."""

    async def finish_turn(self, conversation_id: str, stream_id: str, text: str, status: str, *,
                          usage: Mapping[str, int] | None = None, ttft_ms: float | None = None,
                          duration_ms: float | None = None, upstream: str | None = None,
                          combo: str | None = None) -> bool:
        """Save a stream's assistant message, once per `stream_id` whoever calls and however
        often (a unique constraint, not a check): True if this call saved it, False if it was
        saved before or the conversation is gone. `text` is what the client was shown."""

    async def list_conversations(self, owner: str, limit: int = PAGE_DEFAULT,
                                 cursor: str | None = None) -> tuple[list[Conversation], str | None]:
        """`owner`'s conversations, last updated first, and the cursor of the next page (None: no more)."""

    async def get_conversation(self, owner: str, conversation_id: str) -> Transcript: ...

    async def rename(self, owner: str, conversation_id: str, title: str) -> Conversation: ...

    async def delete(self, owner: str, conversation_id: str) -> None:
        """The conversation and all its messages."""


# -- the checks every store applies, before any I/O ------------------------------------------


def check_conversation_id(value: object) -> str:
    if not isinstance(value, str) or not _CONVERSATION_ID.fullmatch(value):
        raise RequestError("conversation_id must be 1-64 of A-Z a-z 0-9 _ -", code="invalid_conversation_id",
                           param="conversation_id")
    return value


def check_title(value: object) -> str:
    """A title a person typed: one line, trimmed, 1 to TITLE_MAX_CHARS characters."""
    if not isinstance(value, str):
        raise RequestError("title must be a string", param="title")
    title = value.strip()
    if not title or len(title) > TITLE_MAX_CHARS:
        raise RequestError(f"title must be 1-{TITLE_MAX_CHARS} characters", param="title")
    if not all(ch.isprintable() for ch in title) or not _utf8(title):
        raise RequestError("title must be one line of printable text", param="title")
    return title


def check_limit(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= PAGE_MAX:
        raise RequestError(f"limit must be an integer from 1 to {PAGE_MAX}", param="limit")
    return value


def check_text(value: object, param: str) -> str:
    """Text a client sent, to be stored as is: PostgreSQL's text cannot hold NUL, UTF-8 no lone surrogate."""
    if not isinstance(value, str):
        raise RequestError(f"{param} must be a string", param=param)
    if "\x00" in value or not _utf8(value):
        raise RequestError(f"{param} holds a NUL character or an unpaired surrogate", param=param)
    return value


def storable(text: str) -> str:
    """An answer to save whatever it holds: the two things no database column takes become U+FFFD."""
    if "\x00" in text or not _utf8(text):
        return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    return text


def default_title(text: str, chars: int) -> str:
    """The start of the first message on one line, cut at `chars` with an ellipsis."""
    line = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    if len(line) > chars:
        line = line[:max(chars - 1, 1)].rstrip() + "…"
    return line or UNTITLED


def encode_cursor(updated_us: int, conversation_id: str) -> str:
    """An opaque page cursor: the last item's sort key (update time in µs, then id), base64url."""
    return base64.urlsafe_b64encode(f"{updated_us}.{conversation_id}".encode()).rstrip(b"=").decode()


def decode_cursor(cursor: object) -> tuple[int, str]:
    """The sort key a cursor from `encode_cursor` holds; anything else is `400 invalid_cursor`."""
    bad = RequestError("cursor is not one this relay gave out", code="invalid_cursor", param="cursor")
    if not isinstance(cursor, str) or not _CURSOR.fullmatch(cursor):
        raise bad
    try:
        key = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise bad from None
    if not (match := _CURSOR_KEY.fullmatch(key)):
        raise bad
    return int(match.group(1)), match.group(2)


def check_owner(owner: str, caller: str, conversation_id: str) -> None:
    if owner != caller:
        raise RequestError(f"conversation {conversation_id!r} belongs to another client", code="forbidden",
                           status=403, param="conversation_id")


def not_found(conversation_id: str) -> RequestError:
    return RequestError(f"conversation {conversation_id!r} does not exist", code="conversation_not_found",
                        status=404, param="conversation_id")


def history(system: str | None, earlier: Sequence[tuple[str, str]], user_text: str) -> tuple[Message, ...]:
    """The provider's messages for a turn: the system message, the earlier (role, text), the new one.

    Built without validation: the stored text was checked when it came in, and an answer may
    be longer than a request's message may be.
    """
    messages = [Message.model_construct(role="system", content=system)] if system else []
    messages += [Message.model_construct(role=role, content=text) for role, text in earlier]
    messages.append(Message.model_construct(role="user", content=user_text))
    return tuple(messages)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
