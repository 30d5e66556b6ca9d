"""A minimal progress bar on stderr (the library depends on numpy, faiss and sklearn only)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Progress over ``total`` units, redrawn in place on a terminal.

    Draws only when ``enabled`` (default: stderr is a terminal), at most ten
    times a second, and ends with a newline and the elapsed time.
    """

    def __init__(self, total: int, desc: str, *, unit: str = "", enabled: bool | None = None, stream=None):
        self.total = max(int(total), 0)
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0
        self._start = time.perf_counter()
        self._last = 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = self.done / self.total if self.total else 1.0
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        self.stream.write(
            f"\r{self.desc}: [{bar}] {self.done}/{self.total} {self.unit} {now - self._start:.1f}s"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
