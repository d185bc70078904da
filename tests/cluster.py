"""Many relays, one set of streams: N real `matrix serve` on one real Redis, deploy/nginx-cluster.conf in front."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from asyncio.subprocess import Process
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import httpx

from clients import TIMEOUT, free_port, matrix_serve
from mock_ai import relay_upstreams
from nginxd import nginx_running
from redisd import RedisServer, redis_server

CONFIG = Path(__file__).parent.parent / "deploy" / "nginx-cluster.conf"
LEASE_S = 2.0
# A grace a test can act within, and the cluster tests' usual stream settings (tests/conftest.py).
STREAM = {"disconnect_grace_s": 2.0, "heartbeat_s": 5, "upstream_idle_timeout_s": 10,
          "retry_backoff_s": 0.01, "replay_ttl_s": 30}
LOG_TAIL = 300  # relay log lines printed per replica at the end (pytest shows them on failure)


@dataclass
class Cluster:
    replicas: list[tuple[Process, str]]
    nginx_url: str
    redis: RedisServer
    prefix: str
    nginx_dir: Path
    logs: list[list[str]] = field(default_factory=list)  # each replica's output so far, line by line

    def log(self, index: int) -> str:
        return "\n".join(self.logs[index])

    def served_by(self) -> list[str]:
        """The replica (host:port) nginx passed each finished request to, in order."""
        lines = (self.nginx_dir / "access.log").read_text().splitlines()
        return [line.rsplit("upstream=", 1)[1] for line in lines]


def toml_value(value) -> str:
    # JSON strings, numbers, booleans and flat arrays of them are valid TOML values.
    return json.dumps(value, ensure_ascii=False)


def toml_table(name: str, table: dict) -> str:
    return f"[{name}]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in table.items())


def relay_config(port: int, redis_url: str, prefix: str, mock_url: str, stream: dict, extra: str) -> str:
    """One replica's matrix.toml: its own port, everything else the same on every replica."""
    engine = {"kind": "redis", "url": redis_url, "prefix": prefix, "owner_lease_s": LEASE_S, "flush_interval_ms": 1}
    upstreams = relay_upstreams(mock_url.removeprefix("http://"))
    return "\n".join([toml_table("server", {"host": "127.0.0.1", "port": port}), toml_table("stream", stream),
                      toml_table("engine", engine),
                      *(toml_table(f"upstreams.{name}", table) for name, table in upstreams.items()), extra])


def site_config(relay_ports: list[int], port: int) -> str:
    """deploy/nginx-cluster.conf with this test's replicas and listening port."""
    text = CONFIG.read_text()
    servers = "".join(f"    server 127.0.0.1:{p};\n" for p in relay_ports)
    text, found_upstream = re.subn(r"(    server 127\.0\.0\.1:\d+;[^\n]*\n)+", servers, text)
    text, found_listen = re.subn(r"listen \d+;", f"listen 127.0.0.1:{port};", text)
    assert found_upstream == found_listen == 1, "deploy/nginx-cluster.conf changed shape: update tests/cluster.py"
    return text


async def wait_ready(base: str) -> None:
    """Poll GET /readyz until 200: the replica reaches Redis and may take new streams."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as client, asyncio.timeout(TIMEOUT):
        while (await client.get(f"{base}/readyz")).status_code != 200:
            await asyncio.sleep(0.05)


async def drain(proc: Process, lines: list[str]) -> None:
    """Keep reading a relay's output: a full pipe would block its logging, and with it the relay."""
    assert proc.stdout is not None
    async for line in proc.stdout:
        lines.append(line.decode(errors="replace").rstrip("\n"))


@asynccontextmanager
async def cluster(tmp_path: Path, mock_url: str, replicas: int = 3, config_extra: str = "",
                  **stream) -> AsyncIterator[Cluster]:
    """Redis, `replicas` relays on it (the mock at `mock_url` as every upstream) and nginx round robin.

    `config_extra` is appended to every replica's matrix.toml (e.g. an [auth] or [limits]
    table); `stream` overrides [stream] settings. Every process is stopped by its PID at the end.
    """
    prefix = f"t{secrets.token_hex(4)}:"  # one cluster's keys, apart from any other on this Redis
    served: list[tuple[Process, str]] = []
    logs: list[list[str]] = []
    drains: list[asyncio.Task] = []
    try:
        async with redis_server(tmp_path) as redis, AsyncExitStack() as stack:
            ports = [free_port() for _ in range(replicas)]

            async def start(i: int, port: int) -> tuple[Process, str]:
                config = tmp_path / f"matrix-{i}.toml"
                config.write_text(relay_config(port, redis.url, prefix, mock_url, {**STREAM, **stream}, config_extra))
                return await stack.enter_async_context(matrix_serve("--config", str(config), port=port))

            # All at once: a relay takes most of a second to import and bind. A TaskGroup ends
            # (kills) the others if one fails to start.
            async with asyncio.TaskGroup() as group:
                starting = [group.create_task(start(i, port)) for i, port in enumerate(ports)]
            for task in starting:
                served.append(task.result())
                logs.append([])
                drains.append(asyncio.create_task(drain(served[-1][0], logs[-1])))
            for _, base in served:
                await wait_ready(base)
            nginx_dir = tmp_path / "nginx"
            nginx_dir.mkdir(exist_ok=True)
            nginx_port = free_port()
            nginx_url = await stack.enter_async_context(
                nginx_running(site_config(ports, nginx_port), nginx_port, nginx_dir))
            yield Cluster(served, nginx_url, redis, prefix, nginx_dir, logs)
    finally:
        # Every relay was killed by now (matrix_serve's exit), so each pipe ends.
        for task in drains:
            try:
                await asyncio.wait_for(task, 5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
        for (_, base), lines in zip(served, logs):  # pytest shows them when the test failed
            print(f"--- relay {base}: last {LOG_TAIL} lines ---", *lines[-LOG_TAIL:], sep="\n")
