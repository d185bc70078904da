"""The conversation store on SQLite (embedded, the default) or PostgreSQL (many relays), one SQLAlchemy Core implementation."""

from .store import SqlStore

__all__ = ["SqlStore"]
