"""A dependency-free progress bar on stderr (quiet when stderr is not a terminal, unless forced)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str = "", force: bool = False, stream=None) -> None:
        self.total, self.label, self.done = total, label, 0
        self.stream = stream or sys.stderr
        self.enabled = force or self.stream.isatty()
        self.t0 = time.perf_counter()

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        if not self.enabled:
            return
        frac = self.done / max(self.total, 1)
        bar = "#" * int(30 * frac)
        el = time.perf_counter() - self.t0
        eta = el / frac - el if frac > 0 else 0
        self.stream.write(f"\r{self.label} [{bar:<30s}] {self.done}/{self.total} {el:5.0f}s eta {eta:4.0f}s {note}")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()
