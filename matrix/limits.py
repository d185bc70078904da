"""Per-client abuse limits: request size, live streams and stream starts per minute (a token bucket)."""

from __future__ import annotations

import time
from collections import Counter

from .config import LimitsConfig
from .errors import RequestError
from .request import ChatRequest


def check_request(chat: ChatRequest, config: LimitsConfig) -> None:
    if len(chat.messages) > config.max_messages:
        raise RequestError(f"{len(chat.messages)} messages; at most {config.max_messages} are accepted",
                           code="too_many_messages", status=413)
    longest = max(len(m.content) for m in chat.messages)
    if longest > config.max_message_chars:
        raise RequestError(f"a message has {longest} characters; at most {config.max_message_chars}",
                           code="message_too_long", status=413)


def too_many_streams(live: int, config: LimitsConfig) -> RequestError:
    return RequestError(f"{live} streams are already live for this client; at most {config.max_streams_per_client}",
                        code="too_many_streams", status=429)


def rate_limited(wait_s: float) -> RequestError:
    return RequestError(f"too many streams started; retry in {wait_s:.1f}s", code="rate_limited", status=429,
                        retryable=True)


class ClientLimits:
    """This process's counts (the memory engine). `client` is the stream owner's id (matrix/identity.py)."""

    def __init__(self, config: LimitsConfig) -> None:
        self.config = config
        self.live: Counter[str] = Counter()
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last refill)

    def admit(self, client: str) -> None:
        """Count a stream start against `client`, or refuse it with 429."""
        if self.live[client] >= self.config.max_streams_per_client:
            raise too_many_streams(self.live[client], self.config)
        now = time.monotonic()
        rate = self.config.starts_per_minute / 60
        tokens, last = self._buckets.get(client, (float(self.config.burst), now))
        tokens = min(float(self.config.burst), tokens + (now - last) * rate)
        if tokens < 1:
            raise rate_limited((1 - tokens) / rate)
        self._buckets[client] = (tokens - 1, now)
        if len(self._buckets) > 100_000:  # forget the oldest idle clients, keep memory bounded
            for key in list(self._buckets)[:50_000]:
                del self._buckets[key]
        self.live[client] += 1

    def release(self, client: str) -> None:
        self.live[client] -= 1
        if self.live[client] <= 0:
            del self.live[client]
