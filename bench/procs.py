"""The processes under measurement: mock providers, relay, nginx; each on a free loopback port, stopped by PID."""

from __future__ import annotations

import asyncio
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
        """The process and its children (nginx workers), for CPU and RSS accounting."""
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
    proc.stop()
    raise RuntimeError(f"{proc.name} not ready after {timeout:.0f}s:\n{proc.tail()}")


async def start_mock(workdir: Path, uvloop: bool = True) -> Proc:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.launch", *(["--uvloop"] if uvloop else []),
           "mock", "--host", HOST, "--port", str(port)]
    popen, log = _spawn("mock", cmd, workdir)
    return await _wait_ready(Proc("mock", popen, f"http://{HOST}:{port}", log), "/_mock/stats")


# One bench process stands in for hundreds of clients from one address: the relay's
# per-client limits are raised out of its way (the checks themselves still run per request).
BENCH_LIMITS = {"max_streams_per_client": 1_000_000, "starts_per_minute": 1e9, "burst": 1_000_000}


def _limits() -> dict:
    field = Settings.model_fields.get("limits")
    known = getattr(field.annotation, "model_fields", {}) if field else {}
    return {key: value for key, value in BENCH_LIMITS.items() if key in known}


def relay_config(mock_base: str, default_upstream: str) -> str:
    """The relay's TOML: every vendor pointed at the mock, all features at their defaults but client limits."""
    lines = ["[server]", f"default_upstream = {json.dumps(default_upstream)}", ""]
    if limits := _limits():
        lines += ["[limits]", *(f"{key} = {json.dumps(value)}" for key, value in limits.items()), ""]
    for name, fields in relay_upstreams(mock_base.removeprefix("http://")).items():
        lines.append(f"[upstreams.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
        lines.append("")
    return "\n".join(lines)


async def start_relay(workdir: Path, mock: Proc, uvloop: bool = False, name: str = "relay") -> Proc:
    config = workdir / "relay.toml"
    config.write_text(relay_config(mock.base, "openai"))
    port = free_port()
    entry = ["-m", "bench.launch", "--uvloop"] if uvloop else ["-m", "matrix"]
    cmd = [sys.executable, *entry, "serve", "--config", str(config), "--host", HOST, "--port", str(port)]
    popen, log = _spawn(name, cmd, workdir)
    return await _wait_ready(Proc(name, popen, f"http://{HOST}:{port}", log), "/healthz")


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
