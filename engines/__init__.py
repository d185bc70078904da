"""Engines beside the core's memory engine (matrix/engine.py): `build` picks one from `[engine] kind`."""

from __future__ import annotations

from matrix.config import Settings
from matrix.engine import Engine, MemoryEngine


def build(settings: Settings) -> Engine:
    if settings.engine.kind == "redis":
        from .redis import RedisEngine  # imported only when chosen: the memory engine needs no redis package
        return RedisEngine(settings)
    return MemoryEngine(settings)
