"""A dependency-free progress bar on stderr (redrawn in place on a terminal, sparse lines otherwise)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str = "subtasks", width: int = 30, stream=None) -> None:
        self.total, self.label, self.width = total, label, width
        self.stream = stream or sys.stderr
        self.done = 0
        self.t0 = time.monotonic()
        self._last = -1.0
        self.tty = getattr(self.stream, "isatty", lambda: False)()

    def update(self, n: int) -> None:
        self.done = min(self.total, self.done + n)
        now = time.monotonic()
        if self.done < self.total and now - self._last < (0.1 if self.tty else 2.0):
            return
        self._last = now
        self._draw(now)

    def _draw(self, now: float) -> None:
        frac = self.done / self.total if self.total else 1.0
        fill = int(frac * self.width)
        el = now - self.t0
        rate = self.done / el if el > 0 else 0.0
        line = (f"[{'#' * fill}{'.' * (self.width - fill)}] {self.done}/{self.total} {self.label} "
                f"{el:5.1f}s {rate:7.1f}/s")
        self.stream.write(("\r" + line) if self.tty else (line + "\n"))
        self.stream.flush()

    def close(self) -> None:
        if self._last < 0 or self.done < self.total or self.tty:
            self._draw(time.monotonic())
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()
