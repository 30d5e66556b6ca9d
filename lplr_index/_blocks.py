"""Row blocks: the unit every pass over the data works in.

The index's fit is a few passes over the database, each a map over *canonical*
row blocks (rows ``[i * BLOCK_ROWS, (i + 1) * BLOCK_ROWS)``) followed by a
reduction in block order. Whatever the input's own chunking (an array in
memory, a memory-mapped file, the chunks of a Dask array), the same rows land
in the same blocks and the float sums are added in the same order, so the same
data and seed give the same index byte for byte (with the same BLAS thread
count per process).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

#: rows of one canonical block (24 MiB of float32 at 384 dimensions)
BLOCK_ROWS = 1 << 14
#: largest magnitude accepted in vectors: beyond it float32 sums of squares overflow
MAX_ABS = 1e15


def check_block(block: Any, name: str, start: int, dim: int | None) -> np.ndarray:
    """A block of rows as C-contiguous float32, finite and within :data:`MAX_ABS`.

    ``start`` is the block's first row, so errors name the row in the whole input.
    """
    arr = np.asarray(block)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers (float or integer dtype), got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (n_vectors, n_dimensions), "
            f"got an array with {arr.ndim} dimension(s) of shape {arr.shape}"
        )
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} has {arr.shape[1]} dimensions, but this index holds {dim}-dimensional vectors")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if out.size:
        amax = np.abs(out).max(axis=1) if out.dtype.kind == "f" else None
        if amax is not None and not (np.isfinite(amax).all() and (amax <= MAX_ABS).all()):
            row = int(np.flatnonzero(~(np.isfinite(amax) & (amax <= MAX_ABS)))[0])
            col = int(np.flatnonzero(~(np.isfinite(out[row]) & (np.abs(out[row]) <= MAX_ABS)))[0])
            value = arr[row, col]
            if not np.isfinite(out[row, col]) and np.isfinite(value):
                what = f"a value ({value!r}) too large for float32"
            elif not np.isfinite(value):
                what = f"a non-finite value ({value})"
            else:
                what = f"a value of magnitude {abs(float(value)):.3g}, above the limit {MAX_ABS:g}"
            raise ValueError(
                f"{name} must be finite with entries of magnitude <= {MAX_ABS:g} (float32 sums of "
                f"squares overflow beyond; rescale the vectors), got {what} at row {start + row}, column {col}"
            )
    return out


class ArraySource:
    """The rows of a 2-D array (in memory or memory-mapped), served in canonical blocks.

    Only one block is converted to float32 at a time, so a memory-mapped input
    is never read whole into memory.
    """

    def __init__(self, X: Any, name: str = "X", dim: int | None = None):
        if not hasattr(X, "shape") or not hasattr(X, "dtype"):
            try:
                X = np.asarray(X)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"{name} must be a 2-D array of numbers, got {type(X).__name__} that numpy "
                    f"cannot convert ({exc})"
                ) from None
        if getattr(X, "ndim", None) != 2:
            raise ValueError(
                f"{name} must be a 2-D array of shape (n_vectors, n_dimensions), got an array "
                f"with {getattr(X, 'ndim', '?')} dimension(s) of shape {getattr(X, 'shape', '?')}"
            )
        if np.dtype(X.dtype).kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers (float or integer dtype), got dtype {X.dtype}")
        if dim is not None and X.shape[1] != dim:
            raise ValueError(f"{name} has {X.shape[1]} dimensions, but this index holds {dim}-dimensional vectors")
        if X.shape[0] == 0 or X.shape[1] == 0:
            raise ValueError(f"{name} must hold at least one row and one column, got shape {tuple(X.shape)}")
        self.X = X
        self.name = name
        self.n, self.dim = int(X.shape[0]), int(X.shape[1])

    def block(self, start: int, stop: int) -> np.ndarray:
        return check_block(self.X[start:stop], self.name, start, self.dim)

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, block)`` for each canonical block, in order."""
        for s in range(0, self.n, BLOCK_ROWS):
            yield s, self.block(s, min(s + BLOCK_ROWS, self.n))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows at sorted indices ``rows``, float32 (checked)."""
        return check_block(self.X[rows], self.name, 0, self.dim) if len(rows) else np.zeros((0, self.dim), np.float32)


class LocalExecutor:
    """Runs a pass in this process: ``fn(block, *args)`` per canonical block, in order."""

    def __init__(self, source: ArraySource, progress: Callable[[int], None] | None = None):
        self.source = source
        self.n, self.dim = source.n, source.dim
        self.progress = progress

    def imap(self, fn: Callable, *args) -> Iterator[Any]:
        for _, block in self.source.blocks():
            out = fn(block, *args)
            if self.progress is not None:
                self.progress(len(block))
            yield out

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self.source.take(rows)
