"""The input dispatch of ``build`` and ``add``: what a user passes -> a source of row blocks.

It sits above :mod:`lplr_index._blocks` (the sources) and :mod:`lplr_index.parquet` (the
Parquet and Arrow sources, which build on ``_blocks``), so neither of those imports the
other's dispatch: the library's import graph has no cycle (``tests/test_layers.py``).
"""

from __future__ import annotations

import collections.abc
import os
from typing import Any, Iterator

import numpy as np

from ._blocks import ArraySource, ChunkedSource, ExecutingSource, IterableSource, Source, open_npy, spool

__all__ = ["open_source"]


def open_source(X: Any, name: str = "X", dim: int | None = None, *, read_rows: int | None = None,
                spool_dir: str | os.PathLike | None = None, column: str | None = None,
                id_column: str | None = None) -> Source:
    """The source of rows an input gives (the one input dispatch of ``build`` and ``add``).

    - a source object of this module or an :class:`ExecutingSource` (a Dask
      array's executor): itself (its width checked);
    - Parquet and Arrow data (:mod:`lplr_index.parquet`, needs pyarrow): a path
      to a Parquet file (``.parquet``, ``.pq``, ``.parq``), a folder of them, a
      glob, a list of such paths, or a pyarrow object (``Table``,
      ``RecordBatch``, ``Dataset``, ``ChunkedArray``, ``Array``, or a one-shot
      ``RecordBatchReader``); a pandas DataFrame or a one-shot iterator of
      record batches when ``column`` is given. ``column`` names the vector
      column, ``id_column`` a column of ids (read by the source's ``read_ids()``);
    - a path to a ``.npy`` file: memory-mapped, read block by block;
    - an array (ndarray, ``np.memmap``, anything with ``shape``, ``dtype`` and
      row slicing): read block by block, random access for the sample;
    - a list or tuple of 2-D blocks (any sizes): the blocks stacked, random access;
      (a list of rows or numbers is an array, as before);
    - a one-shot iterator of 2-D blocks (a ``collections.abc.Iterator``: a
      generator, ``iter(list)``, a file reader): spooled once to a temporary ``.npy`` in ``spool_dir``
      (:func:`spool`), then served like a memory-mapped array;
    - any other iterable of 2-D blocks (``iter(X)`` a fresh iterator each
      time): read once per pass (:class:`IterableSource`).
    """
    if isinstance(X, (ArraySource, ChunkedSource, IterableSource, ExecutingSource)):
        if column is not None or id_column is not None:
            raise TypeError(f"{name}: column= and id_column= apply to Parquet and Arrow inputs, not to a "
                            f"{type(X).__name__} (give them to the source instead)")
        if dim is not None and X.dim != dim:
            raise ValueError(f"{X.name} has {X.dim} dimensions, but this index holds {dim}-dimensional vectors")
        return X
    from . import parquet  # imports pyarrow only when an input is Parquet or Arrow

    if isinstance(X, collections.abc.Iterator) and not parquet.is_arrow(X):
        X, first = _peek(X)
        if parquet.is_arrow(first) or column is not None:
            return parquet.spool_batches(X, name, dim, column=column, id_column=id_column, read_rows=read_rows,
                                         spool_dir=spool_dir)
    if (parquet.accepts(X) or (column is not None and type(X).__module__.split(".")[0] == "pandas")):
        return parquet.open_arrow(X, name, dim, column=column, id_column=id_column, read_rows=read_rows,
                                  spool_dir=spool_dir)
    if column is not None or id_column is not None:
        raise TypeError(f"{name}: column= and id_column= apply to Parquet and Arrow inputs (a Parquet path, "
                        f"folder or glob, a pyarrow Table, RecordBatch or Dataset, a pandas DataFrame), not to "
                        f"{type(X).__name__}")
    if isinstance(X, (str, os.PathLike)):
        return ArraySource(open_npy(X, name), name, dim, read_rows)
    if hasattr(X, "shape") and hasattr(X, "dtype") or hasattr(X, "__array__") or hasattr(X, "__array_interface__"):
        return ArraySource(X, name, dim, read_rows)
    if isinstance(X, (list, tuple)):
        if len(X) and np.ndim(X[0]) == 2:
            return ChunkedSource(X, name, dim)
        return ArraySource(X, name, dim, read_rows)
    if isinstance(X, (bytes, bytearray, memoryview, dict)) or not hasattr(X, "__iter__"):
        return ArraySource(X, name, dim, read_rows)
    if isinstance(X, collections.abc.Iterator):  # one-shot: next() consumes it
        return ArraySource(spool(X, name, dim, spool_dir), name, dim, read_rows)
    return IterableSource(X, name, dim)


def _peek(iterator: Iterator[Any]) -> tuple[Iterator[Any], Any]:
    """``(the same iterator, its first item)`` without losing the item (None when it is empty)."""
    import itertools

    for first in iterator:
        return itertools.chain([first], iterator), first
    return iter(()), None
