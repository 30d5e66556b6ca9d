"""A minimal progress bar on stderr, drawn only on a terminal.

The library depends on numpy and faiss only (scikit-learn for the estimator), so it
keeps this small bar instead of tqdm; the pipelines use tqdm.
"""

from __future__ import annotations

import sys
import time
from typing import IO


class Progress:
    """Progress over ``total`` units, redrawn in place on a terminal.

    Parameters
    ----------
    total : int
        Units of work (vectors, queries, bytes); negative counts as 0.
    desc : str
        Label in front of the bar.
    unit : str, default=""
        Name of a unit; ``"B"`` or ``"bytes"`` shows bytes as KiB/MiB/GiB.
    enabled : bool or None, default=None
        Draw at all; None: only when ``stream`` is a terminal, so logs, pipes
        and CI output stay free of carriage returns.
    stream : file-like, default=None
        Where to draw; ``sys.stderr`` when None.

    Notes
    -----
    Redraws at most ten times a second (and when the work is done), showing the
    count, the elapsed and the estimated remaining time; ``close()`` (or leaving the ``with``
    block) draws the final state with the elapsed time and a newline.

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> with Progress(3, "encode", unit="vectors", enabled=True, stream=out) as bar:
    ...     for _ in range(3):
    ...         bar.update(1)
    >>> out.getvalue().splitlines()[-1].split("\\r")[-1].startswith("encode: [")
    True
    >>> Progress(3, "quiet", enabled=False, stream=out).enabled
    False
    """

    _WIDTH = 30
    _INTERVAL = 0.1

    def __init__(self, total: int, desc: str, *, unit: str = "", enabled: bool | None = None,
                 stream: IO[str] | None = None):
        self.total = max(int(total), 0)
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            try:
                enabled = bool(isatty()) if isatty is not None else False
            except (ValueError, OSError):  # a closed or detached stream
                enabled = False
        self.enabled = enabled
        self.done = 0
        self._start = time.perf_counter()
        self._last = float("-inf")
        self._closed = False

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.set(self.done + n)

    def set(self, done: int) -> None:
        """Set the units done (for callbacks that report a position, e.g. bytes written)."""
        self.done = int(done)
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last >= self._INTERVAL or self.done >= self.total:
            self._last = now
            self._draw(now, final=False)

    def _scale(self) -> tuple[float, str]:
        """Divisor and unit name of the counts shown (bytes are scaled to the total)."""
        if self.unit in ("B", "bytes"):
            for name, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
                if self.total >= scale:
                    return scale, name
            return 1, "bytes"
        return 1, self.unit

    def _draw(self, now: float, *, final: bool) -> None:
        elapsed = now - self._start
        frac = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = int(frac * self._WIDTH)
        bar = "#" * filled + "-" * (self._WIDTH - filled)
        scale, unit = self._scale()
        digits = 1 if scale > 1 else 0
        unit = f" {unit}" if unit else ""
        line = f"\r{self.desc}: [{bar}] {self.done / scale:.{digits}f}/{self.total / scale:.{digits}f}{unit}"
        if final:
            line += f" in {elapsed:.1f}s"
        elif 0 < self.done < self.total and elapsed > 0:
            left = elapsed * (self.total - self.done) / self.done
            line += f" {elapsed:.1f}s, ~{left:.0f}s left"
        else:
            line += f" {elapsed:.1f}s"
        self.stream.write(line + "\x1b[K")  # erase the rest of a longer previous line
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line (once; later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            self._draw(time.perf_counter(), final=True)
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(progress, n_rows: int, total: int, desc: str, *, threshold: int = 100_000,
                 unit: str = "rows") -> Progress | None:
    """The bar of an index operation over ``n_rows`` rows (``total`` units), or None when not
    shown: ``progress`` False, or None with fewer than ``threshold`` rows, or not a terminal."""
    if progress is False or (progress is None and n_rows < threshold):
        return None
    bar = Progress(total, desc, unit=unit, enabled=None if progress is None else bool(progress))
    return bar if bar.enabled else None
