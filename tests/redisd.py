"""A real redis-server for tests: Debian's binary on a free 127.0.0.1 port, persistence off, stopped by PID."""

from __future__ import annotations

import asyncio
import signal
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import redis.asyncio as redis

from clients import TIMEOUT, free_port

REDIS_SERVER = Path("/usr/bin/redis-server")  # `make system` installs Debian's redis-server


class RedisServer:
    """One redis-server on a fixed port: stop it, kill it, start it again on the same port."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "redis-server is not running"
        return self.proc.pid

    async def start(self) -> None:
        """Start redis-server (again, on the same port) and wait until it answers PING."""
        assert self.proc is None or self.proc.returncode is not None, "redis-server is already running"
        # No RDB snapshots nor AOF: nothing outlives the test, and a stop is quick. The log
        # goes to a file so a failed start can show it without a pipe to drain.
        self.proc = await asyncio.create_subprocess_exec(
            str(REDIS_SERVER), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.directory), "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=1)
        try:
            async with asyncio.timeout(TIMEOUT):
                while True:
                    assert self.proc.returncode is None, self.log()
                    try:
                        if await client.ping():
                            return
                    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                        await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        """SIGTERM, as an operator's `systemctl stop` would, and wait for the exit."""
        await self._end(signal.SIGTERM)

    async def kill(self) -> None:
        """SIGKILL: Redis vanishes without closing anything cleanly."""
        await self._end(signal.SIGKILL)

    async def _end(self, sig: signal.Signals) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(sig)
        try:
            await asyncio.wait_for(self.proc.wait(), TIMEOUT)
        except asyncio.TimeoutError:  # a SIGTERM it ignored: a test must not leave it behind
            self.proc.kill()
            await self.proc.wait()

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else "(no redis.log)"


@asynccontextmanager
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server for the block, in `tmp_path`/redis; always stopped by its PID at the end."""
    assert REDIS_SERVER.exists(), "redis-server is not installed: make system"
    directory = tmp_path / "redis"
    directory.mkdir(exist_ok=True)
    server = RedisServer(directory, free_port())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
