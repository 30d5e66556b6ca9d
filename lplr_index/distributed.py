"""Build and search on a Dask cluster (the optional extra ``pip install lplr-index[dask]``).

``import lplr_index`` never imports this module (nor dask); it needs ``dask``
and ``distributed``.

- :func:`build` builds an :class:`~lplr_index.LPLRIndex` from a ``dask.array``
  on a ``distributed.Client``: the index's own fit (:func:`lplr_index.train.fit`)
  runs its passes through a :class:`DaskExecutor`, which maps each pass's block
  function over the array's canonical row blocks on the workers and hands the
  partial results back in block order, so the file is byte for byte the one a
  local build of the same rows writes (same BLAS thread count per process:
  Dask's nannies start workers with one BLAS thread).
- :class:`ShardedIndex` splits an index's codes into shards held by the
  workers; a query batch is scored on every shard in parallel with the index's
  own backends and the per-shard top-k lists are merged. Shards of a
  partitioned index (``nlist``) share its coarse centroids and hold their rows'
  list numbers: each searches the same ``nprobe`` lists, over its own rows.

Both kinds of codes work: the scalar LPLR codes (:class:`lplr_index.train.Encoder`)
and the grouped 4-bit codes (:class:`lplr_index.vq.VQEncoder`, ``codec="vq"``,
the default with a budget), whose fit (:func:`lplr_index.vq.fit_vq`) runs its
covariance and encoding passes on the workers the same way.

The client process holds the codes (``n * n_codes * bits_l / 8`` bytes), the
seeded sample (16384 rows) and the pass's partial sums; the workers hold the
blocks they are working on.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections import deque
from typing import Any, Callable, Iterator, Sequence

import numpy as np


def _extra_problem(exc: BaseException) -> str:
    """What to tell a user whose ``import dask`` / ``import distributed`` failed.

    Missing packages get the install command; a mismatched pair (distributed pins its
    own dask release line, and an old distributed beside a new dask fails to import)
    gets both versions and the command that installs a matching pair.
    """
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("dask", "distributed"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    if len(found) < 2:
        return f"lplr_index.distributed needs dask and distributed: pip install 'lplr-index[dask]' ({exc})"
    return (f"lplr_index.distributed needs a matching dask and distributed, but dask {found['dask']} and "
            f"distributed {found['distributed']} are installed and do not import together "
            f"({type(exc).__name__}: {exc}); install a matching pair: "
            "pip install --upgrade 'lplr-index[dask]' (or pip install 'distributed==X' 'dask==X' of one release)")


try:
    import dask
    import dask.array as da
    import distributed
    from distributed.scheduler import KilledWorker
except Exception as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(_extra_problem(exc)) from exc

from ._blocks import BLOCK_ROWS, ExecutingSource, check_block
from ._validation import check_choice, check_int
from .index import LPLRIndex, SearchResult, default_rerank_factor
from .search import blas, fastscan
from .search import ivf as ivf_search
from .search.router import MAX_RERANK_FACTOR
from .search.metrics import CodeView, pad_results
from .search.topk import merge_results
from .fileformat import IndexFileError, read_container, write_container
from .layout import IVF_LAYOUT_VERSION, read_partition
from .settings import MAX_NLIST
from .snapshot import DerivedCache
from .packing import packed_nbytes
from .quantize import Quantizer
from .train import Encoder
from .vq import GroupedQuantizer, VQEncoder, check_groups, groups_from_file

__all__ = ["DaskExecutor", "build", "from_npy", "from_parquet", "from_dataframe", "Shard", "ShardedIndex",
           "encoder_fingerprint", "MANIFEST"]

#: "format" of a shard file's header and of a sharded index's manifest
SHARD_FORMAT, MANIFEST_FORMAT = "lplr-index-shard", "lplr-index-manifest"
#: the manifest's file name in a sharded index's folder
MANIFEST = "manifest.json"
#: errors of a lost worker or cancelled task, turned into one RuntimeError
_LOST = (KilledWorker, distributed.client.FutureCancelledError)


def _client(client):
    if client is not None:
        if not isinstance(client, distributed.Client):
            raise TypeError(f"client must be a distributed.Client or None, got {type(client).__name__}")
        return client
    try:
        return distributed.get_client()
    except ValueError:
        raise ValueError(
            "no distributed.Client is running: start one (distributed.Client('tcp://scheduler:8786'), or "
            "distributed.LocalCluster()) or pass client="
        ) from None


# ------------------------------------------------------------------ the build
def _run_block(fn: Callable, block, start: int, name: str, dim: int, *args):
    """On a worker: ``fn`` on one canonical block, checked and converted to float32."""
    return fn(check_block(block, name, start, dim), *args)


def _same(block):
    return block


def _portable(encoder):
    """``encoder`` (or any argument) without what cannot be pickled to a worker.

    A :class:`~lplr_index.vq.GroupedQuantizer` that has encoded caches faiss
    product quantizers (SWIG objects, ``lq.__dict__["_pq"]``) which neither
    pickle nor cloudpickle can send; this returns a shallow copy of the encoder
    whose quantizer lacks that cache (the worker rebuilds it from the
    codebooks, with the same codes). Anything else is returned as is.
    """
    lq = getattr(encoder, "lq", None)
    if lq is None or "_pq" not in getattr(lq, "__dict__", {}):
        return encoder
    lq = copy.copy(lq)
    lq.__dict__.pop("_pq", None)
    out = copy.copy(encoder)
    out.__dict__["lq"] = lq  # frozen dataclass: set through __dict__
    return out


class _NpyRows:
    """A ``.npy`` file as a lazy array: each read opens it memory-mapped, copies the rows, closes it.

    Pickles as its path, so the tasks of :func:`from_npy` carry no data.
    """

    def __init__(self, path: str, shape: tuple, dtype):
        self.path, self.shape, self.dtype, self.ndim = path, tuple(shape), np.dtype(dtype), len(shape)

    def __getitem__(self, index):
        X = np.load(self.path, mmap_mode="r", allow_pickle=False)
        try:
            return np.array(X[index])
        finally:
            del X


#: name of a dask array made by from_npy -> its file (the sample is then read row by row)
_NPY_PATHS: dict[str, str] = {}


def _take_npy_rows(path: str, rows: np.ndarray) -> np.ndarray:
    return _NpyRows(path, (0, 0), np.float32)[rows]


def from_npy(path, chunk_rows: int = BLOCK_ROWS) -> "da.Array":
    """A ``dask.array`` over a ``.npy`` file, read by the workers in row chunks.

    Each chunk task opens the file itself (memory-mapped, then closed), so the
    graph holds only the path: the file must be readable at the same path on
    every worker (a shared file system). :class:`DaskExecutor` reads the
    seeded sample of such an array row by row instead of whole chunks.

    Parameters
    ----------
    path : str or path-like
        A ``.npy`` file of shape (n, dim), real numbers, C order.
    chunk_rows : int, default=BLOCK_ROWS
        Rows per chunk, >= 1.

    Returns
    -------
    dask.array.Array of shape (n, dim)
    """
    from ._blocks import open_npy

    path = os.path.abspath(os.fspath(path))
    chunk_rows = check_int(chunk_rows, "chunk_rows", low=1)
    X = open_npy(path, "path")
    if X.ndim != 2 or not X.flags.c_contiguous:
        raise ValueError(f"path: {path} holds an array of shape {X.shape} (C order: {X.flags.c_contiguous}), "
                         "expected a C-order (n_vectors, n_dimensions) array")
    lazy = _NpyRows(path, X.shape, X.dtype)
    del X
    arr = da.from_array(lazy, chunks=(chunk_rows, -1), asarray=True, inline_array=True,
                        name=f"from-npy-{dask.base.tokenize(path, os.path.getmtime(path), chunk_rows)}")
    _NPY_PATHS[arr.name] = path
    return arr


class _ParquetRows:
    """The vector column of Parquet files as a lazy array, one chunk per row group.

    Pickles as its list of row groups (file, group, rows): each read opens the
    files it needs on the worker (:func:`lplr_index.parquet.read_part`).
    """

    def __init__(self, tasks: list[tuple], column: str, dim: int, name: str):
        self.tasks, self.column, self.name = tasks, column, name
        self.starts = np.cumsum([0] + [t[2] for t in tasks])
        self.shape, self.dtype, self.ndim = (int(self.starts[-1]), dim), np.dtype(np.float32), 2

    def __getitem__(self, index):
        from .parquet import read_part

        rows, cols = (index, slice(None)) if not isinstance(index, tuple) else (index + (slice(None),))[:2]
        if isinstance(rows, slice):
            want = np.arange(*rows.indices(self.shape[0]))
        else:
            want = np.asarray(rows, np.int64)
        out = np.empty((len(want), self.shape[1]), np.float32)
        if len(want):
            order = np.argsort(want, kind="stable")
            ws = want[order]
            cuts = np.searchsorted(ws, self.starts)
            for k, task in enumerate(self.tasks):
                lo, hi = cuts[k], cuts[k + 1]
                if hi > lo:
                    block = read_part(*task, self.column, self.shape[1], self.name)
                    out[order[lo:hi]] = block[ws[lo:hi] - self.starts[k]]
        return out[:, cols]


def from_parquet(path, column: str | None = None, *, name: str = "X") -> "da.Array":
    """A ``dask.array`` over the vector column of Parquet files, one chunk per row group.

    The row groups are listed from the files' footers on the client (the rows
    in the order :class:`lplr_index.parquet.ParquetSource` reads them: files
    sorted by path); each chunk task opens its file on a worker and reads only
    the vector column of its row group, so the graph holds no data and the
    files must be readable at the same path (or URI) on every worker.

    Parameters
    ----------
    path : str, path-like or list of them
        A Parquet file, a folder of Parquet files, a glob, or a list of files.
    column : str, default=None
        The vector column (see :class:`lplr_index.parquet.ParquetSource`).
    name : str, default="X"
        The argument's name in messages.

    Returns
    -------
    dask.array.Array of shape (n, dim), float32
    """
    from .parquet import parts_of

    source, tasks = parts_of(path, column, name=name)
    lazy = _ParquetRows(tasks, source.column, source.dim, name)
    chunks = (tuple(t[2] for t in tasks), (source.dim,))
    token = dask.base.tokenize(tasks, source.column, [_mtime(f) for f in source.files])
    return da.from_array(lazy, chunks=chunks, asarray=True, inline_array=True, name=f"from-parquet-{token}")


def _mtime(path: str) -> float | None:
    try:
        return os.path.getmtime(path)
    except OSError:
        return None


def _partition_shape(part, column: str, name: str, k: int) -> tuple[int, int | None]:
    """Rows and dimension of one pandas partition (dimension None when it is empty)."""
    if not len(part):
        return 0, None
    from .parquet import ParquetSource

    return len(part), ParquetSource(part, column, name=f"{name}: partition {k}").dim


def _partition_matrix(part, column: str, dim: int, name: str, k: int) -> np.ndarray:
    """The vectors of one pandas partition as float32 ``(rows, dim)`` (on a worker)."""
    if not len(part):
        return np.zeros((0, dim), np.float32)
    from .parquet import ParquetSource

    return ParquetSource(part, column, name=f"{name}: partition {k}", dim=dim).read()


def from_dataframe(df, column: str, *, name: str = "X") -> "da.Array":
    """A ``dask.array`` over a vector column of a ``dask.dataframe`` (e.g. ``dask.dataframe.read_parquet``).

    Each partition's column (lists or arrays of numbers, or Arrow lists) is
    converted on the workers, with the checks and messages of
    :class:`lplr_index.parquet.ParquetSource` (naming the partition). The
    partitions' lengths and the dimension are computed first (one extra pass
    over the column). The rows are in the DataFrame's order (which for
    ``read_parquet`` of a folder sorts ``part.10`` after ``part.9``, unlike
    :func:`from_parquet`).

    Returns
    -------
    dask.array.Array of shape (n, dim), float32
    """
    if column is None or column not in df.columns:
        raise ValueError(f"{name}: column= must name a column of the DataFrame, got {column!r}; its columns are "
                         f"{', '.join(map(repr, map(str, df.columns)))}")
    parts = df[[column]].to_delayed()
    shapes = dask.compute(*[dask.delayed(_partition_shape)(p, column, name, k) for k, p in enumerate(parts)])
    dims = {d for _, d in shapes if d is not None}
    if not dims:
        raise ValueError(f"{name}: the DataFrame holds no rows")
    if len(dims) > 1:
        raise ValueError(f"{name}: column {column!r} holds vectors of {sorted(dims)} dimensions in different "
                         "partitions: every vector must have the same dimension")
    dim = dims.pop()
    chunks = [da.from_delayed(dask.delayed(_partition_matrix)(p, column, dim, name, k), shape=(rows, dim),
                              dtype=np.float32)
              for k, (p, (rows, _)) in enumerate(zip(parts, shapes)) if rows]
    return da.concatenate(chunks, axis=0)


def _dask_input(X: Any, column: str | None, id_column: str | None, name: str = "X"):
    """``(dask array, ids or None)`` of what :func:`build` takes besides a dask array (anything else as is)."""
    from .parquet import is_parquet_path

    if hasattr(X, "to_delayed") and hasattr(X, "columns") and hasattr(X, "npartitions"):  # a dask DataFrame
        if id_column is not None and id_column not in X.columns:
            raise ValueError(f"{name}: the DataFrame has no id column {id_column!r}")
        ids = None if id_column is None else np.asarray(X[id_column].compute())
        return from_dataframe(X, column, name=name), ids
    if is_parquet_path(X):
        arr = from_parquet(X, column, name=name)
        ids = None
        if id_column is not None:
            from .parquet import ParquetSource

            ids = ParquetSource(X, column, id_column, name=name).read_ids()
        return arr, ids
    return X, None  # DaskExecutor says what it takes


class DaskExecutor(ExecutingSource):
    """The rows of a ``dask.array``, with passes run on a Dask cluster.

    Implements the executor interface of :func:`lplr_index.train.fit`: the
    array is rechunked to canonical row blocks (:data:`lplr_index._blocks.BLOCK_ROWS`
    rows, all columns); :meth:`imap` scatters a pass's arguments once to every
    worker, maps the block function over the blocks on the workers with at
    most ``max_in_flight`` blocks submitted at a time, and yields the results
    in block order. Given to ``LPLRIndex.build`` (or :func:`build`), the fit's
    passes run on the cluster.

    Parameters
    ----------
    X : dask.array.Array of shape (n, dim)
        Real numbers (float or integer dtype), known chunk sizes, any chunking.
    client : distributed.Client, default=None
        The current client (``distributed.get_client()``) when None.
    name : str, default="X"
        The array's name in error messages.
    max_in_flight : int, default=None
        Blocks submitted and not yet handed back, >= 1; twice the cluster's
        threads when None (bounds the results waiting on the workers).
    workers : list of str, default=None
        Worker addresses to run on (all when None).
    """

    def __init__(self, X: Any, client=None, *, name: str = "X", max_in_flight: int | None = None,
                 workers: Sequence[str] | None = None):
        if not isinstance(X, da.Array):
            raise TypeError(f"{name} must be a dask.array.Array, got {type(X).__name__} (LPLRIndex.build takes "
                            "in-memory arrays, memory maps, .npy paths and iterables of blocks; build() here also "
                            "takes Parquet files and dask DataFrames, with column=)")
        if X.ndim != 2:
            raise ValueError(f"{name} must be a 2-D array of shape (n_vectors, n_dimensions), got shape {X.shape}")
        if any(np.isnan(c) for cs in X.chunks for c in cs):
            raise ValueError(f"{name} has unknown chunk sizes (shape {X.shape}): call {name}.compute_chunk_sizes() "
                             "first")
        if np.dtype(X.dtype).kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers (float or integer dtype), got dtype {X.dtype}")
        n, dim = int(X.shape[0]), int(X.shape[1])
        if n == 0 or dim == 0:
            raise ValueError(f"{name} must hold at least one row and one column, got shape {X.shape}")
        self.client = _client(client)
        self.name = name
        self.n, self.dim = n, dim
        self.workers = None if workers is None else list(workers)
        if max_in_flight is None:
            threads = sum(self.client.nthreads(self.workers).values()) if self.workers else sum(
                self.client.nthreads().values())
            max_in_flight = 2 * max(1, threads)
        self.max_in_flight = check_int(max_in_flight, "max_in_flight", low=1)
        rows = (BLOCK_ROWS,) * (n // BLOCK_ROWS) + ((n % BLOCK_ROWS,) if n % BLOCK_ROWS else ())
        self.X = X
        self._blocks = X.rechunk((rows, (dim,))).to_delayed().ravel()
        self._pass = 0

    def _submit(self, delayed_task):
        return self.client.compute(delayed_task, workers=self.workers)

    def imap(self, fn: Callable, *args) -> Iterator[Any]:
        """``fn(block, *args)`` of every canonical block, run on the workers, in block order.

        ``args`` are scattered once to every worker for the pass. A worker lost
        mid-pass has its tasks recomputed by Dask; when Dask gives up (a task's
        workers died ``distributed.scheduler.allowed-failures`` times) this
        raises RuntimeError and the build leaves nothing behind.
        """
        self._pass += 1
        args = tuple(_portable(a) for a in args)
        # unique keys (hash=False): a later pass's equal arguments never meet this pass's release
        scattered = self.client.scatter(list(args), broadcast=True, workers=self.workers, hash=False) if args else []
        tag = f"lplr-{getattr(fn, '__name__', 'fn')}-{self._pass}-{id(self):x}"
        window: deque = deque()
        todo = iter(range(len(self._blocks)))

        def submit_next() -> None:
            i = next(todo, None)
            if i is not None:
                task = dask.delayed(_run_block, pure=False)(
                    fn, self._blocks[i], i * BLOCK_ROWS, self.name, self.dim, *scattered,
                    dask_key_name=f"{tag}-{i}")
                window.append((i, self._submit(task)))

        try:
            for _ in range(self.max_in_flight):
                submit_next()
            while window:
                i, future = window.popleft()
                try:
                    out = future.result()
                except _LOST as exc:
                    stop = min((i + 1) * BLOCK_ROWS, self.n)
                    raise RuntimeError(
                        f"the Dask cluster lost block {i} (rows {i * BLOCK_ROWS}-{stop - 1} of {self.name}) in pass "
                        f"{self._pass}: {type(exc).__name__}: {str(exc).rstrip('.')}. Nothing was built; check the "
                        "workers' memory and logs and run it again"
                    ) from exc
                del future
                submit_next()
                yield out
        finally:
            pending = [f for _, f in window]
            window.clear()
            if pending:  # an error or an abandoned pass: stop the blocks still queued
                self.client.cancel(pending)
            del scattered  # released when the last task using them is done

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, block)`` of every canonical block, computed on the workers, in order."""
        for i, block in enumerate(self.imap(_same)):
            yield i * BLOCK_ROWS, block

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows at sorted indices ``rows``, float32 (checked), gathered from the cluster."""
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return np.zeros((0, self.dim), np.float32)
        path = _NPY_PATHS.get(self.X.name)
        try:
            if path is not None:  # only the sampled rows are read
                got = self.client.submit(_take_npy_rows, path, rows, workers=self.workers, pure=False).result()
            else:
                got = self.client.compute(self.X[rows], workers=self.workers).result()
        except _LOST as exc:
            raise RuntimeError(f"the Dask cluster lost the sample rows of {self.name}: {type(exc).__name__}: "
                               f"{str(exc).rstrip('.')}. Nothing was built; run it again") from exc
        return check_block(got, self.name, 0, self.dim, rows=rows)


def build(X: Any, client=None, *, column: str | None = None, id_column: str | None = None,
          progress: bool | None = None, max_in_flight: int | None = None, **index_settings) -> LPLRIndex:
    """Build an :class:`~lplr_index.LPLRIndex` from a ``dask.array`` (or Parquet data) on a Dask cluster.

    The index's own build runs on a :class:`DaskExecutor`: the rank is chosen
    from the budget as in :meth:`LPLRIndex.build`, the seeded sample (16384
    rows) is gathered to the client, and the ``2 + refine_iters`` passes (one
    per LPLR/refinement round and one to encode) run on the workers over
    canonical row blocks, their partial sums reduced on the client in block
    order. A partitioned index (``nlist=``) gets its coarse lists as a local
    build makes them (:func:`lplr_index.builder.measured`): the client,
    which holds the codes, trains the centroids on the seeded sample of the
    codes' latent rows and assigns every row to its list; the default
    ``nprobe`` is measured on 100 seeded rows gathered from the workers, by
    the client's searches of the codes (no more passes over the data). The
    result is byte for byte
    the index a local build of the same rows gives (with one BLAS thread in
    the client and the workers), whatever X's chunking and the number of
    workers. Nothing is returned (or saved) unless every pass completed.

    Parameters
    ----------
    X : dask.array.Array of shape (n, dim), Parquet files or a dask DataFrame
        Database vectors, any chunking (rechunked to canonical row blocks).
        Parquet files (a path, a folder, a glob or a list of files) are read
        by the workers one row group per task (:func:`from_parquet`); a
        ``dask.dataframe`` (``dask.dataframe.read_parquet``) partition by
        partition (:func:`from_dataframe`); both need ``column``.
    client : distributed.Client, default=None
        The current client when None.
    column : str, default=None
        The vector column of Parquet files or a DataFrame (Parquet: None takes
        the only column of vectors).
    id_column : str, default=None
        A column of integer user ids, read on the client (8 bytes a row).
    progress : bool, default=None
        As in :meth:`LPLRIndex.build`.
    max_in_flight : int, default=None
        As in :class:`DaskExecutor`.
    **index_settings
        Keyword arguments of :class:`LPLRIndex` (``bits_per_coordinate``,
        ``rank``, ``metric``, ``seed``, ``nlist``, ...); ``dim`` is X's.

    Returns
    -------
    LPLRIndex

    Examples
    --------
    >>> import dask.array as da, distributed                    # doctest: +SKIP
    >>> client = distributed.Client("tcp://scheduler:8786")     # doctest: +SKIP
    >>> X = da.from_zarr("embeddings.zarr")                     # doctest: +SKIP
    >>> index = build(X, bits_per_coordinate=1)                 # doctest: +SKIP
    >>> index.save("embeddings.lplr")                           # doctest: +SKIP
    """
    ids = None
    if not isinstance(X, da.Array):
        X, ids = _dask_input(X, column, id_column)
    elif column is not None or id_column is not None:
        raise TypeError("column= and id_column= apply to Parquet files and dask DataFrames, not to a dask array")
    source = DaskExecutor(X, client, max_in_flight=max_in_flight)
    dim = index_settings.pop("dim", source.dim)
    if dim != source.dim:
        raise ValueError(f"dim={dim} was given, but X holds {source.dim}-dimensional vectors")
    return LPLRIndex(source.dim, **index_settings).build(source, ids=ids, progress=progress)


# ----------------------------------------------------------- sharded search
def encoder_fingerprint(encoder: Encoder | VQEncoder, metric: str, settings: dict | None = None,
                        centroids: np.ndarray | None = None) -> str:
    """SHA-256 of everything that decides how vectors are encoded and scored.

    Two shards can be searched together only if their fingerprints are equal:
    the same settings, seed, metric, and encoder bytes. Scalar codes
    (:class:`~lplr_index.train.Encoder`): the mean, both quantizers' levels,
    the shared factor's codes, the encoder kind (the same hash as before the
    grouped codes existed, so saved shards keep their fingerprints). Grouped
    codes (:class:`~lplr_index.vq.VQEncoder`): the mean, the group layout and
    codebooks, the basis kind and its stored part (the principal directions'
    8-bit codes and levels, or the kept columns of the seeded rotation).

    Parameters
    ----------
    encoder : Encoder or VQEncoder
    metric : {"l2", "ip", "cosine"}
    settings : dict, default=None
        The index's settings header (``index.settings.to_header(rank=...)``).
    centroids : ndarray of shape (nlist, rank), float32, default=None
        A partitioned index's coarse centroids (latent rows, as its file stores
        them), hashed after the encoder: shards of one encoder with other coarse
        quantizers differ. None (an exhaustive index) hashes as before
        partitioned shards existed.
    """
    h = hashlib.sha256()
    if getattr(encoder, "codec", "scalar") == "vq":
        pca = encoder.basis == "pca"
        meta = {"metric": metric, "codec": "vq", "kind": encoder.basis, "seed": int(encoder.seed),
                "normalize": bool(encoder.normalize), "dim": int(encoder.dim),
                "lq": [encoder.lq.scheme, int(encoder.lq.bits)],
                "rq": [encoder.rq.scheme, int(encoder.rq.bits)] if pca else None, "settings": settings}
        arrays = (encoder.mean, encoder.lq.stored_groups, encoder.lq.codebooks) + (
            (encoder.rcodes, encoder.rq.lo, encoder.rq.hi) if pca else (encoder.dirs,))
    else:
        meta = {"metric": metric, "kind": encoder.kind, "seed": int(encoder.seed),
                "normalize": bool(encoder.normalize), "orthonormal": bool(encoder.orthonormal),
                "lq": [encoder.lq.scheme, int(encoder.lq.bits)], "rq": [encoder.rq.scheme, int(encoder.rq.bits)],
                "settings": settings}
        arrays = (encoder.mean, encoder.lq.lo, encoder.lq.hi, encoder.rcodes, encoder.rq.lo, encoder.rq.hi)
    h.update(json.dumps(meta, sort_keys=True).encode())
    if centroids is not None:
        arrays = arrays + (np.asarray(centroids, np.float32),)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _index_parts(index: LPLRIndex):
    """(encoder, codes, metric, ids or None, partition or None, rerank factor) of a built index; the
    partition of a partitioned index: ``(centroids (nlist, rank) float32, every row's list (n,)
    int64, nprobe)``; the factor: :attr:`LPLRIndex.rerank_factor`.

    Reads the index's state: the index has no public accessor for its encoder
    and code store yet (see the report of issue 11).
    """
    if not isinstance(index, LPLRIndex):
        raise TypeError(f"index must be an LPLRIndex, got {type(index).__name__}")
    if not index.is_built:
        raise ValueError("index is empty: build it before sharding")
    if getattr(index, "n_removed", 0):
        raise ValueError(f"index has {index.n_removed} removed vectors still stored: call index.compact() before "
                         "sharding it")
    st = index._state
    ids = np.array(index.ids) if getattr(index, "has_user_ids", False) else None
    part = None if st.nlist is None else (st.ivf_centroids, st.ivf_lists, st.nprobe)
    return st.encoder, st.store.codes, st.metric, ids, part, index.rerank_factor


class Shard:
    """Rows ``first_row ..`` of an index's codes with its frozen encoder: what one worker holds.

    Searches with the index's own backends (:mod:`lplr_index.search`) and
    caches the fast-scan structure, the partitioned scorer and the row norms
    it builds (on the worker) in a :class:`~lplr_index.snapshot.DerivedCache`
    (each built once under its own lock: searches on the worker's threads may
    race for it). Saved as a shard file
    (:meth:`save`, :meth:`load`): a checksummed container
    (:mod:`lplr_index.fileformat`) holding the codes, the encoder, the coarse
    lists of a partitioned index and its :func:`encoder_fingerprint`, checked
    again when loaded.

    Parameters
    ----------
    encoder : Encoder or VQEncoder
        Scalar or grouped codes' encoder.
    codes : ndarray of shape (rows, row_bytes), uint8
        Packed codes of the shard's rows.
    metric : {"l2", "ip", "cosine"}
    first_row : int
        Row of the whole index where the shard starts.
    settings : dict
        The index's settings header (``index.settings.to_header(rank=...)``).
    ids : ndarray of shape (rows,), int64, default=None
        User ids of the rows (None: the row numbers).
    centroids : ndarray of shape (nlist, rank), float32, default=None
        A partitioned index's coarse centroids (latent rows, as its file stores
        them), the same on every shard; None: no partition.
    lists : ndarray of shape (rows,), int, default=None
        The list of each of the shard's rows, in ``[0, nlist)``; with ``centroids`` only.
    nprobe : int, default=None
        The lists a search scans by default (the index's measured ``nprobe``),
        1 to ``nlist``; None: ``nlist``.
    rerank_factor : int, default=None
        Fast-scan candidates per result a search re-ranks when it names none (the
        index's measured :attr:`~LPLRIndex.rerank_factor`); None: the encoder's default.
    """

    def __init__(self, encoder: Encoder | VQEncoder, codes: np.ndarray, metric: str, first_row: int, settings: dict,
                 ids: np.ndarray | None = None, *, centroids: np.ndarray | None = None,
                 lists: np.ndarray | None = None, nprobe: int | None = None, rerank_factor: int | None = None):
        self.view = CodeView(encoder, codes, metric)
        self.first_row = int(first_row)
        self.settings = settings
        self.ids = ids
        self.centroids, self.lists, self.nprobe = _checked_partition(
            centroids, lists, nprobe, encoder, self.view.ntotal)
        self.rerank_factor = None if rerank_factor is None else check_int(
            rerank_factor, "rerank_factor", low=1, high=MAX_RERANK_FACTOR)
        self._cache = DerivedCache()  # norms2, fastscan, ivf: made on first use (again when unpickled)

    @property
    def nlist(self) -> int | None:
        """Coarse lists of a partitioned shard, None without a partition."""
        return None if self.centroids is None else len(self.centroids)

    @property
    def fingerprint(self) -> str:
        return encoder_fingerprint(self.view.encoder, self.view.metric, self.settings, self.centroids)

    def __getstate__(self):
        state = {k: v for k, v in self.__dict__.items() if k != "_cache"}
        enc = _portable(self.view.encoder)
        if enc is not self.view.encoder:
            state["view"] = CodeView(enc, self.view.codes, self.view.metric)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__dict__.setdefault("centroids", None)
        self.__dict__.setdefault("lists", None)
        self.__dict__.setdefault("nprobe", None)
        self.__dict__.setdefault("rerank_factor", None)
        self._cache = DerivedCache()

    def save(self, path) -> int:
        """Write the shard to ``path`` (atomically); returns the bytes written.

        Scalar codes are written as shard version 1 (the layout from before
        the grouped codes); grouped codes as version 2 (``"codec": "vq"`` in
        the header, arrays ``vq_groups`` of ``(group size, count)``,
        ``vq_codebooks`` and either ``rcodes``/``r_lo``/``r_hi`` or
        ``vq_dirs``), or, where groups have coarse and fine codes, version 3
        (``vq_groups`` of ``(group size, count, levels)``). A partitioned
        shard adds ``nlist`` and ``nprobe`` to the header and the arrays
        ``ivf_centroids`` (``nlist x rank`` float32) and ``ivf_lists`` (each
        row's list in ``ceil(log2 nlist)`` bits, as an index file stores them),
        in container version 5 (the version of partitioned index files).
        """
        enc = self.view.encoder
        header = {"format": SHARD_FORMAT, "shard_version": 1, "metric": self.view.metric, "kind": enc.kind,
                  "seed": int(enc.seed), "normalize": bool(enc.normalize),
                  "orthonormal": bool(enc.orthonormal), "lq": [enc.lq.scheme, int(enc.lq.bits)]}
        if enc.codec == "vq":
            header.update(shard_version=3 if enc.lq.two_level else 2, codec="vq", dim=int(enc.dim),
                          rq=[enc.rq.scheme, int(enc.rq.bits)] if enc.basis == "pca" else None)
            arrays = {"codes": np.asarray(self.view.codes), "mean": enc.mean, "vq_groups": enc.lq.stored_groups,
                      "vq_codebooks": enc.lq.codebooks}
            if enc.basis == "pca":
                arrays.update(rcodes=np.asarray(enc.rcodes, np.uint8), r_lo=enc.rq.lo, r_hi=enc.rq.hi)
            else:
                arrays["vq_dirs"] = np.asarray(enc.dirs, np.int32)
        else:
            header["rq"] = [enc.rq.scheme, int(enc.rq.bits)]
            arrays = {"codes": np.asarray(self.view.codes), "mean": enc.mean, "l_lo": enc.lq.lo, "l_hi": enc.lq.hi,
                      "rcodes": np.asarray(enc.rcodes, np.uint8), "r_lo": enc.rq.lo, "r_hi": enc.rq.hi}
        header.update(first_row=self.first_row, settings=self.settings, fingerprint=self.fingerprint)
        if self.ids is not None:
            arrays["ids"] = np.asarray(self.ids, np.int64)
        if self.rerank_factor is not None:  # older readers ignore it (and use the encoder's default)
            header["rerank_factor"] = self.rerank_factor
        # shards keep the container version of their layout (scalar 2, one-level grouped 3, two-level
        # 4): older readers still open what they can read; a partition: 5
        version = 2 if enc.codec != "vq" else 4 if enc.lq.two_level else 3
        if self.nlist is not None:
            header.update(nlist=self.nlist, nprobe=self.nprobe)
            arrays.update(ivf_centroids=self.centroids, ivf_lists=ivf_search.pack_lists(self.lists, self.nlist))
            version = IVF_LAYOUT_VERSION
        return write_container(path, header, arrays, version=version)

    @classmethod
    def load(cls, path, *, mmap: bool = True, fingerprint: str | None = None) -> "Shard":
        """Read a shard file (scalar or grouped codes, with or without a partition); its codes
        memory-mapped when ``mmap``.

        Raises
        ------
        IndexFileError
            The file is missing, damaged, not a shard file, or its content does
            not give its recorded fingerprint, or not ``fingerprint`` (when given).
        """
        c = read_container(path, mmap=mmap)
        h, a = c.header, c.arrays
        name = str(path)
        if not isinstance(h, dict) or h.get("format") != SHARD_FORMAT:
            raise IndexFileError(f"{name}: not an lplr-index shard file (format "
                                 f"{h.get('format') if isinstance(h, dict) else None!r})")
        try:
            codec = h.get("codec", "scalar")
            if codec == "vq":
                enc = _vq_encoder(h, a)
            elif codec == "scalar":
                lq = Quantizer(h["lq"][0], int(h["lq"][1]), np.array(a["l_lo"]), np.array(a["l_hi"]))
                rq = Quantizer(h["rq"][0], int(h["rq"][1]), np.array(a["r_lo"]), np.array(a["r_hi"]))
                enc = Encoder(np.array(a["mean"]), lq, np.array(a["rcodes"]), rq, h["kind"], int(h["seed"]),
                              bool(h["normalize"]), bool(h.get("orthonormal", False)))
            else:
                raise ValueError(f"codec {codec!r} is not 'scalar' or 'vq' (a newer lplr-index may have written it)")
            codes = a["codes"]
            if codes.ndim != 2 or codes.dtype != np.uint8 or codes.shape[1] != packed_nbytes(enc.n_codes,
                                                                                              enc.lq.bits):
                raise ValueError(f"codes of shape {codes.shape} and dtype {codes.dtype} do not hold "
                                 f"{enc.n_codes} {enc.lq.bits}-bit codes per row")
            ids = np.array(a["ids"]) if "ids" in a else None
            if ids is not None and ids.shape != (codes.shape[0],):
                raise ValueError(f"ids of shape {ids.shape} for {codes.shape[0]} rows")
            centroids, lists, nprobe = _stored_partition(h, a, codes.shape[0])
            shard = cls(enc, codes if mmap else np.array(codes), h["metric"], int(h["first_row"]), h["settings"], ids,
                        centroids=centroids, lists=lists, nprobe=nprobe, rerank_factor=h.get("rerank_factor"))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise IndexFileError(f"{name}: damaged or inconsistent shard content ({exc})") from None
        if shard.fingerprint != h["fingerprint"]:
            raise IndexFileError(f"{name}: the shard's encoder does not give its recorded fingerprint (damaged)")
        if fingerprint is not None and shard.fingerprint != fingerprint:
            raise IndexFileError(f"{name}: this shard was built with another encoder (settings, seed, training "
                                 "data or coarse centroids) than the manifest's other shards; it cannot be "
                                 "searched with them")
        return shard

    @property
    def ntotal(self) -> int:
        return self.view.ntotal

    def _norms2(self) -> np.ndarray:
        """:func:`blas.row_norms2` of every row, computed once."""
        return self._cache.get("norms2", lambda: blas.row_norms2(self.view))

    def _ivf(self):
        """The partitioned fast-scan scorer of the shard's rows: the shared centroids, the rows'
        stored lists (no k-means, no assignment), made once."""
        return self._cache.get("ivf", lambda: ivf_search.IVFScorer.from_assignment(
            self.view, ivf_search.padded_centroids(self.view.encoder, self.centroids), self.lists))

    def search(self, Q: np.ndarray, k: int, mode: str, rerank_factor: int | None, nprobe: int | None = None):
        """Top ``min(k, ntotal)`` of this shard: ``(D, I)`` with global ids (-1 for none).

        ``rerank_factor`` None is the index's measured one (:attr:`rerank_factor`), or without one
        the encoder's default (:func:`default_rerank_factor`).
        ``mode="fastscan"`` on a partitioned shard scans its rows of the ``nprobe``
        lists nearest each query (None: :attr:`nprobe`) and re-ranks them exactly;
        queries whose probed lists hold fewer candidates than they need get the
        exact scan of the shard (as :meth:`LPLRIndex.search` does). The exact
        mode ignores ``nprobe``.
        """
        n = self.ntotal
        kk = min(k, n)
        if rerank_factor is None:
            rerank_factor = self.rerank_factor or default_rerank_factor(self.view.encoder)
        norms2 = self._norms2() if self.view.metric == "cosine" else None
        if mode == "fastscan" and self.nlist is not None:
            scorer = self._ivf()
            nprobe = self.nprobe if nprobe is None else nprobe
            kc = min(n, max(kk, rerank_factor * kk))
            D, I, short = scorer.search_widening(Q, kc, kk, nprobe=nprobe, norms2=norms2)
            if short.any():
                D[short], I[short] = blas.scan(self.view, Q[short], kk,
                                               norms2=None if self.view.metric == "ip" else self._norms2())
        elif mode == "fastscan":
            scorer = self._cache.get("fastscan", lambda: fastscan.FastScanScorer(self.view))
            kc = min(n, max(kk, rerank_factor * kk))
            D, I, _ = scorer.search(Q, kc, kk, norms2)
        else:
            D, I = blas.scan(self.view, Q, kk, norms2=None if self.view.metric == "ip" else self._norms2())
        ok = I >= 0
        rows = np.maximum(I, 0)
        I = np.where(ok, self.ids[rows] if self.ids is not None else rows + self.first_row, -1)
        return D, I


def _checked_partition(centroids, lists, nprobe, encoder, rows: int):
    """``(centroids, lists, nprobe)`` of a shard, checked: float32 ``(nlist, rank)`` finite
    centroids, one list in ``[0, nlist)`` per row (int64), nprobe in ``[1, nlist]`` (None: nlist);
    all None without centroids."""
    if centroids is None:
        if lists is not None or nprobe is not None:
            raise ValueError("lists and nprobe describe a partition: they need centroids")
        return None, None, None
    centroids = np.asarray(centroids)
    rank = int(encoder.rank)
    if centroids.ndim != 2 or centroids.shape[1] != rank or not len(centroids) or centroids.dtype != np.float32:
        raise ValueError(f"centroids must be a float32 array of shape (nlist >= 1, rank={rank}), got shape "
                         f"{centroids.shape} and dtype {centroids.dtype}")
    if not np.isfinite(centroids).all():
        raise ValueError("centroids must be finite")
    nlist = len(centroids)
    if lists is None:
        raise ValueError(f"a partitioned shard needs lists: the list of each of its {rows} rows")
    lists = np.asarray(lists)
    if lists.shape != (rows,) or lists.dtype.kind not in "iu" or (
            rows and (int(lists.min()) < 0 or int(lists.max()) >= nlist)):
        raise ValueError(f"lists must hold one list number in [0, {nlist}) per row ({rows}), got shape "
                         f"{lists.shape} and dtype {lists.dtype}")
    nprobe = nlist if nprobe is None else check_int(nprobe, "nprobe", low=1, high=nlist)
    return centroids, lists.astype(np.int64), nprobe


def _stored_partition(h: dict, a, rows: int):
    """``(centroids, lists, nprobe)`` of a shard file (None each without a partition), read as an
    index file's (:func:`lplr_index.layout.read_partition`)."""
    if "nlist" not in h and "ivf_centroids" not in a and "ivf_lists" not in a:
        return None, None, None
    nlist = check_int(h["nlist"], "nlist", low=1, high=MAX_NLIST)
    return (*read_partition(a["ivf_centroids"], a["ivf_lists"], nlist, rows), h["nprobe"])


def _vq_encoder(h: dict, a) -> VQEncoder:
    """The grouped codes' encoder of a shard file, checked as :meth:`LPLRIndex.load` checks an index file."""
    kind = h["kind"]
    if kind not in ("pca", "rotation"):
        raise ValueError(f"grouped codes have a 'pca' or 'rotation' basis, got kind={kind!r}")
    if [h["lq"][0], int(h["lq"][1])] != ["vq", 4]:
        raise ValueError(f"grouped codes are 4-bit 'vq' codes, got lq={h['lq']!r}")
    mean = np.array(a["mean"])
    dim = int(h["dim"])
    if mean.dtype != np.float32 or mean.shape != (dim,) or not np.isfinite(mean).all():
        raise ValueError(f"mean must be {dim} finite float32 values, got shape {mean.shape} and dtype {mean.dtype}")
    groups, books = a["vq_groups"], a["vq_codebooks"]
    if groups.dtype != np.int32 or books.dtype != np.float32:
        raise ValueError("grouped codes need the int32 array vq_groups and the float32 array vq_codebooks")
    groups, books = np.array(groups), np.array(books)
    if int(h.get("shard_version", 2)) < 3:  # (group size, count): one code level per class
        groups = groups_from_file(groups, 2, "a version-2 shard")
    check_groups(groups, books, dim)
    lq = GroupedQuantizer(groups, books)
    rank = h["settings"].get("rank") if isinstance(h["settings"], dict) else None
    if rank is not None and int(rank) != lq.rank:
        raise ValueError(f"vq_groups cover {lq.rank} latent coordinates, the settings say rank={rank}")
    rq = rcodes = dirs = None
    if kind == "pca":
        if "vq_dirs" in a:
            raise ValueError("a 'pca' basis has no vq_dirs")
        rq = Quantizer(h["rq"][0], int(h["rq"][1]), np.array(a["r_lo"]), np.array(a["r_hi"]))
        rcodes = np.array(a["rcodes"])
        if rcodes.dtype != np.uint8 or rcodes.shape != (lq.rank, dim):
            raise ValueError(f"rcodes of shape {rcodes.shape} and dtype {rcodes.dtype}, expected uint8 "
                             f"{(lq.rank, dim)}")
        if rcodes.size and int(rcodes.max()) >= rq.levels:
            raise ValueError(f"rcodes hold a code above the {rq.bits}-bit levels")
    else:
        if any(key in a for key in ("rcodes", "r_lo", "r_hi")):
            raise ValueError("a 'rotation' basis has no rcodes, r_lo, r_hi")
        dirs = np.array(a["vq_dirs"])
        if dirs.dtype != np.int32 or dirs.shape != (lq.rank,):
            raise ValueError(f"vq_dirs of shape {dirs.shape} and dtype {dirs.dtype}, expected int32 {(lq.rank,)}")
        if dirs.size and (dirs.min() < 0 or dirs.max() >= dim or len(np.unique(dirs)) != dirs.size):
            raise ValueError(f"vq_dirs must hold distinct directions in [0, {dim - 1}]")
    return VQEncoder(mean, lq, kind, rcodes, rq, dirs, int(h["seed"]), bool(h["normalize"]), dim)


def _search_shard(shard: Shard, Q, k, mode, rerank_factor, nprobe):
    return shard.search(Q, k, mode, rerank_factor, nprobe)


def _save_shard(shard: Shard, path: str) -> int:
    return shard.save(path)


def _shard_nlist(shard: Shard) -> int | None:
    return shard.nlist


def _load_shard(path: str, first_row: int, rows: int, fingerprint: str, mmap: bool) -> Shard:
    shard = Shard.load(path, mmap=mmap, fingerprint=fingerprint)
    if shard.first_row != first_row or shard.ntotal != rows:
        raise IndexFileError(f"{path}: holds rows {shard.first_row}-{shard.first_row + shard.ntotal - 1}, but the "
                             f"manifest lists rows {first_row}-{first_row + rows - 1}")
    return shard


def _shard_bounds(n: int, n_shards: int) -> list[int]:
    """Row boundaries of ``n_shards`` shards, on multiples of the scan's block where possible.

    Shards that start on a multiple of :data:`lplr_index.search.blas.BLOCK_ROWS`
    score exactly the blocks a single-machine scan scores, so their exact
    scores are bit for bit the same.
    """
    step = blas.BLOCK_ROWS
    n_blocks = -(-n // step)
    if n_blocks >= n_shards:
        cuts = [min(n, round(i * n_blocks / n_shards) * step) for i in range(n_shards + 1)]
    else:
        cuts = [round(i * n / n_shards) for i in range(n_shards + 1)]
    cuts[-1] = n
    return cuts


class ShardedIndex:
    """An index's codes split into shards held by Dask workers, searched in parallel.

    Each shard holds the index's frozen encoder and a row range of its codes
    (sent once, to one worker each, round robin). A search sends the query
    batch to every shard; each scores it with the index's own backends
    (fast-scan + exact re-ranking from the codes, or the exact BLAS scan) and
    returns its top k with global ids; the lists are merged with
    :func:`lplr_index.search.topk.merge_results` (ties: the earlier shard,
    i.e. the lower row). ``mode="factored"`` gives exactly the results of
    ``index.search`` on one machine; in ``"fastscan"`` mode every shard
    re-ranks its own ``rerank_factor * k`` best candidates, a superset of the
    single-machine candidate list, so results are at least as good.

    A partitioned index (``nlist``) is sharded with its partition: every shard
    holds the index's coarse centroids and its rows' list numbers, so a
    fast-scan search with ``nprobe`` scans on each shard its rows of the same
    ``nprobe`` lists the index scans (the lists nearest the query), and the
    merged candidates are again a superset of the single-machine ones.

    :meth:`save` writes the shards as files next to a manifest and
    :meth:`load` gives them back, each read by a worker; shards whose encoder
    or coarse centroids differ from the manifest's (:func:`encoder_fingerprint`)
    are refused.

    Parameters
    ----------
    index : LPLRIndex
        A built index without removed rows, partitioned or not.
    n_shards : int, default=None
        Shards, 1 to ``index.ntotal``; one per worker when None.
    client : distributed.Client, default=None
        The current client when None.

    Attributes
    ----------
    bounds : list of int
        Row boundaries: shard ``i`` holds rows ``bounds[i]:bounds[i + 1]``.
    fingerprint : str
        :func:`encoder_fingerprint` of the shards' common encoder (and coarse centroids).
    nlist : int or None
        Coarse lists of a partitioned index, None when exhaustive.
    nprobe : int or None
        The lists a fast-scan search scans by default (the index's measured
        ``nprobe``), None when exhaustive.

    Examples
    --------
    >>> client = distributed.Client("tcp://scheduler:8786")      # doctest: +SKIP
    >>> index = LPLRIndex.load("embeddings.lplr", mmap=True)      # doctest: +SKIP
    >>> with ShardedIndex(index, client=client) as sharded:       # doctest: +SKIP
    ...     D, I = sharded.search(queries, k=10)
    ...     sharded.save("/shared/embeddings.shards")             # later: ShardedIndex.load(folder)
    """

    def __init__(self, index: LPLRIndex, n_shards: int | None = None, *, client=None):
        self._init([index], n_shards, client)

    @classmethod
    def from_indexes(cls, indexes: Sequence[LPLRIndex], *, client=None) -> "ShardedIndex":
        """One shard per index, rows in order (ids ``0 .. ntotal - 1`` across them).

        The indexes must share the encoder (the same trained index, with
        different vectors added): settings, seed and encoder bytes are compared,
        and for partitioned indexes the coarse centroids too; a mismatch raises
        ValueError naming the first index that differs. The default ``nprobe``
        is the first index's.
        """
        indexes = list(indexes)
        if not indexes:
            raise ValueError("indexes must hold at least one LPLRIndex, got none")
        self = cls.__new__(cls)
        self._init(indexes, None, client)
        return self

    def _init(self, indexes, n_shards, client) -> None:
        self.client = _client(client)
        parts = [_index_parts(ix) for ix in indexes]
        first = indexes[0]
        prints = [encoder_fingerprint(enc, metric, ix.settings.to_header(rank=ix.rank),
                                      None if part is None else part[0])
                  for ix, (enc, _, metric, _, part, _) in zip(indexes, parts)]
        for j, (ix, fp) in enumerate(zip(indexes, prints)):
            if fp != prints[0]:
                raise ValueError(_mismatch(first, ix, j))
        self.fingerprint = prints[0]
        self.dim, self.metric, self.codec = first.dim, parts[0][2], parts[0][0].codec
        self.fastscan_ready = bool(first.fastscan_ready)
        self._bits_l = first.bits_l
        part = parts[0][4]
        factor = max(p[5] for p in parts)  # merged indexes: the deepest any of their builds measured
        self.nlist, self.nprobe = (None, None) if part is None else (len(part[0]), int(part[2]))
        workers = _workers(self.client)
        if len(indexes) == 1:
            enc, codes, metric, ids, _, _ = parts[0]
            n = len(codes)
            n_shards = len(workers) if n_shards is None else check_int(n_shards, "n_shards", low=1, high=n)
            cuts = _shard_bounds(n, min(n_shards, n))
            pieces = [(enc, codes[a:b], metric, a, None if ids is None else ids[a:b],
                       None if part is None else part[1][a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
        else:
            if any(p[3] is not None for p in parts):
                raise ValueError("from_indexes merges indexes with default ids (rows 0 .. n - 1) only; "
                                 "an index given has user ids")
            cuts = list(np.cumsum([0] + [len(p[1]) for p in parts]))
            pieces = [(p[0], p[1], p[2], cuts[j], None, None if p[4] is None else p[4][1])
                      for j, p in enumerate(parts)]
        self.bounds = [int(c) for c in cuts]
        self.ntotal = self.bounds[-1]
        self._futures = []
        settings = first.settings.to_header(rank=first.rank)
        centroids = None if part is None else np.array(part[0])
        for j, (enc, codes, metric, start, ids, lists) in enumerate(pieces):
            shard = Shard(enc, np.array(codes), metric, start, settings, ids, centroids=centroids,
                          lists=None if lists is None else np.array(lists), nprobe=self.nprobe,
                          rerank_factor=factor)
            w = workers[j % len(workers)]
            self._futures.append(self.client.scatter(shard, workers=[w], hash=False))

    def save(self, folder) -> str:
        """Write every shard to a file in ``folder`` (by the worker holding it) and a manifest.

        The folder (created if missing) must be writable at the same path by
        the workers (a shared file system). Shard files are
        ``shard-00000.lplrs``, ...; the manifest ``manifest.json`` lists them
        with their rows, the common :attr:`fingerprint` and the partition's
        ``nlist`` and default ``nprobe`` (null when exhaustive; each shard file
        holds the coarse centroids and its rows' lists, see :meth:`Shard.save`),
        and is written last (atomically), so a folder with a manifest holds
        complete shards.

        Returns
        -------
        str
            The manifest's path.
        """
        folder = os.path.abspath(os.fspath(folder))
        os.makedirs(folder, exist_ok=True)
        files = [f"shard-{j:05d}.lplrs" for j in range(self.n_shards)]
        done = [self.client.submit(_save_shard, f, os.path.join(folder, name), pure=False)
                for f, name in zip(self._live(), files)]
        self.client.gather(done)
        manifest = {"format": MANIFEST_FORMAT, "manifest_version": 1, "fingerprint": self.fingerprint,
                    "dim": self.dim, "metric": self.metric, "codec": self.codec, "bits_l": self._bits_l,
                    "fastscan_ready": self.fastscan_ready, "nlist": self.nlist, "nprobe": self.nprobe,
                    "ntotal": self.ntotal,
                    "shards": [{"file": name, "first_row": a, "rows": b - a}
                               for name, a, b in zip(files, self.bounds[:-1], self.bounds[1:])]}
        path = os.path.join(folder, MANIFEST)
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, folder, *, client=None, mmap: bool = True) -> "ShardedIndex":
        """Load the shards listed by ``folder``'s manifest, each on a worker (round robin).

        Each worker reads its shard file (codes memory-mapped when ``mmap``),
        so the codes never pass through this process. Every shard's encoder
        (and coarse centroids) must give the manifest's fingerprint, and a
        partitioned shard's lists the manifest's ``nlist``.

        Raises
        ------
        IndexFileError
            A missing or malformed manifest, or a shard file that is missing,
            damaged, of other rows than the manifest says, or built with another
            encoder (the message names the file).
        """
        self = cls.__new__(cls)
        self.client = _client(client)
        folder = os.path.abspath(os.fspath(folder))
        path = os.path.join(folder, MANIFEST)
        try:
            with open(path) as f:
                m = json.load(f)
            if m.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format is {m.get('format')!r}, expected {MANIFEST_FORMAT!r}")
            entries = [(os.path.join(folder, e["file"]), int(e["first_row"]), int(e["rows"])) for e in m["shards"]]
            meta = (m["fingerprint"], int(m["dim"]), m["metric"], int(m["bits_l"]), bool(m["fastscan_ready"]))
            nlist, nprobe = m.get("nlist"), m.get("nprobe")  # manifests written before partitioned shards: none
            if nlist is not None:
                nlist = check_int(nlist, "nlist", low=1, high=MAX_NLIST)
                nprobe = check_int(nprobe, "nprobe", low=1, high=nlist)
            elif nprobe is not None:
                raise ValueError(f"nprobe={nprobe!r} without nlist")
        except FileNotFoundError:
            raise IndexFileError(f"{path}: no such file (a sharded index's folder holds {MANIFEST})") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IndexFileError(f"{path}: not a readable sharded-index manifest ({exc})") from None
        starts = [e[1] for e in entries]
        if not entries or starts != list(np.cumsum([0] + [e[2] for e in entries[:-1]])):
            raise IndexFileError(f"{path}: the shards' rows are not consecutive from 0")
        workers = _workers(self.client)
        self.fingerprint, self.dim, self.metric, self._bits_l, self.fastscan_ready = meta
        self.codec = m.get("codec", "scalar")  # manifests written before the grouped codes: scalar
        self.nlist, self.nprobe = nlist, nprobe
        self._futures = [
            self.client.submit(_load_shard, file, first, rows, self.fingerprint, mmap,
                               workers=[workers[j % len(workers)]], pure=False)
            for j, (file, first, rows) in enumerate(entries)]
        distributed.wait(self._futures)
        for fut in self._futures:
            if fut.status == "error":
                exc = fut.exception()
                self.close()
                raise exc
        lists = self.client.gather([self.client.submit(_shard_nlist, f, pure=False) for f in self._futures])
        for (file, _, _), got in zip(entries, lists):
            if got != self.nlist:
                self.close()
                raise IndexFileError(f"{file}: holds {'no coarse lists' if got is None else f'{got} coarse lists'}, "
                                     f"but the manifest says nlist={self.nlist}")
        self.bounds = starts + [starts[-1] + entries[-1][2]]
        self.ntotal = self.bounds[-1]
        return self

    def _live(self) -> list:
        if self._futures is None:
            raise RuntimeError("this ShardedIndex is closed")
        return self._futures

    @property
    def n_shards(self) -> int:
        return len(self.bounds) - 1

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        lists = "" if self.nlist is None else f", nlist={self.nlist}, nprobe={self.nprobe}"
        return (f"ShardedIndex(ntotal={self.ntotal}, dim={self.dim}, metric={self.metric!r}, "
                f"n_shards={self.n_shards}{lists})")

    def search(self, Q, k: int, *, mode: str = "auto", rerank_factor: int | None = None,
               nprobe: int | None = None) -> SearchResult:
        """The ``k`` nearest stored vectors of each query, over all shards.

        Parameters
        ----------
        Q : array-like of shape (n_queries, dim)
        k : int
            >= 1; results past :attr:`ntotal` are padded with ``inf`` / -1.
        mode : {"auto", "fastscan", "factored"}, default="auto"
            As in :meth:`LPLRIndex.search` (``"auto"`` of a partitioned index: ``"fastscan"``).
        rerank_factor : int, default=None
            Fast-scan candidates per result on each shard (the index's default when None).
        nprobe : int, default=None
            A partitioned index: the coarse lists fast-scan scans on every shard, 1 to
            :attr:`nlist` (``nlist``: every row); None: :attr:`nprobe`, the index's
            measured default. The exact mode ignores it; shards without a partition
            refuse it.

        Returns
        -------
        SearchResult
            ``(distances, indices)``, float32 and int64, shape (n_queries, k).
        """
        k = check_int(k, "k", low=1)
        mode = check_choice(mode, "mode", ("auto", "fastscan", "factored"))
        factor = None if rerank_factor is None else check_int(
            rerank_factor, "rerank_factor", low=1, high=MAX_RERANK_FACTOR)
        if nprobe is not None:
            if self.nlist is None:
                raise ValueError(f"nprobe={nprobe!r}: these shards have no partition (an index built with "
                                 "nlist=None, or nlist='auto' on too few rows): shard an index built with "
                                 "nlist=... to search lists")
            nprobe = check_int(nprobe, "nprobe", low=1, high=self.nlist)
        Q = check_block(Q, "queries", 0, self.dim)
        if Q.shape[0] == 0:
            raise ValueError(f"queries must hold at least one row, got shape {Q.shape}")
        if mode == "auto":
            mode = "fastscan" if self.fastscan_ready or self.nlist is not None else "factored"
        if mode == "fastscan" and self._bits_l != 4:
            raise ValueError(f"mode='fastscan' needs 4-bit codes, this index has {self._bits_l}-bit codes "
                             "(use mode='factored' or 'auto')")
        shards = self._live()
        q = self.client.scatter(Q, broadcast=True, hash=False)
        try:
            futures = [self.client.submit(_search_shard, s, q, k, mode, factor, nprobe, pure=False) for s in shards]
            try:
                parts = self.client.gather(futures)
            except _LOST as exc:
                raise RuntimeError(f"a shard was lost with its worker ({type(exc).__name__}: {exc}); build the "
                                   "ShardedIndex again") from exc
        finally:
            del q
        D, I = merge_results(parts, min(k, self.ntotal), self.metric)
        return SearchResult(*pad_results(D, I, k, self.metric))

    def close(self) -> None:
        """Release the shards on the workers."""
        if self._futures:
            self.client.cancel(self._futures)
        self._futures = None

    def __enter__(self) -> "ShardedIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: seconds a ShardedIndex waits for a worker to join a cluster that has none (just started, or
#: its workers restarting)
WORKER_WAIT_S = 30.0


def _workers(client) -> list[str]:
    """The cluster's workers (addresses, sorted); waits up to :data:`WORKER_WAIT_S` seconds for
    one when it has none (seen here: a local cluster on a loaded machine listed none for a
    moment between tests)."""
    workers = sorted(client.scheduler_info()["workers"])
    if not workers:
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except TimeoutError:
            pass
        workers = sorted(client.scheduler_info()["workers"])
    if not workers:
        raise ValueError(f"the Dask cluster has no workers to hold shards (none joined within {WORKER_WAIT_S:g} s)")
    return workers


def _mismatch(a: LPLRIndex, b: LPLRIndex, j: int) -> str:
    """Why index ``j`` cannot be merged with index 0."""
    sa, sb = a.settings.to_header(rank=a.rank), b.settings.to_header(rank=b.rank)
    diff = [f"{key}={sb.get(key)!r} (index 0 has {sa.get(key)!r})" for key in sorted(set(sa) | set(sb))
            if sa.get(key) != sb.get(key)]
    ea, eb = a._state.encoder, b._state.encoder
    if not diff and (ea.codec, ea.kind) != (eb.codec, eb.kind):
        diff = [f"{eb.codec} codes with a {eb.kind!r} basis (index 0 has {ea.codec} codes with a {ea.kind!r} basis)"]
    if not diff and (a._state.nlist, b._state.nlist) != (None, None) and (
            encoder_fingerprint(ea, a._state.metric, sa) == encoder_fingerprint(eb, b._state.metric, sb)):
        lists = ["no lists" if st.nlist is None else f"{st.nlist} centroids" for st in (a._state, b._state)]
        diff = [f"the same encoder but another coarse quantizer ({lists[1]}, index 0 has {lists[0]}: "
                "the centroids differ)"]
    what = ", ".join(diff) if diff else ("the same settings but a different trained encoder (mean, quantizer levels, "
                                         "codebooks or shared factor)")
    return (f"indexes[{j}] cannot be merged with indexes[0]: {what}. Shards must share one trained encoder "
            "(and coarse quantizer): build (or load) one index and add each shard's vectors to a copy of it")
