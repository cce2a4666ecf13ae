"""A small progress line on stderr: redrawn in place on a terminal, a line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None,
                 every: float = 2.0) -> None:
        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = 0.1 if self.tty else every
        self.start = self._last = time.monotonic()

    def update(self, done: int, extra: str = "") -> None:
        self.done = done
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._draw(extra)

    def finish(self, extra: str = "") -> None:
        self._draw(extra)
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()

    def _draw(self, extra: str) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        if self.total:
            width = 30
            filled = int(width * min(self.done, self.total) / self.total)
            bar = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
        else:
            bar = f"{self.done}"
        line = f"{self.label} {bar} {rate:,.0f}/s {elapsed:.1f}s {extra}".rstrip()
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        self.stream.flush()
