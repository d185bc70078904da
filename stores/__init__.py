"""Conversation stores beside the core's seam (matrix/store.py): `build` makes the one `[store] url` names."""

from __future__ import annotations

from matrix.config import Settings
from matrix.store import Store


def build(settings: Settings) -> Store:
    # Imported when built: the core and `matrix --help` need no SQLAlchemy. One implementation
    # serves both databases `[store] url` may name (sqlite:///, postgresql://).
    from .sql import SqlStore
    return SqlStore(settings.store)
