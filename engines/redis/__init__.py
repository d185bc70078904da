"""The Redis engine: many relays share one set of streams through Redis Streams, leases and pub/sub."""

from .engine import RedisEngine

__all__ = ["RedisEngine"]
