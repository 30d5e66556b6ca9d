"""Parquet and Arrow input: vectors stored as a column of a Parquet dataset or an Arrow table.

Embedding sets are shipped as Parquet (Hugging Face datasets, LAION-style
embedding dumps, Spark and Dask output, LanceDB and pandas exports): one
column of vectors beside ids and metadata, often split across many files.
:class:`ParquetSource` serves such a column as a *source* of
:mod:`lplr_index._blocks` (``n``, ``dim``, ``blocks()``, ``take(rows)``), so
``LPLRIndex.build``/``add`` stream it in canonical row blocks exactly as they
stream a memory-mapped ``.npy`` file: the same rows give the same index, byte
for byte.

What it reads
-------------
- a path to a Parquet file (``.parquet``, ``.pq``, ``.parq``), a folder of
  them (a dataset: a folder with a Parquet file below it; every file below it
  is read, hidden and ``_``-prefixed names skipped), a glob (``"emb/part-*.parquet"``), a list of paths, or a
  ``pyarrow.dataset.Dataset``; rows in the order of ``pyarrow.dataset``: files
  sorted by path (as ``pandas.read_parquet`` and ``pyarrow.parquet.read_table``
  read a folder; ``dask.dataframe.read_parquet`` puts ``part.10`` after
  ``part.9`` instead), row groups in file order;
- an in-memory ``pyarrow.Table``, ``RecordBatch``, ``ChunkedArray`` or
  ``Array`` (the vector column itself), or a pandas DataFrame (with ``column=``);
- a one-shot ``pyarrow.RecordBatchReader`` or iterator of record batches:
  spooled once to a temporary ``.npy`` like any one-shot iterator.

The vector column (``column=``; by default the only column of vectors) is a
``list``, ``large_list`` or ``fixed_size_list`` of float16, float32, float64
or integers, a ``fixed_size_binary``/``binary`` column of raw little-endian
float32 vectors, or an extension type stored as one of these (Arrow's
``fixed_shape_tensor``). ``id_column=`` names a column of integer user ids,
read in the same order.

Memory
------
One record batch of ``read_rows`` rows (a part of one row group) is decoded at
a time, then re-blocked; Arrow's readahead is off. Peak memory is a few
canonical blocks plus the compressed column chunk of the row group being read,
whatever the dataset's size. Each pass of the fit reads the vector column
again (the fit makes two to four passes, plus one for the seeded sample, which
reads only the row groups holding sampled rows).

Errors
------
A ragged row, a null vector or null value, vectors of another dimension, a
column of strings or other non-numbers, a missing column, a NaN: a
:class:`lplr_index.vecio.VectorFileError` (a ``ValueError``) naming the file,
the row group and the column, with the row counted from the file's first row.

pyarrow is the optional extra ``lplr-index[parquet]``; this module imports it
only when a Parquet or Arrow input is read (``import lplr_index`` never does).
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ._blocks import BLOCK_ROWS, ArraySource, IterableSource, check_block, check_read_rows, spool
from .vecio import VectorFileError

__all__ = ["ParquetSource", "PARQUET_SUFFIXES", "INSTALL_HINT", "is_parquet_path", "is_arrow", "open_arrow"]

#: file suffixes taken for Parquet files (lower case)
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
#: how to install what this module needs
INSTALL_HINT = 'pip install "lplr-index[parquet]"'


def import_pyarrow():
    """``(pyarrow, pyarrow.dataset)``, or an ImportError that says how to install them."""
    try:
        import pyarrow
        import pyarrow.dataset
    except ImportError as exc:
        raise ImportError(f"reading Parquet or Arrow data needs pyarrow: {INSTALL_HINT} ({exc})") from None
    return pyarrow, pyarrow.dataset


def is_arrow(X: Any) -> bool:
    """Whether ``X`` is a pyarrow object (a table, batch, array, reader or dataset); imports nothing."""
    return type(X).__module__.split(".")[0] == "pyarrow"


def _is_dataframe(X: Any) -> bool:
    return type(X).__module__.split(".")[0] == "pandas" and hasattr(X, "columns")


def is_parquet_path(X: Any) -> bool:
    """Whether a path names Parquet data: a Parquet suffix, a folder, a glob or a URI; imports nothing."""
    if isinstance(X, (list, tuple)):
        return bool(X) and all(is_parquet_path(p) for p in X)
    if not isinstance(X, (str, os.PathLike)):
        return False
    text = os.fspath(X)
    if not isinstance(text, str):
        return False
    if text.lower().rstrip("/").endswith(PARQUET_SUFFIXES) or "://" in text:
        return True
    if os.path.isdir(text):  # a dataset: a folder holding Parquet files (not a folder given by mistake)
        return _holds_parquet(text)
    return glob.has_magic(text) and not os.path.exists(text)


def _holds_parquet(folder: str) -> bool:
    for _, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
        if any(f.lower().endswith(PARQUET_SUFFIXES) and not f.startswith((".", "_")) for f in files):
            return True
    return False


def accepts(X: Any) -> bool:
    """Whether :func:`open_arrow` reads ``X`` (a Parquet path or a pyarrow object); imports nothing."""
    return is_arrow(X) or is_parquet_path(X)


# ------------------------------------------------------------- the column
class _Kind:
    """How a column's Arrow type holds vectors: ``list``/``fixed`` lists of numbers or raw float32 ``binary``."""

    __slots__ = ("layout", "size", "value", "type")

    def __init__(self, layout: str, size: int | None, value: Any, type_: Any):
        self.layout, self.size, self.value, self.type = layout, size, value, type_


