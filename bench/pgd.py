"""A real PostgreSQL for tests and the bench: Debian's binaries, a cluster in a temporary directory on a free port, stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

import asyncpg

from .procs import free_port

TIMEOUT = 15.0  # every wait is bounded: a cluster that does not come up fails fast instead of hanging


def _bin_dir() -> Path | None:
    """The newest installed major version's binaries (`make system` installs Debian's postgresql)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


BIN = _bin_dir()

# PostgreSQL refuses to run as root: as root, run it as the `postgres` user the Debian package
# creates. setpriv execs in place (runuser would fork), so the PID we hold is the postmaster's.
AS_POSTGRES = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"] if os.geteuid() == 0 else []


def missing() -> str | None:
    """Why no cluster can be started here (the bench then skips PostgreSQL), or None."""
    if BIN is None:
        return "PostgreSQL is not installed (make system installs Debian's postgresql)"
    return None


def version() -> str | None:
    if BIN is None:
        return None
    out = subprocess.run([str(BIN / "postgres"), "--version"], capture_output=True, text=True, timeout=10)
    words = out.stdout.split()  # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    return words[2] if len(words) > 2 else out.stdout.strip() or None


class PostgresServer:
    """One cluster on a fixed port: stop, kill or pause it, start it again on the same port and data."""

    def __init__(self, directory: Path, port: int, durable: bool = False) -> None:
        self.directory = directory  # also the Unix socket's directory
        self.data = directory / "data"
        self.port = port
        self.durable = durable  # PostgreSQL's own defaults (fsync on): the bench measures what a deployment runs
        self.proc: subprocess.Popen | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        """initdb: trust auth on loopback (a test cluster), UTF-8, no fsync (nothing outlives the test)."""
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")

    def start(self) -> None:
        """Start the postmaster (again, on the same port) and wait until it accepts connections."""
        assert self.proc is None or self.proc.poll() is not None, "postgres is already running"
        # fsync off (tests): a commit reaches the OS, not the disk. That survives a killed server
        # (the tests' crash), not a power cut; synchronous_commit stays on, or a kill would lose commits.
        fast = [] if self.durable else ["-c", "fsync=off", "-c", "full_page_writes=off"]
        with open(self.directory / "postgres.log", "ab") as log:
            self.proc = subprocess.Popen(
                [*AS_POSTGRES, str(BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-k", str(self.directory), "-h", "127.0.0.1", *fast],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + TIMEOUT
        while subprocess.run([str(BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
                             timeout=TIMEOUT).returncode != 0:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not accept connections in {TIMEOUT} s\n{self.log()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGINT: PostgreSQL's fast shutdown (ends sessions, checkpoints), as an operator's stop would."""
        self._end(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL to the postmaster and every backend at once: the server vanishes mid-conversation."""
        self._end(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP the postmaster and its backends: connections stay open and nothing answers (a hung host)."""
        assert self.proc is not None
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, sig: signal.Signals) -> None:
        _signal([self.proc.pid, *_children(self.proc.pid)], sig)

    def _end(self, sig: signal.Signals) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self._signal_all(signal.SIGCONT)  # a paused server would hold a stop signal until then
        # Backends are the postmaster's children in sessions of their own: a crash takes them
        # too, and a restart waits until they are gone (they hold the old shared memory).
        backends = _children(self.proc.pid) if sig == signal.SIGKILL else []
        _signal([self.proc.pid, *backends], sig)
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:  # a shutdown that hangs: a test must not leave it behind
            self.proc.kill()
            self.proc.wait()
        deadline = time.monotonic() + TIMEOUT
        while any(map(_running, backends)) and time.monotonic() < deadline:
            time.sleep(0.01)

    async def create_database(self) -> str:
        """A new, empty database (one per test); its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(self.url(), timeout=TIMEOUT)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)

    def log(self) -> str:
        path = self.directory / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else "(no postgres.log)"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*AS_POSTGRES, str(BIN / tool), *args], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}")


def _stat(pid: int | str) -> list[str]:
    """/proc/PID/stat after "pid (comm)": state, ppid, ...; [] once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").glob("[0-9]*") if (f := _stat(p.name)) and f[1] == str(pid)]


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):  # a backend that ended since we listed it
            os.kill(pid, sig)


def _running(pid: int) -> bool:
    """Alive and not a zombie (nothing may reap an orphan here: it stays a zombie, harmless)."""
    return (f := _stat(pid)) != [] and f[0] != "Z"


@contextmanager
def postgres_server(durable: bool = False) -> Iterator[PostgresServer]:
    """A fresh cluster for the block, in a new temporary directory; always stopped by its PID at the end.

    Not under pytest's tmp_path or the bench's workdir: their parents are root's and closed to the `postgres` user.
    """
    if why := missing():
        raise RuntimeError(why)
    directory = Path(tempfile.mkdtemp(prefix="matrix-pg-"))
    try:
        if AS_POSTGRES:
            shutil.chown(directory, "postgres", "postgres")
        server = PostgresServer(directory, free_port(), durable)
        try:  # a start that times out leaves a postmaster running: it is stopped too
            server.init()
            server.start()
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
