"""The code store: packed per-vector code rows with appends that do not copy.

A store holds ``n`` rows of ``row_bytes`` packed codes in a buffer that may be
larger (spare capacity). Appending writes into the spare rows and returns a
*new* store over the same buffer, so the old store (and an index still holding
it) sees exactly what it saw before; when the capacity runs out the buffer
grows geometrically (one copy per doubling, amortised O(1) per row). A
memory-mapped buffer (an index loaded with ``mmap=True``) is copied into memory
on the first append.

Rewriting rows (:meth:`CodeStore.replaced`, after ``update``) and dropping rows
(:meth:`CodeStore.taken`, after ``compact``) also return new stores over new
buffers: O(n) bytes copied per call, and the old store is never changed.
"""

from __future__ import annotations

import numpy as np

#: growth factor of the buffer when an append does not fit
_GROWTH = 1.5


class CodeStore:
    """``n`` packed code rows, read-only from the outside.

    Parameters
    ----------
    buffer : ndarray of shape (capacity, row_bytes), uint8
        Rows ``0 .. n - 1`` hold codes; the rest is spare.
    n : int, default=None
        Rows in use (all of ``buffer`` when None).
    """

    __slots__ = ("_buf", "n")

    def __init__(self, buffer: np.ndarray, n: int | None = None):
        self._buf = buffer
        self.n = int(buffer.shape[0] if n is None else n)

    @property
    def codes(self) -> np.ndarray:
        """The rows in use, shape (n, row_bytes) (a view, possibly memory-mapped)."""
        return self._buf[: self.n]

    @property
    def row_bytes(self) -> int:
        return int(self._buf.shape[1])

    @property
    def nbytes(self) -> int:
        return self.n * self.row_bytes

    def appended(self, rows: np.ndarray) -> "CodeStore":
        """A store with ``rows`` after these; this store is left as it is."""
        rows = np.asarray(rows, np.uint8)
        need = self.n + len(rows)
        buf = self._buf
        if need > buf.shape[0] or isinstance(buf, np.memmap) or not buf.flags.writeable:
            cap = max(need, int(self.n * _GROWTH) + 1)
            grown = np.empty((cap, self.row_bytes), np.uint8)
            grown[: self.n] = self.codes
            buf = grown
        buf[self.n : need] = rows
        return CodeStore(buf, need)

    def replaced(self, rows: np.ndarray, new: np.ndarray) -> "CodeStore":
        """A store whose rows ``rows`` hold ``new``; this store is left as it is.

        Parameters
        ----------
        rows : ndarray of shape (m,), int64
            Distinct row numbers in ``[0, n)``.
        new : ndarray of shape (m, row_bytes), uint8
            Their new packed codes.
        """
        buf = np.empty((max(self._buf.shape[0], self.n), self.row_bytes), np.uint8)
        buf[: self.n] = self.codes
        buf[np.asarray(rows, np.int64)] = np.asarray(new, np.uint8)
        return CodeStore(buf, self.n)

    def taken(self, keep: np.ndarray) -> "CodeStore":
        """A store of the rows ``keep`` (increasing row numbers), in that order, without spare rows."""
        return CodeStore(np.ascontiguousarray(self.codes[np.asarray(keep, np.int64)]), len(keep))
