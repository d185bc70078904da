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
from .plan import Plan

Runner = Callable[[aiohttp.ClientSession, str, Tally, Opened], Awaitable[None]]


@dataclass(frozen=True)
class Route:
    """One way a stream goes: `relay` in a combination, or `direct` / `nginx` to a vendor."""

    role: str
    label: str          # "sse-ws", "direct-ws", "nginx-ws"
    run: Runner         # (session, last user message, tally, opened)


class Lab:
    """Owns the mock, the relay (restartable) and nginx, and stops each by PID on exit."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.mock: procs.Proc | None = None
        self.relay: procs.Proc | None = None
        self.nginx: procs.Proc | None = None
        self.session: aiohttp.ClientSession | None = None
        self._stack = AsyncExitStack()
        self._tmp = tempfile.TemporaryDirectory(prefix="matrix-bench-")
        self.workdir = Path(self._tmp.name)

    async def __aenter__(self) -> Lab:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60))
        self.mock = await procs.start_mock(self.workdir, uvloop=self.plan.harness_uvloop)
        if self.plan.nginx and procs.nginx_binary():
            self.nginx, _ = await asyncio.gather(procs.start_nginx(self.workdir, self.mock), self.restart_relay())
        else:
            await self.restart_relay()
        return self

    async def __aexit__(self, *exc) -> None:
        if self.session is not None:
            await self.session.close()
        for proc in (self.relay, self.nginx, self.mock):
            if proc is not None:
                proc.stop()
        self._tmp.cleanup()

    async def restart_relay(self) -> procs.Proc:
        """A fresh relay process: no retained streams, a clean RSS baseline.

        The old one shuts down while the new one starts; both are done before any measurement."""
        old, self.relay = self.relay, None
        if old is not None:
            old.terminate()
        try:
            assert self.mock is not None
            self.relay = await procs.start_relay(self.workdir, self.mock, uvloop=self.plan.relay_uvloop)
        finally:
            if old is not None:
                await old.reap()
        return self.relay

    def relay_route(self, combo: str) -> Route:
        down, up = combo.split("-")
        run_down, base, upstream = DOWNSTREAMS[down], self.relay.base, self.plan.upstream(up)

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

    def pids(self, role: str) -> list[int]:
        """Whose CPU a route's tokens cost: the relay, nginx (master + worker), or the mock."""
        proc = {"relay": self.relay, "nginx": self.nginx, "direct": self.mock}[role]
        return proc.pids() if proc is not None else []