def _kind_of(pa, t) -> _Kind | None:
    """The vector layout of Arrow type ``t`` (an extension type by its storage), or None if it holds no vectors."""
    original = t
    while isinstance(t, pa.BaseExtensionType):
        t = t.storage_type
    types = pa.types
    if types.is_fixed_size_list(t):
        return _Kind("fixed", t.list_size, t.value_type, original)
    if types.is_list(t) or types.is_large_list(t) or types.is_list_view(t) or types.is_large_list_view(t):
        return _Kind("list", None, t.value_type, original)
    if types.is_fixed_size_binary(t):
        return _Kind("binary", t.byte_width, None, original)
    if types.is_binary(t) or types.is_large_binary(t) or types.is_binary_view(t):
        return _Kind("binary", None, None, original)
    return None


def _numeric(pa, value) -> bool:
    return value is None or pa.types.is_floating(value) or pa.types.is_integer(value)


def _describe_type(t) -> str:
    return str(t).replace("<element: ", "<").replace("<item: ", "<")


class _Part:
    """A run of rows read as one unit: a row group of a Parquet file, a fragment, or an in-memory chunk.

    ``read(columns, batch_rows)`` yields record batches of those columns, in order;
    ``where`` is the place in messages ("file F, row group G"); ``file_row`` the
    part's first row within its file (or table).
    """

    __slots__ = ("where", "n", "start", "file_row", "read", "schema", "path", "group")

    def __init__(self, where: str, n: int, file_row: int, read: Callable, schema: Any, path: str | None,
                 group: int | None = None):
        self.where, self.n, self.file_row, self.read, self.schema, self.path = where, n, file_row, read, schema, path
        self.group = group
        self.start = 0


def _unique_paths(items: Iterable[str]) -> list[str]:
    seen, out = set(), []
    for p in items:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


