"""The processes under measurement: mock, relays, Redis, nginx, firehose; on free loopback ports, stopped by PID."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from matrix.config import Settings
from mock_ai import relay_upstreams

from . import nginx_conf
from .sysstat import children

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    """One child process (nginx: its master) and the base URL it serves."""

    name: str
    popen: subprocess.Popen
    base: str
    log: Path
    extra_pids: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        """The process and its children (nginx's workers, `matrix serve --workers`'), for CPU and RSS accounting."""
        return [self.pid, *children(self.pid)]

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def terminate(self) -> None:
        """Ask our own PID to shut down (nginx: graceful SIGQUIT)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM if self.name != "nginx" else signal.SIGQUIT)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`."""
        self.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout)

    async def reap(self, timeout: float = 5.0) -> None:
        """Wait (without blocking the loop) for a terminated process to exit; kill it after `timeout`."""
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.popen.poll() is None:
            self.stop(0)


def _spawn(name: str, cmd: list[str], workdir: Path) -> tuple[subprocess.Popen, Path]:
    log = workdir / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log, "wb") as out:
        popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 cwd=workdir, env=env, start_new_session=True)
    return popen, log


async def _wait_ready(proc: Proc, path: str, timeout: float = 20.0) -> Proc:
    try:
        return await _poll_ready(proc, path, timeout)
    except BaseException:  # not ready, or the run was cancelled meanwhile: no process is left behind
        proc.stop()
        raise


async def _poll_ready(proc: Proc, path: str, timeout: float) -> Proc:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
            try:
                async with session.get(proc.base + path, timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        return proc
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{proc.name} not ready after {timeout:.0f}s:\n{proc.tail()}")


async def start_mock(workdir: Path, uvloop: bool = True) -> Proc:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.launch", *(["--uvloop"] if uvloop else []),
           "mock", "--host", HOST, "--port", str(port)]
    popen, log = _spawn("mock", cmd, workdir)
    return await _wait_ready(Proc("mock", popen, f"http://{HOST}:{port}", log), "/_mock/stats")


async def start_firehose(workdir: Path) -> Proc:
    """The workers phase's cheap token source (bench/firehose.py)."""
    port = free_port()
    popen, log = _spawn("firehose", [sys.executable, "-m", "bench.firehose", "--host", HOST, "--port", str(port)],
                        workdir)
    return await _wait_ready(Proc("firehose", popen, f"http://{HOST}:{port}", log), "/")


# One bench process stands in for hundreds of clients from one address: the relay's
# per-client limits are raised out of its way (the checks themselves still run per request).
BENCH_LIMITS = {"max_streams_per_client": 1_000_000, "starts_per_minute": 1e9, "burst": 1_000_000}


def _limits() -> dict:
    field = Settings.model_fields.get("limits")
    known = getattr(field.annotation, "model_fields", {}) if field else {}
    return {key: value for key, value in BENCH_LIMITS.items() if key in known}


def relay_config(mock_base: str, default_upstream: str, engine: dict | None = None,
                 limits: dict | None = None, store: dict | None = None) -> str:
    """The relay's TOML: every vendor pointed at the mock, all features at their defaults but client limits
    (and the `[engine]` and `[store]` sections, and `limits` on top of the bench's, when given)."""
    lines = ["[server]", f"default_upstream = {json.dumps(default_upstream)}", ""]
    for name, section in (("limits", {**_limits(), **(limits or {})}), ("engine", engine), ("store", store)):
        if section:
            lines += [f"[{name}]", *(f"{key} = {json.dumps(value)}" for key, value in section.items()), ""]
    for name, fields in relay_upstreams(mock_base.removeprefix("http://")).items():
        lines.append(f"[upstreams.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
        lines.append("")
    return "\n".join(lines)


async def start_relay(workdir: Path, mock: Proc, uvloop: bool = False, name: str = "relay",
                      engine: dict | None = None, limits: dict | None = None, store: dict | None = None) -> Proc:
    config = workdir / f"{name}.toml"
    config.write_text(relay_config(mock.base, "openai", engine, limits, store))
    port = free_port()
    entry = ["-m", "bench.launch", "--uvloop"] if uvloop else ["-m", "matrix"]
    cmd = [sys.executable, *entry, "serve", "--config", str(config), "--host", HOST, "--port", str(port)]
    popen, log = _spawn(name, cmd, workdir)
    return await _wait_ready(Proc(name, popen, f"http://{HOST}:{port}", log), "/healthz")


def redis_engine(redis: Proc, prefix: str) -> dict:
    """`[engine]` for a relay on the bench's redis-server; each relay (or group of workers) under its own prefix,
    so that two of them never join one cluster by accident."""
    return {"kind": "redis", "url": redis.base, "prefix": prefix}


async def start_workers(workdir: Path, source: Proc, redis: Proc, workers: int) -> Proc:
    """`matrix serve --workers N` on the Redis engine, every upstream at `source` (the mock or the firehose);
    N = 1 is one relay, no supervisor. Ready once every worker has answered `/healthz`."""
    name = f"workers{workers}"
    config = workdir / f"{name}.toml"
    config.write_text(relay_config(source.base, "openai", redis_engine(redis, f"{name}:")))
    port = free_port()
    cmd = [sys.executable, "-m", "matrix", "serve", "--config", str(config), "--host", HOST, "--port", str(port),
           "--workers", str(workers)]
    popen, log = _spawn(name, cmd, workdir)
    proc = await _wait_ready(Proc(name, popen, f"http://{HOST}:{port}", log), "/healthz")
    try:
        await _every_worker(proc, workers)
    except BaseException:
        proc.stop()
        raise
    return proc


async def _every_worker(proc: Proc, workers: int, timeout: float = 20.0) -> None:
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    # A new connection per request: a kept-alive one would always reach the same worker.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        while len(seen) < workers and time.monotonic() < deadline:
            try:
                async with session.get(proc.base + "/healthz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                    seen.add((await r.json())["pid"])
            except (aiohttp.ClientError, asyncio.TimeoutError):
                await asyncio.sleep(0.05)
    if len(seen) < workers:
        raise RuntimeError(f"{proc.name}: {len(seen)} of {workers} workers answered:\n{proc.tail()}")


REDIS_SERVER = "/usr/bin/redis-server"  # Debian's, as `make system` installs it


def redis_missing() -> str | None:
    """Why the bench cannot run the Redis engine here, or None."""
    if not (shutil.which("redis-server") or os.access(REDIS_SERVER, os.X_OK)):
        return "redis-server is not installed (make system installs Debian's)"
    if importlib.util.find_spec("redis") is None:
        return "the redis package is not installed (pip install -e '.[redis]')"
    return None


async def start_redis(workdir: Path) -> Proc:
    """A redis-server with persistence off, logging to its file, ready when it answers PING."""
    port = free_port()
    directory = workdir / "redis"
    directory.mkdir(exist_ok=True)
    binary = shutil.which("redis-server") or REDIS_SERVER
    cmd = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
           "--dir", str(directory), "--daemonize", "no"]
    popen, log = _spawn("redis", cmd, workdir)
    proc = Proc("redis", popen, f"redis://{HOST}:{port}/0", log)
    try:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                raise RuntimeError(f"redis-server exited with {popen.returncode}:\n{proc.tail()}")
            try:
                await redis_command(proc, "PING")
                return proc
            except (OSError, asyncio.TimeoutError, RuntimeError):
                await asyncio.sleep(0.05)
        raise RuntimeError(f"redis-server not ready after 10s:\n{proc.tail()}")
    except BaseException:
        proc.stop()
        raise


async def redis_command(redis: Proc, *words: str) -> bytes:
    """One command to the bench's redis-server (inline protocol); its first reply line."""
    host, port = redis.base.removeprefix("redis://").split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(" ".join(words).encode() + b"\r\n")
        reply = await asyncio.wait_for(reader.readline(), 5.0)
    finally:
        writer.close()
    if not reply.startswith((b"+", b":")):
        raise RuntimeError(f"redis-server: {' '.join(words)}: {reply.decode(errors='replace').strip()}")
    return reply


def redis_version() -> str | None:
    binary = shutil.which("redis-server") or (REDIS_SERVER if os.access(REDIS_SERVER, os.X_OK) else None)
    if binary is None:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return next((w.removeprefix("v=") for w in out.stdout.split() if w.startswith("v=")), out.stdout.strip() or None)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


async def start_nginx(workdir: Path, mock: Proc) -> Proc:
    """nginx in front of the mock, `proxy_buffering off`: the byte-relay floor."""
    binary = nginx_binary()
    assert binary is not None
    port = free_port()
    prefix = workdir / "nginx"
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf.render(prefix, HOST, port, mock.base.removeprefix("http://")))
    cmd = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    popen, log = _spawn("nginx", cmd, workdir)
    return await _wait_ready(Proc("nginx", popen, f"http://{HOST}:{port}", log), "/_mock/stats")


def nginx_version() -> str | None:
    binary = nginx_binary()
    if binary is None:
        return None
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")
