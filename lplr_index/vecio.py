"""Reading and writing vector files: .npy, .npz, .fvecs, .bvecs, .ivecs and ANN-benchmarks .hdf5.

Every reader memory-maps where the format allows it, so a file larger than
memory is never read whole: ``.npy`` through ``numpy.load(mmap_mode="r")``,
the ``*vecs`` formats through a structured :class:`numpy.memmap` whose vector
field is a strided ``(n, dim)`` view that skips each row's int32 dimension
header, and uncompressed contiguous HDF5 datasets (what ANN-benchmarks writes)
through a memmap at the dataset's offset. ``.npz`` members and chunked or
compressed HDF5 datasets are read into memory.

The ``*vecs`` formats (the TEXMEX corpus: SIFT1M, GIST1M, BIGANN) store each
row as a little-endian int32 dimension ``d`` followed by ``d`` values: float32
(``.fvecs``), uint8 (``.bvecs``) or int32 (``.ivecs``, e.g. ground truth).
An ANN-benchmarks ``.hdf5`` file holds the datasets ``train`` (database),
``test`` (queries), ``neighbors`` (int32 ids of the exact neighbours of each
query) and ``distances``, and its ``distance`` attribute names the metric.
Reading it needs the optional extra ``lplr-index[hdf5]`` (h5py), imported only
when such a file is read.

A file that cannot be read raises :class:`VectorFileError` (a ``ValueError``)
whose one-line message names the file and what is wrong with it. A member of an
``.npz`` or ``.hdf5`` file is chosen with ``dataset=`` or as ``PATH:NAME``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from numpy.typing import DTypeLike, NDArray

__all__ = [
    "VectorFileError",
    "FORMATS",
    "read_array",
    "read_vectors",
    "read_ids",
    "read_ground_truth",
    "hdf5_datasets",
    "hdf5_metric",
    "iter_row_blocks",
    "write_fvecs",
    "write_bvecs",
    "write_ivecs",
]

#: file suffixes read by :func:`read_array` (lower case)
FORMATS = (".npy", ".npz", ".fvecs", ".bvecs", ".ivecs", ".hdf5", ".h5")

#: value type of each ``*vecs`` format
_XVECS = {".fvecs": np.dtype("<f4"), ".bvecs": np.dtype("u1"), ".ivecs": np.dtype("<i4")}

#: largest dimension a ``*vecs`` header may declare (guards against reading a
#: float or a text byte as the dimension)
MAX_DIM = 1 << 24

#: rows checked per block (headers, finiteness, conversions): bounded temporaries
_BLOCK_ROWS = 1 << 16

#: row headers of a ``*vecs`` file checked with ``verify=False``
_SAMPLE_ROWS = 1024

#: ANN-benchmarks ``distance`` attribute -> metric of lplr-index
_HDF5_METRICS = {"euclidean": "l2", "angular": "cosine", "ip": "ip", "dot": "ip", "inner_product": "ip"}

_NPY_MAGIC = b"\x93NUMPY"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"


class VectorFileError(ValueError):
    """A vector file that cannot be read; the message names the file and what is wrong."""


# ----------------------------------------------------------------- helpers
def _fail(what: str, path: Path | str, problem: str) -> VectorFileError:
    return VectorFileError(f"{what} file {path} {problem}")


def _resolve(path: str | os.PathLike, dataset: str | None) -> tuple[Path, str | None]:
    """Split ``PATH:NAME`` (a member of an .npz or .hdf5 file) unless ``path`` itself exists."""
    p = Path(path)
    if dataset is None and not p.exists():
        head, sep, name = str(path).rpartition(":")
        if sep and name and Path(head).suffix.lower() in (".npz", ".hdf5", ".h5") and Path(head).exists():
            return Path(head), name
    return p, dataset


def _head(path: Path, n: int = 64) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _describe_start(data: bytes) -> str:
    """What a file that is not in the expected format seems to be, from its first bytes."""
    if data.startswith(_NPY_MAGIC):
        return "it is a NumPy .npy file: name it .npy"
    if data.startswith(_ZIP_MAGIC):
        return "it is a zip archive (an .npz file?): name it .npz"
    if data.startswith(_HDF5_MAGIC):
        return "it is an HDF5 file: name it .hdf5"
    if not data:
        return "it is empty"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return f"it starts with the bytes {data[:8]!r}"
    if all(c.isprintable() or c in "\t\r\n" for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else text[:40]
        return f"it looks like a text file (starts with {first!r}); convert it with numpy.save"
    return f"it starts with the bytes {data[:8]!r}"


def _first_nonfinite(X: np.ndarray) -> tuple[int, ...] | None:
    """Index of the first NaN or inf of a float array, checked in row blocks; None if all finite."""
    if X.dtype.kind != "f" or X.size == 0:
        return None
    if X.ndim == 1:
        X2 = X.reshape(-1, 1)
    else:
        X2 = X.reshape(X.shape[0], -1)
    for s in range(0, X2.shape[0], _BLOCK_ROWS):
        block = X2[s : s + _BLOCK_ROWS]
        if not np.isfinite(block).all():
            r, c = np.argwhere(~np.isfinite(block))[0]
            return (s + int(r),) if X.ndim == 1 else (s + int(r), int(c))
    return None


# ---------------------------------------------------------------- formats
def _read_npy(path: Path, what: str, mmap: bool) -> np.ndarray:
    head = _head(path)
    if not head.startswith(_NPY_MAGIC):
        raise _fail(what, path, f"is not a NumPy .npy file: {_describe_start(head)}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        msg = str(exc)
        if "allow_pickle" in msg or "Object arrays" in msg or "Python objects" in msg:
            # never suggest allow_pickle: loading pickles runs arbitrary code
            raise _fail(what, path, "holds Python objects (dtype object), not numbers; save a numeric array") from None
        raise _fail(what, path, f"is truncated or damaged ({msg})") from None
    except (OSError, EOFError) as exc:
        raise _fail(what, path, f"is truncated or damaged ({exc})") from None


def _read_npz(path: Path, what: str, dataset: str | None) -> np.ndarray:
    head = _head(path)
    if not head.startswith(_ZIP_MAGIC):
        raise _fail(what, path, f"is not an .npz archive: {_describe_start(head)}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if dataset is None:
                if len(names) == 1:
                    dataset = names[0]
                elif "embeddings" in names:
                    dataset = "embeddings"
                else:
                    raise _fail(
                        what, path,
                        f"holds {len(names)} arrays {names}; name one with dataset= or as {path}:NAME",
                    )
            if dataset not in names:
                raise _fail(what, path, f"has no array {dataset!r}; it holds {names}")
            return archive[dataset]
    except VectorFileError:
        raise
    except ValueError as exc:
        if any(m in str(exc) for m in ("allow_pickle", "Object arrays", "Python objects")):
            raise _fail(what, path, f"array {dataset!r} holds Python objects (dtype object), not numbers") from None
        raise _fail(what, path, f"is truncated or damaged ({exc})") from None
    except Exception as exc:  # zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError
        raise _fail(what, path, f"is truncated or damaged ({type(exc).__name__}: {exc})") from None


def _read_xvecs(path: Path, what: str, value: np.dtype, mmap: bool, verify: bool) -> np.ndarray:
    fmt = path.suffix.lower()
    size = path.stat().st_size
    if size < 4:
        raise _fail(what, path, f"is too short for a {fmt} file: {size} bytes, but a row starts with a 4-byte dimension")
    head = _head(path, 4)
    d = int(np.frombuffer(head, "<i4")[0])
    if d <= 0 or d > MAX_DIM:
        raise _fail(
            what, path,
            f"starts with the dimension header {d}, but a dimension must be in [1, {MAX_DIM}] "
            f"(is it really a little-endian {fmt} file? {_describe_start(_head(path))})",
        )
    row = 4 + d * value.itemsize
    if row > size:
        raise _fail(
            what, path,
            f"declares {d} dimensions ({row} bytes a row) in its first header, but holds only {size} bytes",
        )
    n = size // row
    rec_dtype = np.dtype([("dim", "<i4"), ("vec", value, (d,))])
    if mmap:
        rec = np.memmap(path, dtype=rec_dtype, mode="r", shape=(n,))
    else:
        rec = np.fromfile(path, dtype=rec_dtype, count=n)
    dims = rec["dim"]
    # every header (reads the whole file once, block by block) or an evenly spaced sample
    rows = range(n) if verify else np.unique(np.linspace(0, n - 1, min(n, _SAMPLE_ROWS)).astype(np.int64))
    for s in range(0, len(rows), _BLOCK_ROWS):
        block = rows[s : s + _BLOCK_ROWS]
        got = dims[block.start : block.stop] if verify else dims[block]
        bad = np.flatnonzero(got != d)
        if bad.size:
            i = int(block[int(bad[0])])
            raise _fail(
                what, path,
                f"has inconsistent dimension headers: row {i} says {int(dims[i])}, but row 0 says {d} "
                f"(every row of a {fmt} file must have the same dimension)",
            )
    if size != n * row:
        raise _fail(
            what, path,
            f"has {size} bytes, not a multiple of the row size {row} (4-byte header + {d} values of "
            f"{value.itemsize} bytes): the last row is cut after {size - n * row} bytes (truncated?)",
        )
    return rec["vec"]


def _import_h5py(path: Path):
    try:
        import h5py
    except ImportError:
        raise ImportError(
            f"reading {path} (an HDF5 file) needs h5py: install lplr-index[hdf5] "
            "(pip install 'lplr-index[hdf5]')"
        ) from None
    return h5py


def _hdf5_datasets(f, h5py) -> list[str]:
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def _open_hdf5(path: Path, what: str):
    h5py = _import_h5py(path)
    head = _head(path, 8)
    if head != _HDF5_MAGIC:
        raise _fail(what, path, f"is not an HDF5 file: {_describe_start(_head(path))}")
    try:
        return h5py, h5py.File(path, "r")
    except OSError as exc:
        raise _fail(what, path, f"is a damaged HDF5 file ({exc})") from None


def _read_hdf5(path: Path, what: str, dataset: str | None, mmap: bool) -> np.ndarray:
    h5py, f = _open_hdf5(path, what)
    with f:
        names = _hdf5_datasets(f, h5py)
        if dataset is None:
            dataset = "train" if "train" in names or len(names) != 1 else names[0]
        if dataset not in names:
            present = ", ".join(repr(n) for n in names) or "no datasets"
            raise _fail(what, path, f"has no dataset {dataset!r}; it holds {present}")
        ds = f[dataset]
        if ds.dtype.kind not in "biuf" or ds.dtype.fields is not None or ds.shape is None:
            raise _fail(what, path, f"dataset {dataset!r} holds {ds.dtype}, not numbers")
        try:
            offset = ds.id.get_offset()
            plain = mmap and ds.chunks is None and ds.compression is None and offset is not None and ds.size > 0
            if plain:
                return np.memmap(path, dtype=ds.dtype, mode="r", offset=offset, shape=ds.shape)
            return ds[()]
        except (OSError, ValueError) as exc:
            raise _fail(what, path, f"dataset {dataset!r} is damaged ({exc})") from None


# ------------------------------------------------------------------ public
def read_array(
    path: str | os.PathLike,
    *,
    what: str = "array",
    dataset: str | None = None,
    mmap: bool = True,
    verify: bool = True,
) -> np.ndarray:
    """Read the array stored in a vector file, in its stored dtype, memory-mapped where possible.

    Parameters
    ----------
    path : str or path-like
        A ``.npy``, ``.npz``, ``.fvecs``, ``.bvecs``, ``.ivecs``, ``.hdf5`` or
        ``.h5`` file, chosen by suffix. ``PATH:NAME`` names a member of an
        ``.npz`` or ``.hdf5`` file (when ``PATH:NAME`` itself is no file).
    what : str, default="array"
        What the file holds, for messages ("queries file q.fvecs ...").
    dataset : str, default=None
        Member of an ``.npz`` (default: its only array, else ``embeddings``)
        or ``.hdf5`` file (default: ``train``, or its only dataset).
    mmap : bool, default=True
        Map the file read-only instead of reading it (``.npy``, ``*vecs``,
        contiguous uncompressed HDF5 datasets).
    verify : bool, default=True
        Check the dimension header of every row of a ``*vecs`` file (reads
        the file once, in blocks). False checks the file size and 1024 evenly
        spaced headers only: for a huge file of which only a part is read.

    Returns
    -------
    ndarray
        ``*vecs`` files give a read-only ``(n, dim)`` view: float32, uint8 or
        int32; other formats any shape and dtype (object arrays are refused).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    VectorFileError
        The file is malformed; the message names it and says what is wrong.
    ImportError
        An HDF5 file was given and h5py is not installed.
    """
    p, dataset = _resolve(path, dataset)
    if not p.exists():
        raise FileNotFoundError(2, f"{what} file {p} does not exist", str(p))
    if p.is_dir():
        raise _fail(what, p, "is a folder, not a file")
    suffix = p.suffix.lower()
    if suffix not in FORMATS:
        raise _fail(what, p, f"has the suffix {p.suffix!r}; supported formats are {', '.join(FORMATS)}")
    if dataset is not None and suffix not in (".npz", ".hdf5", ".h5"):
        raise _fail(what, p, f"is a {suffix} file, which holds one array: dataset={dataset!r} applies to .npz and .hdf5 files only")
    if suffix == ".npy":
        return _read_npy(p, what, mmap)
    if suffix == ".npz":
        return _read_npz(p, what, dataset)
    if suffix in _XVECS:
        return _read_xvecs(p, what, _XVECS[suffix], mmap, verify)
    return _read_hdf5(p, what, dataset, mmap)


def read_vectors(
    path: str | os.PathLike,
    *,
    what: str = "vectors",
    dataset: str | None = None,
    mmap: bool = True,
    dtype: DTypeLike | None = None,
    verify: bool = True,
) -> NDArray[Any]:
    """Read an ``(n, dim)`` matrix of vectors from any supported file.

    Parameters
    ----------
    path : str or path-like
        See :func:`read_array` for the formats and the ``PATH:NAME`` form.
    what : str, default="vectors"
        What the file holds, for messages.
    dataset : str, default=None
        Member of an ``.npz`` or ``.hdf5`` file; see :func:`read_array`.
    mmap : bool, default=True
        Map the file instead of reading it, where the format allows.
    dtype : dtype, default=None
        None keeps the stored dtype (``.bvecs`` stay uint8 and memory-mapped;
        the index converts the rows it reads). A dtype (e.g. ``np.float32``)
        converts into a new in-memory array, in row blocks.
    verify : bool, default=True
        Check every row: the dimension headers of ``*vecs`` files and, for
        float data, that no value is NaN or inf (reads the file once, in row
        blocks). False checks the file's layout only (see :func:`read_array`)
        and leaves finiteness to the consumer (the index checks what it reads).

    Returns
    -------
    X : ndarray of shape (n, dim)
        Real numbers: float or integer dtype, or ``dtype``.

    Raises
    ------
    FileNotFoundError, VectorFileError, ImportError
        As :func:`read_array`; also when the array is not 2-D, not real
        numbers, empty, or holds NaN or inf.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> X = np.arange(6, dtype=np.float32).reshape(2, 3)
    >>> write_fvecs(os.path.join(folder, "x.fvecs"), X)
    32
    >>> Y = read_vectors(os.path.join(folder, "x.fvecs"))
    >>> Y.shape, Y.dtype, bool((Y == X).all())
    ((2, 3), dtype('float32'), True)
    """
    p, dataset = _resolve(path, dataset)
    X = read_array(p, what=what, dataset=dataset, mmap=mmap, verify=verify)
    if X.dtype.kind not in "fiu":
        raise _fail(what, p, f"must hold real numbers (float or integer dtype), got dtype {X.dtype}")
    if X.ndim != 2:
        raise _fail(what, p, f"must hold a 2-D array (n, dim), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise _fail(what, p, f"must hold at least one vector of at least one dimension, got shape {X.shape}")
    if verify:
        bad = _first_nonfinite(X)
        if bad is not None:
            raise _fail(what, p, f"holds a non-finite value ({X[bad]}) at row {bad[0]}, column {bad[1]}")
    if dtype is not None and X.dtype != np.dtype(dtype):
        out = np.empty(X.shape, dtype)
        for s in range(0, X.shape[0], _BLOCK_ROWS):
            out[s : s + _BLOCK_ROWS] = X[s : s + _BLOCK_ROWS]
        X = out
    return X


def _as_int64(X: np.ndarray, what: str, path: Path) -> NDArray[np.int64]:
    if X.dtype.kind not in "iu":
        raise _fail(what, path, f"must hold integers, got dtype {X.dtype}")
    if X.dtype == np.uint64 and X.size and int(X.max()) > np.iinfo(np.int64).max:
        raise _fail(what, path, f"holds the id {int(X.max())}, larger than the int64 maximum")
    return np.asarray(X, dtype=np.int64)


def read_ids(
    path: str | os.PathLike, *, what: str = "ids", dataset: str | None = None
) -> NDArray[np.int64]:
    """Read a list of integer ids: a 1-D integer array, or one column of them (e.g. ``.ivecs`` of dimension 1).

    Returns
    -------
    ids : ndarray of shape (n,), int64
        Read into memory.

    Raises
    ------
    FileNotFoundError, VectorFileError, ImportError
        As :func:`read_array`; also for non-integer data or another shape.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "ids.npy")
    >>> np.save(path, np.array([10, 20, 30], dtype=np.int32))
    >>> read_ids(path)
    array([10, 20, 30])
    """
    p, dataset = _resolve(path, dataset)
    X = read_array(p, what=what, dataset=dataset, mmap=True)
    if X.ndim == 2 and X.shape[1] == 1:
        X = X[:, 0]
    if X.ndim != 1:
        raise _fail(what, p, f"must hold a 1-D array of ids (n,) or one column (n, 1), got shape {X.shape}")
    return _as_int64(X, what, p)


def read_ground_truth(
    path: str | os.PathLike, *, what: str = "ground truth", dataset: str | None = None
) -> NDArray[np.int64]:
    """Read the exact neighbour ids of each query: ``.ivecs``, ``.npy``, ``.npz`` or ``.hdf5``.

    Parameters
    ----------
    path : str or path-like
    what : str, default="ground truth"
    dataset : str, default=None
        Member of an ``.npz`` or ``.hdf5`` file; ``.hdf5`` files default to
        ``neighbors`` (ANN-benchmarks).

    Returns
    -------
    I_true : ndarray of shape (n_queries, k), int64
        Neighbour ids, best first, read into memory.

    Raises
    ------
    FileNotFoundError, VectorFileError, ImportError
        As :func:`read_array`; also for non-integer data or a shape other than 2-D.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "gt.ivecs")
    >>> write_ivecs(path, np.array([[3, 1], [0, 2]]))
    24
    >>> read_ground_truth(path)
    array([[3, 1],
           [0, 2]])
    """
    p, dataset = _resolve(path, dataset)
    if dataset is None and p.suffix.lower() in (".hdf5", ".h5"):
        dataset = "neighbors"
    X = read_array(p, what=what, dataset=dataset, mmap=True)
    if X.ndim != 2:
        raise _fail(what, p, f"must hold a 2-D array of neighbour ids (n_queries, k), got shape {X.shape}")
    return _as_int64(X, what, p)


def hdf5_datasets(path: str | os.PathLike) -> list[str]:
    """Names of the datasets of an HDF5 file (paths inside groups joined with ``/``).

    Raises
    ------
    FileNotFoundError, VectorFileError, ImportError
        As :func:`read_array`.
    """
    p, _ = _resolve(path, None)
    if not p.exists():
        raise FileNotFoundError(2, f"file {p} does not exist", str(p))
    h5py, f = _open_hdf5(p, "HDF5")
    with f:
        return _hdf5_datasets(f, h5py)


def hdf5_metric(path: str | os.PathLike) -> str | None:
    """The metric of an ANN-benchmarks file, from its ``distance`` attribute.

    Returns ``"l2"`` for ``euclidean``, ``"cosine"`` for ``angular``, ``"ip"``
    for ``ip``/``dot``, and None when the attribute is missing.

    Raises
    ------
    VectorFileError
        The attribute names a metric lplr-index does not have (``jaccard``,
        ``hamming``), or the file is not HDF5.
    """
    p, _ = _resolve(path, None)
    if not p.exists():
        raise FileNotFoundError(2, f"file {p} does not exist", str(p))
    _, f = _open_hdf5(p, "HDF5")
    with f:
        value = f.attrs.get("distance")
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    name = str(value).lower()
    if name not in _HDF5_METRICS:
        raise _fail(
            "HDF5", p,
            f"has the distance {value!r}; lplr-index supports {', '.join(sorted(_HDF5_METRICS))}",
        )
    return _HDF5_METRICS[name]


def iter_row_blocks(
    X: np.ndarray, block_rows: int = _BLOCK_ROWS, dtype: DTypeLike = np.float32
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, X[start:start + block_rows])`` converted to ``dtype``, block by block.

    The way to use a large memory-mapped ``.bvecs`` (uint8) matrix as float32
    without converting it whole.

    Examples
    --------
    >>> import numpy as np
    >>> [(s, b.dtype, b.shape) for s, b in iter_row_blocks(np.zeros((5, 2), np.uint8), 2)]
    [(0, dtype('float32'), (2, 2)), (2, dtype('float32'), (2, 2)), (4, dtype('float32'), (1, 2))]
    """
    if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
        raise ValueError(f"block_rows must be an integer >= 1, got {block_rows!r}")
    for s in range(0, X.shape[0], int(block_rows)):
        yield s, np.ascontiguousarray(X[s : s + block_rows], dtype=dtype)


