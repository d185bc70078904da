"""SqlStore: conversations in SQLite or PostgreSQL, each call one short transaction, database errors mapped once.

Every method is one transaction through `_transaction`, the only place that sees a
database error: whatever the driver raises (refused, reset, timed out, locked) leaves as
one StoreUnavailable naming the database and the cause, never the SQL nor its values.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy import Row, and_, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from matrix.config import StoreConfig
from matrix.errors import StoreUnavailable
from matrix.logs import event as log_event
from matrix.store import (PAGE_DEFAULT, Conversation, StoredMessage, Transcript, Turn, check_conversation_id,
                          check_limit, check_owner, check_text, check_title, decode_cursor, default_title,
                          encode_cursor, history, not_found, storable)

from . import connect, schema
from .schema import conversations as C, messages as M

log = logging.getLogger("matrix.store")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INSERT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}  # both know ON CONFLICT DO NOTHING


class SqlStore:
    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._engine = connect.engine(self.config)
        self._where = connect.where(self._engine.url)
        self._insert = _INSERT[self._engine.dialect.name]
        self._down: str | None = "the store is not open yet"

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        async with self._transaction() as conn:
            found = await conn.run_sync(schema.migrate)
        log_event(log, "store schema", where=self._where, found=found, version=schema.SCHEMA_VERSION)

    async def aclose(self) -> None:
        await self._engine.dispose()
        self._down = "the store is closed"

    def ready(self) -> str | None:
        return self._down

    # -- the two calls of a stream ------------------------------------------------------------

    async def begin_turn(self, owner: str, conversation_id: str | None, user_text: str, *,
                         system: str | None = None) -> Turn:
        cid = uuid.uuid4().hex if conversation_id is None else check_conversation_id(conversation_id)
        user_text = check_text(user_text, "messages")
        if system is not None:
            system = check_text(system, "system")
        now = _now_us()
        changes: dict[str, Any] = {"updated_us": now} if system is None else {"updated_us": now, "system": system}
        async with self._transaction() as conn:
            found = None if conversation_id is None else await self._touch(conn, owner, cid, changes)
            if found is None:
                # A new id, ours or a client's. Two clients starting the same new id at once
                # race safely: one inserts it, the other finds it taken.
                created = await conn.scalar(self._insert(C).values(
                    id=cid, owner=owner, title=default_title(user_text, self.config.title_chars), system=system,
                    created_us=now, updated_us=now).on_conflict_do_nothing(index_elements=[C.c.id]).returning(C.c.id))
                if created is None and (found := await self._touch(conn, owner, cid, changes)) is None:
                    await self._refuse(conn, owner, cid)
            earlier: list[tuple[str, str]] = []
            if found is not None:
                system = found.system
                earlier = await self._earlier(conn, cid)
            message_id = await conn.scalar(M.insert().values(
                conversation_id=cid, role="user", text=user_text, created_us=now).returning(M.c.id))
        return Turn(cid, message_id, history(system, earlier, user_text), found is None)

    async def finish_turn(self, conversation_id: str, stream_id: str, text: str, status: str, *,
                          usage: Mapping[str, int] | None = None, ttft_ms: float | None = None,
                          duration_ms: float | None = None, upstream: str | None = None,
                          combo: str | None = None) -> bool:
        now = _now_us()
        async with self._transaction() as conn:
            # The update first: it finds a deleted conversation (nothing to save into), and on
            # PostgreSQL it locks the row, so a delete cannot slip in before the insert.
            bumped = await conn.execute(update(C).where(C.c.id == conversation_id).values(updated_us=now))
            if bumped.rowcount != 1:
                return False
            saved = await conn.scalar(self._insert(M).values(
                conversation_id=conversation_id, role="assistant", text=storable(text), stream_id=stream_id,
                status=status, usage=dict(usage) if usage is not None else None, ttft_ms=ttft_ms,
                duration_ms=duration_ms, upstream=upstream, combo=combo, created_us=now,
            ).on_conflict_do_nothing(index_elements=[M.c.stream_id]).returning(M.c.id))
            if saved is None:  # saved before (or by a concurrent call): undo the bump as well
                await conn.rollback()
                return False
        return True

    # -- what the endpoints read and change ---------------------------------------------------

    async def list_conversations(self, owner: str, limit: int = PAGE_DEFAULT,
                                 cursor: str | None = None) -> tuple[list[Conversation], str | None]:
        limit = check_limit(limit)
        query = select(C).where(C.c.owner == owner)
        if cursor is not None:
            updated_us, after = decode_cursor(cursor)
            query = query.where(or_(C.c.updated_us < updated_us, and_(C.c.updated_us == updated_us, C.c.id < after)))
        query = query.order_by(C.c.updated_us.desc(), C.c.id.desc()).limit(limit + 1)  # one more: is there a next page?
        async with self._transaction() as conn:
            rows = (await conn.execute(query)).all()
        page = rows[:limit]
        following = encode_cursor(page[-1].updated_us, page[-1].id) if len(rows) > limit else None
        return [_conversation(row) for row in page], following

    async def get_conversation(self, owner: str, conversation_id: str) -> Transcript:
        cid = check_conversation_id(conversation_id)
        async with self._transaction() as conn:
            found = (await conn.execute(select(C).where(C.c.id == cid))).one_or_none()
            if found is None:
                raise not_found(cid)
            check_owner(found.owner, owner, cid)
            rows = (await conn.execute(select(M).where(M.c.conversation_id == cid).order_by(M.c.id))).all()
        return Transcript(_conversation(found), tuple(_message(row) for row in rows))

    async def rename(self, owner: str, conversation_id: str, title: str) -> Conversation:
        cid = check_conversation_id(conversation_id)
        title = check_title(title)
        async with self._transaction() as conn:
            renamed = (await conn.execute(update(C).where(C.c.id == cid, C.c.owner == owner).values(title=title)
                                          .returning(*C.c))).one_or_none()
            if renamed is None:
                await self._refuse(conn, owner, cid)
        return _conversation(renamed)

    async def delete(self, owner: str, conversation_id: str) -> None:
        cid = check_conversation_id(conversation_id)
        async with self._transaction() as conn:
            # Its messages go by ON DELETE CASCADE.
            if (await conn.execute(delete(C).where(C.c.id == cid, C.c.owner == owner))).rowcount != 1:
                await self._refuse(conn, owner, cid)

    # -- helpers ----------------------------------------------------------------------------

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """One transaction; the boundary where database errors become StoreUnavailable."""
        try:
            async with self._engine.begin() as conn:
                yield conn
        except (SQLAlchemyError, OSError) as exc:  # OSError: refused, reset, timed out (asyncpg raises them bare)
            if self._down is None:
                log_event(log, "store down", where=self._where, error=_cause(exc))
            self._down = f"store {self._where} is unavailable: {_cause(exc)}"
            raise StoreUnavailable(self._down) from exc
        if self._down is not None:
            log_event(log, "store up", where=self._where)
            self._down = None

    async def _touch(self, conn: AsyncConnection, owner: str, cid: str, changes: dict[str, Any]) -> Row | None:
        """Apply `changes` to `owner`'s conversation `cid`; its row after, or None if it is not `owner`'s or unknown."""
        return (await conn.execute(update(C).where(C.c.id == cid, C.c.owner == owner).values(**changes)
                                   .returning(C.c.system))).one_or_none()

    async def _refuse(self, conn: AsyncConnection, owner: str, cid: str) -> NoReturn:
        """Why a statement on `owner`'s `cid` matched nothing: it is another's (403), else unknown (404)."""
        check_owner(await conn.scalar(select(C.c.owner).where(C.c.id == cid)) or owner, owner, cid)
        raise not_found(cid)

    async def _earlier(self, conn: AsyncConnection, cid: str) -> list[tuple[str, str]]:
        """The last `history_messages` stored messages as (role, text), oldest first; answers with no text
        (failed before their first token) are left out: providers refuse an empty assistant message."""
        if self.config.history_messages == 0:
            return []
        rows = (await conn.execute(
            select(M.c.role, M.c.text).where(M.c.conversation_id == cid, or_(M.c.role == "user", M.c.text != ""))
            .order_by(M.c.id.desc()).limit(self.config.history_messages))).all()
        return [(row.role, row.text) for row in reversed(rows)]


def _now_us() -> int:
    return time.time_ns() // 1000


def _at(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _conversation(row: Row) -> Conversation:
    return Conversation(id=row.id, owner=row.owner, title=row.title, system=row.system,
                        created_at=_at(row.created_us), updated_at=_at(row.updated_us))


def _message(row: Row) -> StoredMessage:
    return StoredMessage(id=row.id, role=row.role, text=row.text, created_at=_at(row.created_us), status=row.status,
                         usage=row.usage, ttft_ms=row.ttft_ms, duration_ms=row.duration_ms, upstream=row.upstream,
                         combo=row.combo, stream_id=row.stream_id)


def _cause(exc: BaseException) -> str:
    """The driver's reason in one short line: never SQLAlchemy's text, which quotes the statement and its values."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    line = (str(cause).strip().splitlines() or [""])[0][:200]
    return f"{type(cause).__name__}: {line}" if line else type(cause).__name__
