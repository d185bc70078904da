"""Connection records behind `GET /_mock/stats`: who connected, how far it got, how it ended."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Literal

Outcome = Literal["open", "completed", "client_closed", "fault", "rejected"]


@dataclass
class Connection:
    """One provider connection. Times are `time.monotonic()`, the clock tests read too."""

    id: int
    vendor: str
    path: str
    tag: str = ""
    outcome: Outcome = "open"
    tokens_sent: int = 0
    messages: list[tuple[str, str]] = field(default_factory=list)  # the request's (role, text), in order
    opened_at: float = field(default_factory=time.monotonic)
    closed_at: float | None = None

    def close(self, outcome: Outcome) -> None:
        """Record how the connection ended; the first ending wins (a fault beats the disconnect it causes)."""
        if self.outcome == "open":
            self.outcome = outcome
            self.closed_at = time.monotonic()


class Stats:
    """Every connection since the last reset, keeping at most `keep` finished ones."""

    def __init__(self, keep: int = 10_000) -> None:
        self._keep = keep
        self._ids = itertools.count(1)
        self._connections: dict[int, Connection] = {}
        self.tls_hellos: int | None = None  # counted when served over TLS (mock_ai/tls.py)

    @contextmanager
    def track(self, vendor: str, path: str) -> Iterator[Connection]:
        """Record one connection for the duration of a handler.

        A handler marks its own ending; what is still open when the handler leaves by an
        exception is classified here. aiohttp's test server cancels a handler when its
        client disconnects, a plain AppRunner does not: both end up as `client_closed`.
        """
        conn = Connection(next(self._ids), vendor, path)
        self._connections[conn.id] = conn
        self._prune()
        try:
            yield conn
        except (ConnectionError, asyncio.CancelledError):
            conn.close("client_closed")
            raise
        except BaseException:
            conn.close("fault")
            raise
        finally:
            conn.close("completed")

    def snapshot(self, tag: str | None = None) -> dict:
        """The `/_mock/stats` body, optionally only connections with this tag."""
        conns = [c for c in self._connections.values() if tag is None or c.tag == tag]
        snapshot = {"open": sum(c.outcome == "open" for c in conns), "connections": [asdict(c) for c in conns]}
        if self.tls_hellos is not None:
            snapshot["tls_hellos"] = self.tls_hellos
        return snapshot

    def reset(self) -> None:
        self._connections.clear()
        if self.tls_hellos is not None:
            self.tls_hellos = 0

    def _prune(self) -> None:
        # A long benchmark must not grow memory without bound; open ones always stay.
        excess = len(self._connections) - self._keep
        if excess > 0:
            finished = [i for i, c in self._connections.items() if c.outcome != "open"]
            for conn_id in finished[:excess]:
                del self._connections[conn_id]
