"""A one-line progress bar on a terminal (stderr); silent when stderr is not a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30


class Progress:
    def __init__(self, total: int, stream: TextIO = sys.stderr, enabled: bool | None = None) -> None:
        self.total = max(1, total)
        self.done = 0
        self.label = ""
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.started = time.monotonic()

    def show(self, label: str) -> None:
        """Name the step now running."""
        self.label = label
        self._draw()

    def tick(self) -> None:
        """One step finished."""
        self.done = min(self.total, self.done + 1)
        self._draw()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def _draw(self) -> None:
        if not self.enabled:
            return
        filled = WIDTH * self.done // self.total
        elapsed = time.monotonic() - self.started
        eta = f" ~{elapsed / self.done * (self.total - self.done):.0f}s left" if self.done else ""
        self.stream.write(f"\r\033[K[{'#' * filled}{'.' * (WIDTH - filled)}] {self.done}/{self.total} "
                          f"{elapsed:.0f}s{eta}  {self.label}")
        self.stream.flush()
