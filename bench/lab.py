"""The bench's world for one run: the child processes, one HTTP client session, and the routes through them."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from . import procs
from .clients import DOWNSTREAMS, VENDORS, Opened, Tally, chat_body
from .plan import Plan, down_of, engine_of, up_of

Runner = Callable[[aiohttp.ClientSession, str, Tally, Opened], Awaitable[None]]
REDIS_PREFIX = "bench:"  # the paced relay's keys; `matrix serve --workers` runs under its own (workers.py)


@dataclass(frozen=True)
class Route:
    """One way a stream goes: `relay` in a combination, or `direct` / `nginx` to a vendor."""

    role: str
    label: str          # "sse-ws", "sse-ws@redis", "direct-ws", "nginx-ws"
    run: Runner         # (session, last user message, tally, opened)


async def _all(*starts: Awaitable) -> None:
    """Start processes together; every start ends (and its process is owned, or stopped) before a failure is raised."""
    for result in await asyncio.gather(*starts, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


class Lab:
    """Owns the mock, a relay per engine the plan uses (restartable), Redis and nginx; stops each by PID on exit."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.mock: procs.Proc | None = None
        self.relays: dict[str, procs.Proc] = {}  # engine -> relay
        self.redis: procs.Proc | None = None
        self.nginx: procs.Proc | None = None
        self.firehose: procs.Proc | None = None  # the workers phase's token source (bench/firehose.py)
        self.session: aiohttp.ClientSession | None = None
        self._stack = AsyncExitStack()
        self._tmp = tempfile.TemporaryDirectory(prefix="matrix-bench-")
        self.workdir = Path(self._tmp.name)

    async def __aenter__(self) -> Lab:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60))
        try:
            firehose = "workers" in self.plan.phases and self.plan.workers_source == "firehose"
            await _all(self._start_mock(), *([self._start_redis()] if self.plan.needs_redis else []),
                       *([self._start_firehose()] if firehose else []))
            nginx = self.plan.nginx and bool(self.plan.engines) and procs.nginx_binary()
            await _all(*([self._start_nginx()] if nginx else []), *map(self.restart_relay, self.plan.engines))
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        if self.session is not None:
            await self.session.close()
        for proc in (*self.relays.values(), self.nginx, self.redis, self.firehose, self.mock):
            if proc is not None:
                proc.stop()
        self._tmp.cleanup()

    async def _start_mock(self) -> None:
        self.mock = await procs.start_mock(self.workdir, uvloop=self.plan.harness_uvloop)

    async def _start_redis(self) -> None:
        self.redis = await procs.start_redis(self.workdir)

    async def _start_firehose(self) -> None:
        self.firehose = await procs.start_firehose(self.workdir)

    async def _start_nginx(self) -> None:
        assert self.mock is not None
        self.nginx = await procs.start_nginx(self.workdir, self.mock)

    async def restart_relay(self, engine: str = "memory") -> procs.Proc:
        """A fresh relay process on `engine`: no retained streams, a clean RSS baseline (and, on Redis, an empty one).

        The old one shuts down while the new one starts; both are done before any measurement."""
        old = self.relays.pop(engine, None)
        if old is not None:
            old.terminate()
        try:
            assert self.mock is not None
            config = None
            if engine == "redis":
                assert self.redis is not None
                await procs.redis_command(self.redis, "FLUSHALL")  # the last window's logs would expire during this one
                config = procs.redis_engine(self.redis, REDIS_PREFIX)
            self.relays[engine] = await procs.start_relay(
                self.workdir, self.mock, uvloop=self.plan.relay_uvloop,
                name="relay" if engine == "memory" else f"relay-{engine}", engine=config)
        finally:
            if old is not None:
                await old.reap()
        return self.relays[engine]

    async def restart_relays(self) -> None:
        await _all(*map(self.restart_relay, list(self.relays)))

    def relay_base(self, combo: str) -> str:
        """The base URL of the relay a combination runs on (its engine's)."""
        return self.relays[engine_of(combo)].base

    def relay_route(self, combo: str, base: str | None = None, upstream: str | None = None) -> Route:
        """Streams of a combination through its engine's relay (or the relay at `base`, to `upstream`)."""
        run_down, upstream = DOWNSTREAMS[down_of(combo)], upstream or self.plan.upstream(up_of(combo))
        base = base or self.relay_base(combo)

        async def run(session: aiohttp.ClientSession, text: str, tally: Tally, opened: Opened) -> None:
            body = chat_body(text, upstream)
            tally.stream_id = body["stream_id"]
            await run_down(session, base, body, tally, opened)
        return Route("relay", combo, run)

    def vendor_route(self, role: str, transport: str) -> Route | None:
        """`direct` (to the mock) or `nginx` (through it) with the vendor behind `transport`."""
        proc = self.mock if role == "direct" else self.nginx
        if proc is None:
            return None
        _, client = VENDORS[self.plan.upstream(transport)]
        base = proc.base

        async def run(session: aiohttp.ClientSession, text: str, tally: Tally, opened: Opened) -> None:
            await client(session, base, text, tally, opened)
        return Route(role, f"{role}-{transport}", run)

    def pids(self, role: str, combo: str = "") -> list[int]:
        """Whose CPU a route's tokens cost: `relay`, the combination's relay (and redis-server for `@redis`: the
        engine's work is the relay's cost); `redis` alone; nginx (master + worker); `direct`, the mock; and
        `standby`, the other engine's relay, idle while this combination runs (metered, not charged)."""
        engine = engine_of(combo)
        if role == "relay":
            owners = [self.relays.get(engine), self.redis if engine == "redis" else None]
        elif role == "standby":
            owners = [proc for other, proc in self.relays.items() if other != engine]
        else:
            owners = [{"redis": self.redis, "nginx": self.nginx, "direct": self.mock}[role]]
        return [pid for proc in owners if proc is not None for pid in proc.pids()]
