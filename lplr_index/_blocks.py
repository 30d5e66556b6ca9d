"""Row blocks: the unit every pass over the data works in.

The index's fit is a few passes over the database, each a map over *canonical*
row blocks (rows ``[i * BLOCK_ROWS, (i + 1) * BLOCK_ROWS)``) followed by a
reduction in block order. Whatever the input's own chunking (an array in
memory, a memory-mapped file, the chunks of a Dask array), the same rows land
in the same blocks and the float sums are added in the same order, so the same
data and seed give the same index byte for byte (with the same BLAS thread
count per process).

:func:`lplr_index._inputs.open_source` turns what ``build`` and ``add`` accept into a *source*
(``n``, ``dim``, ``blocks()``, ``take(rows)``): arrays and memory maps
(:class:`ArraySource`), lists of blocks of any sizes (:class:`ChunkedSource`),
re-iterables read once per pass (:class:`IterableSource`), and one-shot
iterators spooled once to a temporary ``.npy`` (:func:`spool`). An executor
(:class:`LocalExecutor`, or :class:`lplr_index.distributed.DaskExecutor`) runs
a pass's block function over a source's canonical blocks.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
import weakref
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

import numpy as np

#: rows of one canonical block (24 MiB of float32 at 384 dimensions)
BLOCK_ROWS = 1 << 14
#: largest magnitude accepted in vectors: beyond it float32 sums of squares overflow
MAX_ABS = 1e15


def check_block(block: Any, name: str, start: int, dim: int | None, *, rows: np.ndarray | None = None) -> np.ndarray:
    """A block of rows as C-contiguous float32, finite and within :data:`MAX_ABS`.

    ``start`` is the block's first row, so errors name the row in the whole input;
    for gathered rows, ``rows`` gives each row's number instead.
    """
    try:
        arr = np.asarray(block)
    except (TypeError, ValueError) as exc:  # ragged rows, say
        raise TypeError(f"{name} must be a 2-D array of numbers, got {type(block).__name__} "
                        f"that numpy cannot convert ({exc})") from None
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
    # two reductions, no temporary (NaN fails both comparisons); a row and column found only to name them
    if out.size and not (-MAX_ABS <= out.min() and out.max() <= MAX_ABS):
        amax = np.abs(out).max(axis=1)
        if not (np.isfinite(amax).all() and (amax <= MAX_ABS).all()):
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
                f"squares overflow beyond; rescale the vectors), got {what} at row "
                f"{int(rows[row]) if rows is not None else start + row}, column {col}"
            )
    return out


class ArraySource:
    """The rows of a 2-D array (in memory or memory-mapped), served in canonical blocks.

    Only one block is converted to float32 at a time, so a memory-mapped input
    is never read whole into memory; the pages of a read-only memory map
    (``np.load(path, mmap_mode="r")``) are handed back to the operating system
    after each block, so they do not pile up in the process's resident memory.

    Parameters
    ----------
    X : array-like of shape (n, dim)
        Anything with ``shape``, ``dtype`` and row slicing (ndarray, ``np.memmap``,
        an h5py dataset), or something ``np.asarray`` converts.
    name : str, default="X"
        The argument's name in error messages.
    dim : int, default=None
        Required number of columns (None: any).
    read_rows : int, default=None
        Rows read from ``X`` at a time (:data:`BLOCK_ROWS` when None); the
        pieces are re-blocked to canonical blocks, so results never depend on it.
    """

    def __init__(self, X: Any, name: str = "X", dim: int | None = None, read_rows: int | None = None):
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
        self.read_rows = BLOCK_ROWS if read_rows is None else check_read_rows(read_rows)
        self._pages = _MappedPages.of(X)

    def block(self, start: int, stop: int) -> np.ndarray:
        return check_block(self.X[start:stop], self.name, start, self.dim)

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, block)`` for each canonical block, in order."""
        if self.read_rows == BLOCK_ROWS:
            parts: Iterator[tuple[int, np.ndarray]] = (
                (s, self.block(s, min(s + BLOCK_ROWS, self.n))) for s in range(0, self.n, BLOCK_ROWS))
        else:
            pieces = (self.X[s : s + self.read_rows] for s in range(0, self.n, self.read_rows))
            parts = reblock(pieces, self.name, self.dim)
        for s, block in parts:
            yield s, block
            if self._pages is not None:
                self._pages.release(s, s + len(block))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows at sorted indices ``rows``, float32 (checked)."""
        if not len(rows):
            return np.zeros((0, self.dim), np.float32)
        out = check_block(self.X[rows], self.name, 0, self.dim, rows=rows)  # a gather: a copy
        if self._pages is not None:
            self._pages.release(0, self.n)
        return out


def check_read_rows(read_rows: Any, name: str = "read_rows") -> int:
    """``read_rows`` (rows read from an input at a time) as an int >= 1."""
    if isinstance(read_rows, bool) or not isinstance(read_rows, (int, np.integer)) or read_rows < 1:
        raise ValueError(f"{name} must be an integer >= 1 (rows read per block), got {read_rows!r}")
    return int(read_rows)


class _MappedPages:
    """The pages of a read-only ``np.memmap`` that a pass may hand back to the OS.

    A file mapped read-only and read once is counted in the process's resident
    memory until the kernel reclaims it; ``madvise(MADV_DONTNEED)`` after each
    block drops those pages from this process at once (they stay in the page
    cache and are read from there, or from the file, when touched again), so a
    pass over a file larger than memory keeps a bounded resident set. Best
    effort: where the platform lacks ``madvise`` nothing is released.
    """

    def __init__(self, mm: mmap.mmap, offset: int, row_bytes: int):
        self.mm, self.offset, self.row_bytes = mm, offset, row_bytes

    @classmethod
    def of(cls, X: Any) -> "_MappedPages | None":
        mm = getattr(X, "_mmap", None)
        if (not isinstance(X, np.memmap) or getattr(X, "mode", None) != "r" or not isinstance(mm, mmap.mmap)
                or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED") or not X.flags.c_contiguous):
            return None
        try:
            base = np.frombuffer(mm, np.uint8)
            offset = X.ctypes.data - base.ctypes.data
            del base
        except (TypeError, ValueError, BufferError):
            return None
        if not 0 <= offset <= len(mm):
            return None
        return cls(mm, offset, X.strides[0])

    def release(self, start: int, stop: int) -> None:
        lo = self.offset + start * self.row_bytes
        hi = min(self.offset + stop * self.row_bytes, len(self.mm))
        lo = -(-lo // mmap.PAGESIZE) * mmap.PAGESIZE  # only whole pages inside the rows
        hi = hi // mmap.PAGESIZE * mmap.PAGESIZE
        if hi > lo:
            try:
                self.mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError):  # closed map or refused advice: keeping the pages is correct too
                pass


def reblock(pieces: Iterable[Any], name: str, dim: int | None) -> Iterator[tuple[int, np.ndarray]]:
    """Canonical blocks ``(first_row, block)`` from 2-D pieces of any sizes, in order.

    Each piece is checked (2-D, real numbers, ``dim`` columns; values by
    :func:`check_block`, errors naming the row in the whole input) and converted
    to float32 at most :data:`BLOCK_ROWS` rows at a time. Blocks are float32,
    C-contiguous, :data:`BLOCK_ROWS` rows each but the last. ``dim=None`` takes
    the first piece's width.
    """
    buf, fill, start = None, 0, 0
    for k, piece in enumerate(pieces):
        piece = _checked_piece(piece, name, k, dim)
        dim = piece.shape[1]
        off, rows = 0, piece.shape[0]
        while off < rows:
            step = min(BLOCK_ROWS - fill, rows - off)
            part = check_block(piece[off : off + step], name, start + fill, dim)
            off += step
            if fill == 0 and step == BLOCK_ROWS:
                yield start, part
                start += BLOCK_ROWS
                continue
            if buf is None:
                buf = np.empty((BLOCK_ROWS, dim), np.float32)
            buf[fill : fill + step] = part
            fill += step
            if fill == BLOCK_ROWS:
                yield start, buf
                buf, fill, start = None, 0, start + BLOCK_ROWS
    if fill:
        yield start, buf[:fill]


def _checked_piece(piece: Any, name: str, k: int, dim: int | None):
    """A piece of an iterable input: 2-D, real numbers, ``dim`` columns (not yet converted)."""
    if not hasattr(piece, "shape") or not hasattr(piece, "dtype"):
        try:
            piece = np.asarray(piece)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name}: block {k} must be a 2-D array of numbers, got {type(piece).__name__} "
                            f"that numpy cannot convert ({exc})") from None
    if getattr(piece, "ndim", None) != 2:
        raise ValueError(f"{name}: block {k} must be a 2-D array of shape (n_rows, n_dimensions), got "
                         f"shape {getattr(piece, 'shape', '?')}")
    if np.dtype(piece.dtype).kind not in "fiu":
        raise TypeError(f"{name}: block {k} must hold real numbers (float or integer dtype), got dtype {piece.dtype}")
    if dim is not None and piece.shape[1] != dim:
        raise ValueError(f"{name}: block {k} has {piece.shape[1]} dimensions, but "
                         f"{'this index holds' if k == 0 else 'the blocks before it have'} {dim}-dimensional vectors")
    return piece


class ChunkedSource:
    """The rows of a list (or tuple) of 2-D blocks of any sizes, stacked in order.

    Nothing is copied up front: passes re-block the pieces to canonical blocks
    and the sample is gathered by random access into the pieces.
    """

    def __init__(self, chunks: Sequence[Any], name: str = "X", dim: int | None = None):
        checked = []
        for k, chunk in enumerate(chunks):
            chunk = _checked_piece(chunk, name, k, dim)
            dim = int(chunk.shape[1])
            checked.append(chunk)
        self.chunks = checked
        self.name = name
        self.offsets = np.cumsum([0] + [int(c.shape[0]) for c in checked])
        self.n, self.dim = int(self.offsets[-1]), int(dim or 0)
        if self.n == 0 or self.dim == 0:
            raise ValueError(f"{name} must hold at least one row and one column, got {len(checked)} block(s) "
                             f"with {self.n} rows in all")

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, block)`` for each canonical block, in order."""
        return reblock(self.chunks, self.name, self.dim)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows at sorted indices ``rows``, float32 (checked)."""
        out = np.empty((len(rows), self.dim), np.float32)
        cuts = np.searchsorted(rows, self.offsets)
        for k, chunk in enumerate(self.chunks):
            a, b = cuts[k], cuts[k + 1]
            if b > a:
                out[a:b] = check_block(chunk[rows[a:b] - self.offsets[k]], self.name, 0, self.dim, rows=rows[a:b])
        return out


class IterableSource:
    """The rows of a re-iterable of 2-D blocks (``iter()`` gives a fresh iterator each time).

    It is read once per pass, so every iteration must yield the same rows: the
    first pass counts them and each later pass is checked against that count.
    Knowing the count costs one pass and the seeded sample another (no random
    access), before the fit's own passes. The rows last taken are kept: rows among
    them (the build's measurements on part of its sample) are taken without a pass.
    """

    def __init__(self, iterable: Iterable[Any], name: str = "X", dim: int | None = None):
        self.iterable = iterable
        self.name = name
        self._dim = dim
        self._n: int | None = None
        self._taken: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def n(self) -> int:
        if self._n is None:
            for _ in self.blocks():  # the counting pass
                pass
        return self._n

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.n  # noqa: B018 - the counting pass learns the width
        return self._dim

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, block)`` for each canonical block, in order (one pass over the input)."""
        seen = 0
        for s, block in reblock(iter(self.iterable), self.name, self._dim):
            self._dim = block.shape[1]
            seen = s + len(block)
            if self._n is not None and seen > self._n:
                break
            yield s, block
        if self._n is None:
            if seen == 0:
                raise ValueError(f"{self.name} must hold at least one row, got an iterable that yielded none")
            self._n = seen
        elif seen != self._n:
            raise ValueError(
                f"{self.name} yielded {f'more than {self._n}' if seen > self._n else seen} rows on this pass, but "
                f"{self._n} on the first: a re-iterable input must yield the same rows on every pass (a one-shot "
                "iterator, such as a generator, is spooled to disk once instead)"
            )

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows at sorted indices ``rows``, float32: one pass over the input, or none when all of
        them were among the rows taken last."""
        if self._taken is not None:
            kept, values = self._taken
            at = np.searchsorted(kept, rows)
            if len(kept) and (at < len(kept)).all() and np.array_equal(kept[np.minimum(at, len(kept) - 1)], rows):
                return values[at]
        out = np.empty((len(rows), self.dim), np.float32)
        for s, block in self.blocks():
            a, b = np.searchsorted(rows, [s, s + len(block)])
            out[a:b] = block[rows[a:b] - s]
        self._taken = (np.array(rows), out)
        return out


Source = Union[ArraySource, ChunkedSource, IterableSource, "ExecutingSource"]

#: bytes reserved for the header of a spooled .npy file (holds any shape)
_SPOOL_HEADER = 128


def _npy_header(n: int, dim: int) -> bytes:
    """A version-1.0 ``.npy`` header of exactly :data:`_SPOOL_HEADER` bytes for float32 (n, dim)."""
    text = repr({"descr": "<f4", "fortran_order": False, "shape": (n, dim)})
    body_len = _SPOOL_HEADER - 10
    text = text.ljust(body_len - 1) + "\n"
    if len(text) != body_len:
        raise OverflowError(f"shape ({n}, {dim}) does not fit a {_SPOOL_HEADER}-byte .npy header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", body_len) + text.encode("latin1")


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def spool(iterator: Iterable[Any], name: str = "X", dim: int | None = None,
          folder: str | os.PathLike | None = None) -> np.memmap:
    """Write a one-shot iterator of 2-D blocks once to a temporary ``.npy`` and map it.

    The blocks are checked and converted to float32 on the way (errors name
    the row); the file is created in ``folder`` (``tempfile.gettempdir()`` when
    None) and removed from the folder as soon as it is mapped, or when anything
    fails (bad block, full disk, Ctrl-C). Where an open file cannot be removed
    (Windows) it is removed when the returned map is garbage collected. Disk
    space: ``n * dim * 4`` bytes until the map is released.

    Returns
    -------
    np.memmap of shape (n, dim), float32, read-only
    """
    folder = tempfile.gettempdir() if folder is None else os.fspath(folder)
    try:
        fd, path = tempfile.mkstemp(prefix="lplr-spool-", suffix=".npy", dir=folder)
    except OSError as exc:
        raise OSError(exc.errno, f"{name}: cannot create a spool file in {folder} ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * _SPOOL_HEADER)
            n = 0
            for _, block in reblock(iterator, name, dim):
                f.write(memoryview(block).cast("B"))
                n, dim = n + len(block), block.shape[1]
            if n == 0:
                raise ValueError(f"{name} must hold at least one row, got an iterator that yielded none")
            f.seek(0)
            f.write(_npy_header(n, dim))
        X = np.load(path, mmap_mode="r")
    except OSError as exc:
        _remove(path)
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, f"{name}: spooling the one-shot iterator to {folder} failed ({exc.strerror}); "
                                     "give a folder with room for n x dim x 4 bytes") from None
        raise
    except BaseException:
        _remove(path)
        raise
    try:
        os.unlink(path)
    except OSError:  # the open file cannot be removed here: remove it with the map
        weakref.finalize(X._mmap if getattr(X, "_mmap", None) is not None else X, _remove, path)
    return X


def open_npy(path: str | os.PathLike, name: str) -> np.memmap:
    """A ``.npy`` file, memory-mapped read-only (never unpickled)."""
    try:
        return np.load(os.fspath(path), mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(2, f"{name}: no such file", os.fspath(path)) from None
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{name}: {os.fspath(path)} is not a readable NumPy .npy file ({exc})") from None


class ExecutingSource:
    """A source that runs a pass's block function itself, elsewhere (on a cluster).

    Subclasses (:class:`lplr_index.distributed.DaskExecutor`) implement the
    executor interface (``n``, ``dim``, ``name``, ``take(rows)``,
    ``imap(fn, *args)`` with results in block order) and ``blocks()``;
    :func:`lplr_index._inputs.open_source` passes them through and :class:`LocalExecutor` hands
    each pass to their ``imap``, so ``LPLRIndex.build`` runs on them unchanged.
    """

    n: int
    dim: int
    name: str

    def imap(self, fn: Callable, *args) -> Iterator[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def take(self, rows: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:  # pragma: no cover - abstract
        raise NotImplementedError


class LocalExecutor:
    """Runs a pass in this process: ``fn(block, *args)`` per canonical block, in order.

    A :class:`ExecutingSource` runs the pass itself; this executor then only
    relays its results (and the progress).
    """

    def __init__(self, source: Source, progress: Callable[[int], None] | None = None):
        self.source = source
        self.n, self.dim = source.n, source.dim
        self.progress = progress

    def imap(self, fn: Callable, *args) -> Iterator[Any]:
        if isinstance(self.source, ExecutingSource):
            for i, out in enumerate(self.source.imap(fn, *args)):
                if self.progress is not None:
                    self.progress(min(BLOCK_ROWS, self.n - i * BLOCK_ROWS))
                yield out
            return
        for _, block in self.source.blocks():
            out = fn(block, *args)
            if self.progress is not None:
                self.progress(len(block))
            yield out

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self.source.take(rows)