# ------------------------------------------------------------------ writers
def _write_xvecs(path: str | os.PathLike, X: Any, value: np.dtype, name: str) -> int:
    arr = np.asarray(X)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"X must be a non-empty 2-D array (n, dim) to write {name}, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"X must hold real numbers to write {name}, got dtype {arr.dtype}")
    if value.kind in "iu":
        if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"X must hold whole numbers to write {name}, got fractions")
        info = np.iinfo(value)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise ValueError(
                f"X must hold values in [{info.min}, {info.max}] to write {name}, "
                f"got values in [{arr.min()}, {arr.max()}]"
            )
    elif not np.isfinite(arr).all():
        raise ValueError(f"X must be finite to write {name}")
    n, d = arr.shape
    rec = np.empty(n, np.dtype([("dim", "<i4"), ("vec", value, (d,))]))
    rec["dim"] = d
    rec["vec"] = arr
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        rec.tofile(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return rec.nbytes


def write_fvecs(path: str | os.PathLike, X: Any) -> int:
    """Write an ``(n, dim)`` matrix as ``.fvecs`` (float32 rows, each after an int32 dimension).

    The file is written to a temporary name and renamed. Returns the bytes written.
    """
    return _write_xvecs(path, X, _XVECS[".fvecs"], ".fvecs")


def write_bvecs(path: str | os.PathLike, X: Any) -> int:
    """Write an ``(n, dim)`` matrix of integers in [0, 255] as ``.bvecs`` (uint8 rows). Returns the bytes written."""
    return _write_xvecs(path, X, _XVECS[".bvecs"], ".bvecs")


def write_ivecs(path: str | os.PathLike, X: Any) -> int:
    """Write an ``(n, k)`` matrix of int32 values (e.g. ground-truth ids) as ``.ivecs``. Returns the bytes written."""
    return _write_xvecs(path, X, _XVECS[".ivecs"], ".ivecs")