class ParquetSource(IterableSource):
    """The vectors of a column of Parquet files or Arrow data, served in canonical row blocks.

    A source of :mod:`lplr_index._blocks`: ``LPLRIndex.build``/``add`` take it
    as they take an array (they also make one from a Parquet path or a pyarrow
    object given with ``column=``). The row count and the dimension come from
    the files' metadata (and, for variable-size lists, the first row), so no
    counting pass is made; each pass reads the files again, one record batch at
    a time.

    Parameters
    ----------
    data : str, path-like, list of paths, pyarrow.dataset.Dataset, pyarrow.Table, pyarrow.RecordBatch, \
pyarrow.ChunkedArray, pyarrow.Array or pandas.DataFrame
        A Parquet file, a folder of Parquet files (every file below it), a glob
        pattern, a list of files, a dataset, or in-memory Arrow data. A
        ``ChunkedArray`` or ``Array`` is the vector column itself. One-shot
        readers are taken by :func:`open_arrow` (spooled).
    column : str, default=None
        The vector column: a list or fixed-size list of floats or integers, or
        a binary column of raw little-endian float32 vectors. None: the only
        column of lists of numbers or fixed-size binary values.
    id_column : str, default=None
        A column of integer user ids, read by :meth:`read_ids` in the same row
        order (``build`` and ``add`` store them as the vectors' ids).
    name : str, default="X"
        The argument's name in messages.
    dim : int, default=None
        Required dimension (None: the column's).
    read_rows : int, default=None
        Rows decoded at a time (:data:`lplr_index._blocks.BLOCK_ROWS` when
        None); the index does not depend on it.

    Raises
    ------
    ImportError
        pyarrow is not installed (``pip install "lplr-index[parquet]"``).
    FileNotFoundError
        A path or glob that names no file.
    VectorFileError
        A missing or non-vector column, vectors of other dimensions in
        different files, or (while reading) a ragged row, a null, a NaN; the
        message names the file, the row group and the column.
    """

    def __init__(self, data: Any, column: str | None = None, id_column: str | None = None, *,
                 name: str = "X", dim: int | None = None, read_rows: int | None = None):
        pa, ds = import_pyarrow()
        self._pa = pa
        self.name = name
        self.read_rows = BLOCK_ROWS if read_rows is None else check_read_rows(read_rows)
        self.column, self.id_column = column, id_column
        self.iterable = self
        if _is_dataframe(data):
            data = _from_pandas(pa, data, column, id_column, name)
        if isinstance(data, (pa.Array, pa.ChunkedArray)):
            if id_column is not None:
                raise TypeError(f"{name}: id_column={id_column!r} needs a table; an Arrow array is only the "
                                "vector column")
            data = pa.table({"vectors" if column is None else column: data})
            column = self.column = data.column_names[0]
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        if isinstance(data, pa.Table):
            self.origin = "table"
            schema = data.schema
            self.parts = _table_parts(data, schema)
            schemas = [(None, schema)]
        else:
            dataset = data if isinstance(data, ds.Dataset) else _open_dataset(ds, data, name)
            self.origin = "dataset"
            self.parts = _dataset_parts(ds, dataset, name)
            schemas = _unique_schemas(self.parts)
        self.column = column = self._pick_column(schemas, column)
        if id_column is not None:
            self._check_id_column(schemas, id_column)
        start = 0
        for part in self.parts:
            part.start = start
            start += part.n
        self._n = start
        if self._n == 0:
            raise VectorFileError(f"{name}: {self._origin_text()} holds no rows")
        self._kinds = {id(schema): _kind_of(pa, schema.field(column).type) for _, schema in schemas}
        self._dim = self._find_dim(schemas)
        if dim is not None and self._dim != dim:
            raise ValueError(f"{name} has {self._dim} dimensions (column {column!r}), but this index holds "
                             f"{dim}-dimensional vectors")

    # -------------------------------------------------------------- metadata
    def _origin_text(self) -> str:
        if self.origin == "table":
            return "the table"
        files = _unique_paths(p.path for p in self.parts if p.path is not None)
        if len(files) == 1:
            return f"file {files[0]}"
        return f"the dataset of {len(files)} files"

    def _pick_column(self, schemas, column: str | None) -> str:
        pa = self._pa
        path, schema = schemas[0]
        where = f"file {path}" if path is not None else "the table"
        if column is None:
            found = [f.name for f in schema
                     if (k := _kind_of(pa, f.type)) is not None and _numeric(pa, k.value)
                     and (k.layout != "binary" or k.size is not None)]
            if len(found) != 1:
                listing = ", ".join(f"{f.name!r} ({_describe_type(f.type)})" for f in schema) or "no columns"
                what = "no column" if not found else f"{len(found)} columns ({', '.join(map(repr, found))})"
                raise VectorFileError(
                    f"{self.name}: {where} has {what} of vectors (lists of numbers); name the vector column with "
                    f"column= (--column): its columns are {listing}")
            column = found[0]
        for path, schema in schemas:
            where, t = self._field_type(path, schema, column, "column")
            kind = _kind_of(pa, t)
            if kind is None or not _numeric(pa, kind.value):
                raise VectorFileError(
                    f"{self.name}: {where}, column {column!r} holds {_describe_type(t)}, not vectors: the vector "
                    "column must be a list or fixed_size_list of floats (float16, float32, float64) or integers, "
                    "or binary values of raw float32")
            if kind.layout == "binary" and kind.size is not None and (kind.size % 4 or kind.size == 0):
                raise VectorFileError(
                    f"{self.name}: {where}, column {column!r} holds binary values of {kind.size} bytes, not raw "
                    "float32 vectors (a multiple of 4 bytes)")
        return column

    def _field_type(self, path, schema, name: str, what: str):
        """``(where, type)`` of the column ``name`` in one file's (or the table's) schema; a
        missing column is a :class:`VectorFileError` naming the file and the columns it has."""
        where = f"file {path}" if path is not None else "the table"
        if schema.get_field_index(name) < 0:
            raise VectorFileError(f"{self.name}: {where} has no {what} {name!r}; its columns are "
                                  f"{', '.join(map(repr, schema.names)) or 'none'}")
        return where, schema.field(name).type

    def _check_id_column(self, schemas, id_column: str) -> None:
        pa = self._pa
        for path, schema in schemas:
            where, t = self._field_type(path, schema, id_column, "id column")
            if not pa.types.is_integer(t):
                raise VectorFileError(f"{self.name}: {where}, id column {id_column!r} holds {_describe_type(t)}, "
                                      "not integers")

    def _find_dim(self, schemas) -> int:
        """The vectors' dimension: every file's fixed size, else the first row's length."""
        dims: dict[int, str] = {}
        for path, schema in schemas:
            kind = self._kinds[id(schema)]
            if kind.size is not None:
                d = kind.size // 4 if kind.layout == "binary" else kind.size
                dims.setdefault(d, f"file {path}" if path is not None else "the table")
        if len(dims) > 1:
            (d0, w0), (d1, w1) = list(dims.items())[:2]
            raise VectorFileError(f"{self.name}: column {self.column!r} holds {d0}-dimensional vectors in {w0} but "
                                  f"{d1}-dimensional ones in {w1}: every vector must have the same dimension")
        if dims and all(self._kinds[id(s)].size is not None for _, s in schemas):
            d = next(iter(dims))
        else:
            part = next(p for p in self.parts if p.n)
            batch = next(b for b in part.read([self.column], 1) if b.num_rows)
            d = _row_length(self._pa, batch.column(0), self._kinds[id(part.schema)])
            if d is None:
                raise VectorFileError(f"{self.name}: {part.where}, column {self.column!r}: row {part.file_row} is "
                                      "null (a missing vector); drop the rows without vectors first")
            if dims and next(iter(dims)) != d:
                raise VectorFileError(
                    f"{self.name}: column {self.column!r} holds {next(iter(dims))}-dimensional vectors in "
                    f"{next(iter(dims.values()))} but {d}-dimensional ones in {part.where}: every vector must "
                    "have the same dimension")
        if d == 0:
            raise VectorFileError(f"{self.name}: column {self.column!r} holds empty vectors (0 values a row)")
        return d

    # ---------------------------------------------------------------- reading
    @property
    def shape(self) -> tuple[int, int]:
        """``(n, dim)``."""
        return self.n, self.dim

    def __len__(self) -> int:
        return self.n

    @property
    def files(self) -> list[str]:
        """The files read, in row order (empty for in-memory data)."""
        return _unique_paths(p.path for p in self.parts if p.path is not None)

    def _part_pieces(self, part: _Part) -> Iterator[np.ndarray]:
        """The vectors of one part as float32 blocks of at most ``read_rows`` rows (checked)."""
        kind = self._kinds[id(part.schema)]
        row = part.file_row
        where = f"{self.name}: {part.where}, column {self.column!r}"
        for batch in part.read([self.column], self.read_rows):
            m = _matrix(self._pa, batch.column(0), kind, self._dim, where, row)
            try:  # rows numbered from the file's first row in messages
                block = check_block(m, f"{where}: the vectors", row, self._dim)
            except ValueError as exc:
                raise VectorFileError(re.sub(r", column (\d+)$", r", position \1 of the vector", str(exc))) from None
            yield block
            row += len(m)

    def __iter__(self) -> Iterator[np.ndarray]:
        """The vectors, one block of at most ``read_rows`` rows at a time (float32; one pass)."""
        for part in self.parts:
            yield from self._part_pieces(part)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows at sorted indices ``rows``, float32: reads only the row groups holding them."""
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), self.dim), np.float32)
        for part in self.parts:
            a, b = np.searchsorted(rows, [part.start, part.start + part.n])
            if a == b:
                continue
            s = part.start
            for piece in self._part_pieces(part):
                lo, hi = np.searchsorted(rows[a:b], [s, s + len(piece)])
                out[a + lo : a + hi] = piece[rows[a + lo : a + hi] - s]
                s += len(piece)
        return out

    def read(self) -> np.ndarray:
        """All the vectors in memory: float32, shape (n, dim)."""
        out = np.empty((self.n, self.dim), np.float32)
        s = 0
        for piece in self:
            out[s : s + len(piece)] = piece
            s += len(piece)
        if s != self.n:
            raise VectorFileError(f"{self.name}: {self._origin_text()} gave {s} rows, but its metadata says {self.n}")
        return out

    def read_ids(self) -> np.ndarray:
        """The ``id_column`` as int64, in row order (one pass over that column only)."""
        if self.id_column is None:
            raise ValueError(f"{self.name}: no id_column was given")
        out = np.empty(self.n, np.int64)
        s = 0
        for part in self.parts:
            row = part.file_row
            for batch in part.read([self.id_column], self.read_rows):
                arr = batch.column(0)
                if arr.null_count:
                    r = row + int(np.flatnonzero(~np.asarray(arr.is_valid()))[0])
                    raise VectorFileError(f"{self.name}: {part.where}, id column {self.id_column!r}: row {r} "
                                          "has no id (null)")
                vals = arr.to_numpy(zero_copy_only=False)
                if vals.dtype == np.uint64 and len(vals) and int(vals.max()) > np.iinfo(np.int64).max:
                    raise VectorFileError(f"{self.name}: {part.where}, id column {self.id_column!r} holds the id "
                                          f"{int(vals.max())}, above the int64 maximum")
                out[s : s + len(vals)] = vals
                s += len(vals)
                row += len(vals)
        if s != self.n:
            raise VectorFileError(f"{self.name}: {self._origin_text()} gave {s} ids, but {self.n} rows")
        return out

    def __repr__(self) -> str:
        return (f"ParquetSource({self._origin_text()}, column={self.column!r}, id_column={self.id_column!r}, "
                f"n={self.n}, dim={self.dim})")


# ------------------------------------------------------------------ parts
def _open_dataset(ds, data: Any, name: str):
    """A ``pyarrow.dataset`` of Parquet files from a path, a folder, a glob or a list of paths."""
    if isinstance(data, (list, tuple)):
        paths = [os.fspath(p) for p in data]
        if not paths:
            raise ValueError(f"{name}: an empty list of Parquet files")
        for p in paths:
            if "://" not in p and not os.path.exists(p):
                raise FileNotFoundError(2, f"{name}: Parquet file {p} does not exist", p)
        source: Any = paths
        shown = f"the {len(paths)} files {paths[0]}, ..."
    else:
        text = os.fspath(data)
        if "://" not in text and not os.path.exists(text):
            if glob.has_magic(text):
                paths = sorted(glob.glob(text, recursive=True))
                paths = [p for p in paths if os.path.isfile(p)]
                if not paths:
                    raise FileNotFoundError(2, f"{name}: no file matches the pattern {text}", text)
                source, shown = paths, f"the {len(paths)} files of {text}"
            else:
                raise FileNotFoundError(2, f"{name}: Parquet file or folder {text} does not exist", text)
        else:
            source, shown = text, text
    try:
        return ds.dataset(source, format="parquet")
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
        raise VectorFileError(f"{name}: cannot read {shown} as Parquet ({_short(exc)})") from None


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _dataset_parts(ds, dataset, name: str) -> list[_Part]:
    """A part per row group of every Parquet file of ``dataset`` (per fragment otherwise), in order."""
    parts: list[_Part] = []
    for frag in dataset.get_fragments():
        path = getattr(frag, "path", None) or "?"
        try:
            schema = frag.physical_schema
            if isinstance(frag, ds.ParquetFileFragment):
                meta = frag.metadata
                groups = [(g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
            else:
                groups = [(None, frag.count_rows())]
        except (OSError, ValueError) as exc:
            raise VectorFileError(f"{name}: file {path} is not a readable Parquet file ({_short(exc)})") from None
        row = 0
        for g, n in groups:
            where = f"file {path}" + ("" if g is None else f", row group {g}")
            parts.append(_Part(where, int(n), row, _fragment_reader(frag, g, where, name), schema, path, g))
            row += int(n)
    return parts


def _fragment_reader(frag, group: int | None, where: str, name: str) -> Callable:
    def read(columns: list[str], batch_rows: int):
        piece = frag if group is None else frag.subset(row_group_ids=[group])
        try:
            # readahead off: one batch in memory at a time
            yield from piece.to_batches(columns=columns, batch_size=batch_rows, batch_readahead=0,
                                        fragment_readahead=0, use_threads=False)
        except (OSError, ValueError) as exc:
            raise VectorFileError(f"{name}: {where} cannot be read ({_short(exc)})") from None

    return read


def _unique_schemas(parts: Sequence[_Part]) -> list[tuple[str | None, Any]]:
    """``(first file, schema)`` of each distinct schema object of the parts (files share few schemas)."""
    seen: dict[int, tuple[str | None, Any]] = {}
    by_value: list[tuple[str | None, Any]] = []
    for part in parts:
        key = id(part.schema)
        if key in seen:
            part.schema = seen[key][1]
            continue
        for path, schema in by_value:
            if schema.equals(part.schema):
                part.schema = schema
                seen[key] = (path, schema)
                break
        else:
            seen[key] = (part.path, part.schema)
            by_value.append((part.path, part.schema))
    return by_value


def _table_parts(table, schema) -> list[_Part]:
    """A part per record batch of an in-memory table (rows numbered from the table's first)."""
    batches = [b for b in table.to_batches() if b.num_rows]
    parts, row = [], 0
    for batch in batches:
        where = f"the table (rows {row}-{row + batch.num_rows - 1})" if len(batches) > 1 else "the table"
        parts.append(_Part(where, batch.num_rows, row, _batch_reader(batch), schema, None))
        row += batch.num_rows
    return parts


def _batch_reader(batch) -> Callable:
    def read(columns: list[str], batch_rows: int):
        sub = batch.select(columns)
        for s in range(0, sub.num_rows, batch_rows):
            yield sub.slice(s, batch_rows)

    return read


def _from_pandas(pa, df, column: str | None, id_column: str | None, name: str):
    """The vector (and id) columns of a pandas DataFrame as an Arrow table."""
    if column is None:
        raise TypeError(f"{name}: a pandas DataFrame needs column= naming its vector column")
    cols = [c for c in (column, id_column) if c is not None]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise VectorFileError(f"{name}: the DataFrame has no column {missing[0]!r}; its columns are "
                              f"{', '.join(map(repr, map(str, df.columns)))}")
    try:
        return pa.Table.from_pandas(df[cols], preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise VectorFileError(f"{name}: the DataFrame's column {column!r} does not convert to Arrow lists of "
                              f"numbers ({_short(exc)})") from None


# -------------------------------------------------------------- conversion
def _row_length(pa, arr, kind: _Kind) -> int | None:
    """Length of the first row of ``arr`` (values, or float32s for binary), None if it is null."""
    arr = _storage(pa, arr)
    if not arr.is_valid()[0].as_py():
        return None
    if kind.layout == "binary":
        return len(arr[0].as_py()) // 4
    return len(arr[0].values) if hasattr(arr[0], "values") else len(arr[0])


def _storage(pa, arr):
    while isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    if pa.types.is_list_view(t):
        arr = arr.cast(pa.list_(t.value_type))
    elif pa.types.is_large_list_view(t):
        arr = arr.cast(pa.large_list(t.value_type))
    elif pa.types.is_binary_view(t):
        arr = arr.cast(pa.binary())
    return arr


def _null_row(arr) -> int:
    return int(np.flatnonzero(~np.asarray(arr.is_valid()))[0])


def _matrix(pa, arr, kind: _Kind, dim: int, where: str, row: int) -> np.ndarray:
    """A column chunk of vectors as an ``(len, dim)`` array in its stored dtype (float16/32/64, int).

    ``where`` names the file, row group and column; ``row`` is the chunk's first
    row in its file (the rows named in errors).
    """
    arr = _storage(pa, arr)
    n = len(arr)
    if arr.null_count:
        r = row + _null_row(arr)
        raise VectorFileError(f"{where}: row {r} is null (a missing vector); drop or fill the rows without "
                              "vectors first")
    if kind.layout == "binary":
        return _binary_matrix(pa, arr, dim, where, row)
    if kind.layout == "fixed":
        size = arr.type.list_size
        if size != dim:
            raise VectorFileError(f"{where}: holds {size}-dimensional vectors, but the vectors before have {dim} "
                                  "dimensions")
        values = arr.values.slice(arr.offset * size, n * size)
        lengths = None
    else:
        offsets = np.asarray(arr.offsets)
        lengths = np.diff(offsets)
        bad = np.flatnonzero(lengths != dim)
        if bad.size:
            r = int(bad[0])
            raise VectorFileError(
                f"{where}: row {row + r} has {int(lengths[r])} values, but the vectors have {dim} dimensions "
                "(ragged rows: every vector must have the same length)")
        values = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    if not _numeric(pa, values.type):
        raise VectorFileError(f"{where}: holds lists of {values.type}, not numbers")
    if values.null_count:
        i = _null_row(values)
        raise VectorFileError(f"{where}: row {row + i // dim} has a null value at position {i % dim} of the vector")
    out = values.to_numpy(zero_copy_only=False)
    return out.reshape(n, dim)


def _binary_matrix(pa, arr, dim: int, where: str, row: int) -> np.ndarray:
    """Binary values of raw little-endian float32 vectors as an ``(len, dim)`` float32 array (a view)."""
    n, width = len(arr), 4 * dim
    buffers = arr.buffers()
    if pa.types.is_fixed_size_binary(arr.type):
        if arr.type.byte_width != width:
            raise VectorFileError(f"{where}: holds binary vectors of {arr.type.byte_width} bytes "
                                  f"({arr.type.byte_width / 4:g} float32 values), but the vectors have {dim} "
                                  "dimensions")
        data = np.frombuffer(buffers[1], np.uint8)[arr.offset * width : (arr.offset + n) * width]
    else:
        otype = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
        offsets = np.frombuffer(buffers[1], otype)[arr.offset : arr.offset + n + 1]
        lengths = np.diff(offsets)
        bad = np.flatnonzero(lengths != width)
        if bad.size:
            r = int(bad[0])
            raise VectorFileError(
                f"{where}: row {row + r} holds {int(lengths[r])} bytes, but a vector of {dim} float32 values takes "
                f"{width} (ragged rows, or not raw float32 vectors)")
        data = np.frombuffer(buffers[2], np.uint8)[int(offsets[0]) : int(offsets[-1])] if n else np.zeros(0, np.uint8)
    return data.view("<f4").reshape(n, dim)


# --------------------------------------------------------------- dispatch
def open_arrow(X: Any, name: str = "X", dim: int | None = None, *, column: str | None = None,
               id_column: str | None = None, read_rows: int | None = None,
               spool_dir: str | os.PathLike | None = None):
    """The source of a Parquet path or a pyarrow object (the Parquet branch of ``open_source``).

    A one-shot ``RecordBatchReader`` (or an iterator of record batches or
    tables, see :func:`spool_batches`) is spooled once to a temporary ``.npy``;
    anything else becomes a :class:`ParquetSource`.
    """
    pa, _ = import_pyarrow()
    if isinstance(X, pa.RecordBatchReader):
        return spool_batches(iter(X), name, dim, column=column, id_column=id_column, read_rows=read_rows,
                             spool_dir=spool_dir)
    return ParquetSource(X, column, id_column, name=name, dim=dim, read_rows=read_rows)


class _SpooledSource(ArraySource):
    """A spooled one-shot stream of record batches, with the ids read on the way."""

    def __init__(self, X, ids, id_column, name, dim, read_rows):
        super().__init__(X, name, dim, read_rows)
        self._ids, self.id_column = ids, id_column

    def read_ids(self) -> np.ndarray:
        return self._ids


def spool_batches(batches: Iterator[Any], name: str = "X", dim: int | None = None, *, column: str | None = None,
                  id_column: str | None = None, read_rows: int | None = None,
                  spool_dir: str | os.PathLike | None = None) -> ArraySource:
    """A one-shot stream of record batches (or tables), spooled once to a temporary ``.npy`` and mapped.

    Each batch is read as a :class:`ParquetSource` (its errors name the batch);
    the ids of ``id_column`` are collected on the way (8 bytes a row).
    """
    ids: list[np.ndarray] = []
    state: dict[str, Any] = {"column": column, "dim": dim}

    def pieces():
        for k, batch in enumerate(batches):
            if not is_arrow(batch):
                raise TypeError(f"{name}: item {k} of the stream is a {type(batch).__name__}, not an Arrow "
                                "record batch or table")
            if not batch.num_rows:
                continue
            src = ParquetSource(batch, state["column"], id_column, name=f"{name}: record batch {k}",
                                dim=state["dim"], read_rows=read_rows)
            state["column"], state["dim"] = src.column, src.dim
            yield from src
            if id_column is not None:
                ids.append(src.read_ids())

    X = spool(pieces(), name, dim, spool_dir)
    got = np.concatenate(ids) if id_column is not None else None
    return _SpooledSource(X, got, id_column, name, dim, read_rows)


# ------------------------------------------------------------ per-part tasks
def parts_of(data: Any, column: str | None = None, *, name: str = "X") -> tuple[ParquetSource, list[tuple]]:
    """A Parquet dataset's source and one ``(file, row group, rows, first row in the file)`` per
    non-empty row group, in row order: the tasks of a distributed read (:func:`read_part`)."""
    source = ParquetSource(data, column, name=name)
    if source.origin != "dataset":
        raise TypeError(f"{name}: a distributed read needs Parquet files (a path, a folder, a glob or a list "
                        "of files), not in-memory Arrow data")
    tasks = [(part.path, part.group, part.n, part.file_row) for part in source.parts if part.n]
    return source, tasks


def read_part(path: str, group: int | None, n: int, file_row: int, column: str, dim: int,
              name: str = "X") -> np.ndarray:
    """One row group of one Parquet file's vector column as float32 ``(n, dim)``, checked (on a worker)."""
    source = ParquetSource(path, column, name=name, dim=dim)
    want = [p for p in source.parts if p.file_row == file_row and p.group == group]
    if len(want) != 1 or want[0].n != n:
        raise VectorFileError(f"{name}: file {path} changed since the dataset was planned (row group {group} of "
                              f"{n} rows is not there any more)")
    out = np.empty((n, dim), np.float32)
    s = 0
    for piece in source._part_pieces(want[0]):
        out[s : s + len(piece)] = piece
        s += len(piece)
    return out
