"""`matrix serve --workers N`: N relay processes on one port (SO_REUSEPORT), signals forwarded, crashes replaced."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time

SETTLED_S = 5.0  # a worker that dies sooner than this after starting is a configuration problem: stop


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the supervisor dies, so no worker outlives it (Linux prctl)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def supervise(argv: list[str], workers: int) -> int:
    """Run `matrix serve ARGV --reuse-port` N times; SIGTERM/SIGINT drain them all, then return."""
    stopping = False

    def spawn() -> tuple[subprocess.Popen, float]:
        # Each worker in its own process group: a terminal's Ctrl-C reaches the supervisor only,
        # which forwards it once, instead of every worker seeing it twice.
        proc = subprocess.Popen([sys.executable, "-m", "matrix", "serve", *argv, "--reuse-port"],
                                process_group=0, preexec_fn=_die_with_parent)
        return proc, time.monotonic()

    def forward(signum: int, frame) -> None:
        nonlocal stopping
        stopping = True
        for proc, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    procs = [spawn() for _ in range(workers)]
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    print(f"matrix: {workers} relay workers: {' '.join(str(p.pid) for p, _ in procs)}", flush=True)
    while not all(proc.poll() is not None for proc, _ in procs):
        for i, (proc, started) in enumerate(procs):
            if stopping or proc.poll() is None:
                continue
            if time.monotonic() - started < SETTLED_S:
                print(f"matrix: worker {proc.pid} exited with {proc.returncode} right after starting; "
                      "stopping the others", file=sys.stderr, flush=True)
                forward(signal.SIGTERM, None)
                break
            print(f"matrix: worker {proc.pid} exited with {proc.returncode}; starting another",
                  file=sys.stderr, flush=True)
            procs[i] = spawn()
        time.sleep(0.1)
    return max(proc.returncode for proc, _ in procs) if not stopping else 0
