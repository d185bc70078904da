"""One mock app's state: credentials, default script, armed directives, fault budgets, stats."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .liveness import Watchdog
from .script import Script, coerce, parse_directive
from .stats import Stats

VENDORS = ("spark", "baidu-agent", "openai", "anthropic", "openai-realtime")


@dataclass(frozen=True)
class Credentials:
    """What each mock accepts; the defaults match the relay's built-in configuration."""

    spark_app_id: str = "mock-app"
    spark_api_key: str = "mock-key"
    spark_api_secret: str = "mock-secret"
    baidu_app_id: str = "mock-agent"
    baidu_secret_key: str = "mock-secret"
    openai_api_key: str = "mock-key"          # chat completions and Realtime alike, as the vendor's keys
    anthropic_api_key: str = "mock-key"

    @classmethod
    def coerce(cls, value: Credentials | Mapping[str, str] | None) -> Credentials:
        if value is None:
            return cls()
        return value if isinstance(value, cls) else cls(**value)


@dataclass
class Armed:
    """A directive applied over the defaults to the next `remaining` connections of a vendor."""

    overrides: dict[str, Any]
    remaining: int


@dataclass
class MockState:
    defaults: Script
    credentials: Credentials
    first_frame_timeout_s: float = 60.0
    stats: Stats = field(default_factory=Stats)
    watchdog: Watchdog = field(default_factory=Watchdog)
    _armed: dict[str, collections.deque[Armed]] = field(
        default_factory=lambda: collections.defaultdict(collections.deque))
    _strikes: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)

    def arm(self, vendor: str, directive: str) -> Armed:
        """Make the next `fail_times` (default 1) connections of `vendor` use `directive`.

        This is how a test scripts what a message cannot: Spark's handshake, which
        happens before the message that could carry a `#mock` line.
        """
        if vendor not in VENDORS:
            raise ValueError(f"unknown vendor {vendor!r}: use one of {VENDORS}")
        overrides = parse_directive(directive)
        # Arming already counts connections; a per-prompt budget on top would count twice.
        armed = Armed(overrides, overrides.pop("fail_times", None) or 1)
        self._armed[vendor].append(armed)
        return armed

    def base(self, vendor: str) -> Script:
        """The defaults for a new connection, with the oldest armed directive spent on it."""
        queue = self._armed[vendor]
        if not queue:
            return self.defaults
        armed = queue[0]
        armed.remaining -= 1
        if armed.remaining <= 0:
            queue.popleft()
        return dataclasses.replace(self.defaults, **armed.overrides)

    def strikes(self, vendor: str, key: str, script: Script) -> bool:
        """Whether the script's fault strikes this time: `fail_times=K` limits it to the
        first K requests with the same vendor and key (the message text, directive included)."""
        if script.fault is None:
            return False
        if script.fail_times is None:
            return True
        self._strikes[vendor, key] += 1
        return self._strikes[vendor, key] <= script.fail_times

    def script_for(self, vendor: str, text: str, base: Script | None = None) -> Script:
        """The script a request's last user message asks for, its fault spent or dropped."""
        script = Script.parse(text, self.base(vendor) if base is None else base)
        return script if self.strikes(vendor, text, script) else script.replace(fault=None)

    def reset(self) -> None:
        self.stats.reset()
        self._armed.clear()
        self._strikes.clear()


STATE = web.AppKey("mock_ai.state", MockState)


def new_state(defaults: Script | Mapping[str, Any] | None, credentials: Credentials | Mapping[str, str] | None,
              **options: Any) -> MockState:
    return MockState(coerce(defaults), Credentials.coerce(credentials), **options)
