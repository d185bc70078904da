"""From `[store] url` to an SQLAlchemy AsyncEngine: the driver, pool, timeouts and SQLite pragmas each database needs.

Users write plain URLs (`sqlite:///matrix.db`, `postgresql://…`); the asyncio drivers
(aiosqlite, asyncpg) are chosen here, so a URL reads the same as for any other tool.
"""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from matrix.config import StoreConfig
from matrix.errors import ConfigError

DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


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


def engine(config: StoreConfig) -> AsyncEngine:
    """An engine that connects lazily (at the first transaction): creating it never blocks nor fails on the network."""
    url = parse(config)
    if url.drivername == "sqlite":
        return _sqlite(url.set(drivername=DRIVERS["sqlite"]), config.timeout_s)
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


def _sqlite(url: URL, timeout_s: float) -> AsyncEngine:
    # One connection: this process's transactions queue in asyncio instead of spinning in
    # SQLite's busy handler (which sleeps up to 100 ms a try); other processes on the same
    # file wait up to the busy timeout (`timeout`) for the write lock. No reset on return:
    # every use is an `engine.begin()` block, which has committed or rolled back already, and
    # the pool's ROLLBACK would cost a trip to aiosqlite's thread per call.
    engine = create_async_engine(url, connect_args={"timeout": timeout_s}, pool_size=1, max_overflow=0,
                                 pool_timeout=timeout_s, pool_reset_on_return=None)

    @event.listens_for(engine.sync_engine, "connect")
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

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn) -> None:
        # IMMEDIATE takes the write lock at BEGIN. A deferred transaction that reads and then
        # writes (open's schema check, relays starting together) fails at once with SQLITE_BUSY
        # when another process wrote in between; this one waits up to the busy timeout instead.
        # The price: reads in several processes take turns too, each a short transaction.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
