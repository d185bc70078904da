"""SqlStore: conversations in SQLite or PostgreSQL, each call one short transaction, database errors mapped once.

Every method checks its input, then runs one transaction, written once as a function of
a Connection (`_begin_turn`, `_finish_turn`, …) and run by connect.py the way its database
runs best. `_run` is the only place that sees a database error: whatever the driver raises
(refused, reset, timed out, locked) leaves as one StoreUnavailable naming the database and
the cause, never the SQL nor its values.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

from sqlalchemy import Connection, Row, and_, bindparam, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

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
T = TypeVar("T")


class _Unchanged(Exception):
    """Raised inside a transaction to roll it back and return False."""


class _Statements:
    """A stream's two transactions' statements, built once per store. Built per call, their
    construction and cache keys were half of `begin_turn`'s Python time; now SQLAlchemy looks
    the compiled form up by the statement alone. Values come as parameters: an INSERT or
    UPDATE sets the columns its parameters name, a WHERE names its `w_` parameters."""

    def __init__(self, insert, history_messages: int) -> None:
        owned = and_(C.c.id == bindparam("w_id"), C.c.owner == bindparam("w_owner"))
        self.touch = update(C).where(owned).returning(C.c.system)
        self.create = insert(C).on_conflict_do_nothing(index_elements=[C.c.id]).returning(C.c.id)
        self.earlier = (select(M.c.role, M.c.text)
                        .where(M.c.conversation_id == bindparam("w_id"), or_(M.c.role == "user", M.c.text != ""))
                        .order_by(M.c.id.desc()).limit(history_messages))
        self.add = M.insert().returning(M.c.id)
        self.bump = update(C).where(C.c.id == bindparam("w_id"))
        self.answer = insert(M).on_conflict_do_nothing(index_elements=[M.c.stream_id]).returning(M.c.id)


class SqlStore:
    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._transactions = connect.transactions(self.config)
        self._where = connect.where(self._transactions.url)
        self._insert = _INSERT[self._transactions.url.get_backend_name()]
        self._sql = _Statements(self._insert, config.history_messages)
        self._down: str | None = "the store is not open yet"

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        found = await self._run(schema.migrate)
        log_event(log, "store schema", where=self._where, found=found, version=schema.SCHEMA_VERSION)

    async def aclose(self) -> None:
        await self._transactions.dispose()
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
        return await self._run(self._begin_turn, owner, cid, conversation_id is None, user_text, system)

    def _begin_turn(self, conn: Connection, owner: str, cid: str, new: bool, user_text: str,
                    system: str | None) -> Turn:
        sql, now = self._sql, _now_us()
        touch: dict[str, Any] = {"w_id": cid, "w_owner": owner, "updated_us": now}
        if system is not None:
            touch["system"] = system
        found = None if new else conn.execute(sql.touch, touch).one_or_none()
        if found is None:
            # A new id, ours or a client's. Two clients starting the same new id at once
            # race safely: one inserts it, the other finds it taken.
            created = conn.scalar(sql.create, {
                "id": cid, "owner": owner, "title": default_title(user_text, self.config.title_chars),
                "system": system, "created_us": now, "updated_us": now})
            if created is None and (found := conn.execute(sql.touch, touch).one_or_none()) is None:
                self._refuse(conn, owner, cid)
        earlier: list[tuple[str, str]] = []
        if found is not None:
            system = found.system
            earlier = self._earlier(conn, cid)
        message_id = conn.scalar(sql.add, {"conversation_id": cid, "role": "user", "text": user_text,
                                           "created_us": now})
        return Turn(cid, message_id, history(system, earlier, user_text), found is None)

    async def finish_turn(self, conversation_id: str, stream_id: str, text: str, status: str, *,
                          usage: Mapping[str, int] | None = None, ttft_ms: float | None = None,
                          duration_ms: float | None = None, upstream: str | None = None,
                          combo: str | None = None) -> bool:
        values = dict(conversation_id=conversation_id, role="assistant", text=storable(text), stream_id=stream_id,
                      status=status, usage=dict(usage) if usage is not None else None, ttft_ms=ttft_ms,
                      duration_ms=duration_ms, upstream=upstream, combo=combo)
        try:
            await self._run(self._finish_turn, values)
        except _Unchanged:
            return False
        return True

    def _finish_turn(self, conn: Connection, values: dict[str, Any]) -> None:
        now = _now_us()
        # The update first: it finds a deleted conversation (nothing to save into), and on
        # PostgreSQL it locks the row, so a delete cannot slip in before the insert.
        if conn.execute(self._sql.bump, {"w_id": values["conversation_id"], "updated_us": now}).rowcount != 1:
            raise _Unchanged
        saved = conn.scalar(self._sql.answer, {**values, "created_us": now})
        if saved is None:  # saved before (or by a concurrent call): roll the bump back as well
            raise _Unchanged

    # -- what the endpoints read and change ---------------------------------------------------

    async def list_conversations(self, owner: str, limit: int = PAGE_DEFAULT,
                                 cursor: str | None = None) -> tuple[list[Conversation], str | None]:
        limit = check_limit(limit)
        query = select(C).where(C.c.owner == owner)
        if cursor is not None:
            updated_us, after = decode_cursor(cursor)
            query = query.where(or_(C.c.updated_us < updated_us, and_(C.c.updated_us == updated_us, C.c.id < after)))
        query = query.order_by(C.c.updated_us.desc(), C.c.id.desc()).limit(limit + 1)  # one more: is there a next page?
        rows = await self._run(lambda conn: conn.execute(query).all())
        page = rows[:limit]
        following = encode_cursor(page[-1].updated_us, page[-1].id) if len(rows) > limit else None
        return [_conversation(row) for row in page], following

    async def get_conversation(self, owner: str, conversation_id: str) -> Transcript:
        cid = check_conversation_id(conversation_id)

        def read(conn: Connection) -> Transcript:
            found = conn.execute(select(C).where(C.c.id == cid)).one_or_none()
            if found is None:
                raise not_found(cid)
            check_owner(found.owner, owner, cid)
            rows = conn.execute(select(M).where(M.c.conversation_id == cid).order_by(M.c.id)).all()
            return Transcript(_conversation(found), tuple(_message(row) for row in rows))
        return await self._run(read)

    async def rename(self, owner: str, conversation_id: str, title: str) -> Conversation:
        cid = check_conversation_id(conversation_id)
        title = check_title(title)

        def rename(conn: Connection) -> Conversation:
            renamed = conn.execute(update(C).where(C.c.id == cid, C.c.owner == owner).values(title=title)
                                   .returning(*C.c)).one_or_none()
            if renamed is None:
                self._refuse(conn, owner, cid)
            return _conversation(renamed)
        return await self._run(rename)

    async def delete(self, owner: str, conversation_id: str) -> None:
        cid = check_conversation_id(conversation_id)

        def remove(conn: Connection) -> None:
            # Its messages go by ON DELETE CASCADE.
            if conn.execute(delete(C).where(C.c.id == cid, C.c.owner == owner)).rowcount != 1:
                self._refuse(conn, owner, cid)
        await self._run(remove)

    # -- helpers ----------------------------------------------------------------------------

    async def _run(self, body: Callable[..., T], *args) -> T:
        """`body(connection, *args)` in one transaction; the boundary where database errors become StoreUnavailable."""
        try:
            result = await self._transactions.run(body, *args)
        except (SQLAlchemyError, OSError) as exc:  # OSError: refused, reset, timed out (asyncpg raises them bare)
            if self._down is None:
                log_event(log, "store down", where=self._where, error=_cause(exc))
            self._down = f"store {self._where} is unavailable: {_cause(exc)}"
            raise StoreUnavailable(self._down) from exc
        if self._down is not None:
            log_event(log, "store up", where=self._where)
            self._down = None
        return result

    @staticmethod
    def _refuse(conn: Connection, owner: str, cid: str) -> NoReturn:
        """Why a statement on `owner`'s `cid` matched nothing: it is another's (403), else unknown (404)."""
        check_owner(conn.scalar(select(C.c.owner).where(C.c.id == cid)) or owner, owner, cid)
        raise not_found(cid)

    def _earlier(self, conn: Connection, cid: str) -> list[tuple[str, str]]:
        """The last `history_messages` stored messages as (role, text), oldest first; answers with no text
        (failed before their first token) are left out: providers refuse an empty assistant message."""
        if self.config.history_messages == 0:
            return []
        rows = conn.execute(self._sql.earlier, {"w_id": cid}).all()
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
