"""Where and what was measured: date, machine, versions, the relay's commit."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from . import pgd
from .procs import REPO, nginx_version, redis_version

PACKAGES = ("aiohttp", "websockets", "orjson", "uvloop", "pydantic", "redis", "hiredis", "sqlalchemy",
            "asyncpg")
RELAY_PATHS = ("matrix", "upstreams", "downstreams", "engines", "stores")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> float | None:
    try:
        kib = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
        return round(kib / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def collect() -> dict:
    dirty = _git("status", "--porcelain", "--", *RELAY_PATHS)
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gib": _mem_gib(),
                    "kernel": platform.release(), "python": sys.version.split()[0]},
        "versions": {name: _version(name) for name in PACKAGES} | {"nginx": nginx_version(),
                                                                   "redis-server": redis_version(),
                                                                   "postgresql": pgd.version()},
        "relay_commit": _git("rev-parse", "--short", "HEAD"),
        "relay_uncommitted_changes": bool(dirty) if dirty is not None else None,
    }
