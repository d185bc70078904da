"""The store's tables and their versions: created on a new database, upgraded step by step on an old one.

Why a version table and ordered steps rather than Alembic: two tables, upgraded by the
relay itself at start-up on whichever database it finds, with no migration tool or
directory to ship and run beside it. The tables below are always the current schema:

- a new database gets them at once, stamped SCHEMA_VERSION;
- a database at version v < SCHEMA_VERSION runs MIGRATIONS[v + 1] … MIGRATIONS[SCHEMA_VERSION],
  each the change from one version to the next (`ALTER TABLE …`), and is stamped as it goes;
- a database newer than this relay refuses to open: an old relay must not write to it.

A change to the tables therefore comes with SCHEMA_VERSION + 1 and its MIGRATIONS step.
All of it runs in one transaction, under a lock, so relays starting together upgrade once.
"""

from __future__ import annotations

from typing import Callable

from sqlalchemy import (JSON, BigInteger, Column, Connection, Float, ForeignKey, Index, Integer, MetaData, Table,
                        Text, UniqueConstraint, func, insert, inspect, select, update)

from matrix.errors import ConfigError

metadata = MetaData()

conversations = Table(
    "conversations", metadata,
    Column("id", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("system", Text),
    # Times in µs since the epoch, UTC: exact on both databases, and the page cursor's key.
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Index("conversations_by_owner", "owner", "updated_us", "id"),  # the listing, newest first
)

messages = Table(
    "messages", metadata,
    # SQLite: INTEGER PRIMARY KEY is the rowid (BIGINT would not be); both rise as rows are saved.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("conversation_id", Text, ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False),
    Column("role", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("stream_id", Text),  # assistant messages: the stream that answered; NULL for the user's
    Column("status", Text),
    Column("usage", JSON(none_as_null=True)),
    Column("ttft_ms", Float),
    Column("duration_ms", Float),
    Column("upstream", Text),
    Column("combo", Text),
    Column("created_us", BigInteger, nullable=False),
    # Exactly once: a stream's answer is one row, whoever saves it and however often.
    UniqueConstraint("stream_id", name="messages_one_per_stream"),
    Index("messages_by_conversation", "conversation_id", "id"),
)

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

SCHEMA_VERSION = 1
MIGRATIONS: dict[int, Callable[[Connection], None]] = {}  # version -> the step from version - 1 (none yet)
_LOCK = 0x6D617472  # the advisory lock PostgreSQL relays take while they check or upgrade the schema


def migrate(conn: Connection) -> int:
    """Bring the database to SCHEMA_VERSION inside the caller's transaction; returns the version found (0: new)."""
    if conn.dialect.name == "postgresql":  # SQLite's BEGIN IMMEDIATE already holds the write lock
        conn.execute(select(func.pg_advisory_xact_lock(_LOCK)))
    if not inspect(conn).has_table("schema_version"):
        metadata.create_all(conn)
        conn.execute(insert(schema_version).values(version=SCHEMA_VERSION))
        return 0
    found = conn.execute(select(func.max(schema_version.c.version))).scalar_one()
    if found is None:
        raise ConfigError("the store's database has an empty schema_version table: it is not one this relay made")
    if found > SCHEMA_VERSION:
        raise ConfigError(f"the store's schema is version {found}, newer than this relay's {SCHEMA_VERSION}: "
                          "upgrade the relay")
    for version in range(found + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[version](conn)
        conn.execute(update(schema_version).values(version=version))
    return found

