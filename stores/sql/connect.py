"""From `[store] url` to a way of running transactions: the driver, pool, timeouts and SQLite pragmas each needs.

The store writes each transaction once, as a function of an SQLAlchemy Connection; how it
runs differs by database, and only here:

- PostgreSQL (asyncpg), through SQLAlchemy's asyncio API: `AsyncConnection.run_sync`
  runs the function on the event loop, each statement awaited on the network.
- SQLite (the standard library's sqlite3, in one thread of its own): the whole function
  runs there, one hop from the event loop per transaction. Through aiosqlite each
  statement was a hop of its own: `begin_turn` (five statements with BEGIN and COMMIT)
  took 3.7 ms at the median against 1.7 ms in one hop (0.85 ms once its statements were
  built once, store.py), on this project's 2-core box.

Users write plain URLs (`sqlite:///matrix.db`, `postgresql://…`); the drivers are chosen
here, so a URL reads the same as for any other tool.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Protocol, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from matrix.config import StoreConfig
from matrix.errors import ConfigError

DRIVERS = {"sqlite": "sqlite+pysqlite", "postgresql": "postgresql+asyncpg"}
T = TypeVar("T")


class Transactions(Protocol):
    url: URL

    async def run(self, body: Callable[..., T], *args) -> T:
        """`body(connection, *args)` in one transaction: committed if it returns, rolled back if it raises."""

    async def dispose(self) -> None: ...


def parse(config: StoreConfig) -> URL:
    try:
        url = make_url(config.url.get_secret_value())
    except (ArgumentError, ValueError):  # its text quotes the URL, password included
        raise ConfigError("store.url is not a valid database URL") from None
    return url  # its scheme is one of DRIVERS: StoreConfig checked it


def where(url: URL) -> str:
    """The database, for messages and logs: never the password."""
    if url.drivername.startswith("sqlite"):
        return f"sqlite {url.database}"
    return f"postgresql {url.host or url.query.get('host', '')}:{url.port or 5432}/{url.database or ''}"


def transactions(config: StoreConfig) -> Transactions:
    """Connects lazily (at the first transaction): creating it never blocks nor fails on the network."""
    url = parse(config)
    if url.drivername == "sqlite":
        return InThread(_sqlite(url.set(drivername=DRIVERS["sqlite"]), config.timeout_s))
    return OnLoop(_postgresql(url, config))


class OnLoop:
    """Transactions on the event loop, through SQLAlchemy's asyncio API (PostgreSQL)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine, self.url = engine, engine.url

    async def run(self, body: Callable[..., T], *args) -> T:
        async with self.engine.begin() as conn:
            return await conn.run_sync(body, *args)

    async def dispose(self) -> None:
        await self.engine.dispose()


class InThread:
    """Transactions in one thread of their own, each one hop from the event loop (SQLite)."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.url = engine, engine.url
        self._thread: ThreadPoolExecutor | None = None

    async def run(self, body: Callable[..., T], *args) -> T:
        if self._thread is None:  # one thread, one connection: this process's transactions take turns in order
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="matrix-sqlite")
        # A caller cancelled meanwhile stops waiting; the transaction still ends, committed or not.
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._transaction, body, args)

    def _transaction(self, body: Callable[..., T], args: tuple) -> T:
        with self.engine.begin() as conn:
            return body(conn, *args)

    async def dispose(self) -> None:
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self.engine.dispose)
            self._thread.shutdown(wait=False)
            self._thread = None


def _postgresql(url: URL, config: StoreConfig) -> AsyncEngine:
    # No pool_pre_ping: asyncpg's ping is three round trips (BEGIN, ;, ROLLBACK) per call, 1.2 ms
    # of the hot path here. A connection found dead is a disconnect error, which makes SQLAlchemy
    # drop every pooled connection: after a server restart, at most the first call fails (503,
    # retryable) and the next connects afresh.
    return create_async_engine(
        url.set(drivername=DRIVERS["postgresql"]),
        # Bounded waits by phase: connect, each statement (the server answers or we give up),
        # and a free pooled connection. A stopped server refuses at once; a lost one times out.
        connect_args={"timeout": config.timeout_s, "command_timeout": config.timeout_s,
                      "server_settings": {"application_name": "transport-matrix"}},
        pool_timeout=config.timeout_s)


def _sqlite(url: URL, timeout_s: float) -> Engine:
    # One connection, used by one thread: this process's transactions queue in order instead
    # of spinning in SQLite's busy handler (which sleeps up to 100 ms a try); other processes
    # on the same file wait up to the busy timeout (`timeout`) for the write lock. No reset on
    # return: every use is an `engine.begin()` block, which has committed or rolled back already.
    engine = create_engine(url, connect_args={"timeout": timeout_s, "check_same_thread": False}, pool_size=1,
                           max_overflow=0, pool_timeout=timeout_s, pool_reset_on_return=None)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:
        # WAL: readers never block the writer nor the writer them; synchronous=NORMAL is
        # durable across a crash of the relay (a power cut may lose the last commits, never
        # corrupt). foreign_keys: a deleted conversation takes its messages (ON DELETE CASCADE).
        # isolation_level None hands BEGIN to us (below): sqlite3's own skips it for SELECT.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        # IMMEDIATE takes the write lock at BEGIN. A deferred transaction that reads and then
        # writes (open's schema check, relays starting together) fails at once with SQLITE_BUSY
        # when another process wrote in between; this one waits up to the busy timeout instead.
        # The price: reads in several processes take turns too, each a short transaction.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
