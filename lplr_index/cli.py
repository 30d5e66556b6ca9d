"""Command line: ``lplr-index {build,add,search,info,eval}`` (also ``python -m lplr_index``).

User mistakes (missing or unreadable files, bad arguments, parse errors, damaged
indexes, an output that cannot be written) print one line,
``lplr-index: error: ...``, naming the flag or the file, and exit with status 1;
Ctrl-C prints one line and exits with 130. Outputs are checked before any
expensive work. Long steps show a progress bar on stderr when it is a terminal.

Only numpy and the library's own modules are imported at start-up: faiss and
scikit-learn load on first use, so ``lplr-index --help`` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from . import __version__
from ._progress import Progress
from ._threads import limit_threads
from ._validation import MAX_BITS
from .evaluation import METRICS, accuracy, exact_knn, knn_vote, neighbour_overlap, recall_at_k, weighted_f1
from .fileformat import IndexFileError, check_output_path
from .index import AUTO_NLIST_MIN_ROWS, MAX_RESULT_BYTES, SEARCH_MODES, LPLRIndex
from .quantize import SCHEMES
from .settings import CODECS, MAX_NLIST
from .vecio import VectorFileError, hdf5_datasets, hdf5_metric, read_array, read_ground_truth, read_vectors

log = logging.getLogger("lplr_index")

PROG = "lplr-index"
_QUERY_BATCH = 1024
#: queries and neighbours shown by ``search`` without ``-o``/``--json``
_SHOW_QUERIES = 20
_SHOW_RANKS = 10
#: BLAS and faiss threads of a command without --threads: one, the fastest measured on a busy
#: 2-core machine (``benchmarks/bench_threads.py``; README, "Threads")
DEFAULT_THREADS = 1
#: bits per coordinate of the float32 vectors an index replaces
_FLOAT32_BITS = 32


class UserError(Exception):
    """A mistake on the command line: reported in one line, exit status 1."""


# --------------------------------------------------------------- arguments
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 1 (the default prints usage and exits 2)."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(1, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer in ``[low, high]``; the message says what is allowed."""
    allowed = f">= {low}" if high is None else f"from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {allowed}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {allowed}, got {value}")
        return value

    return parse


def _nlist(text: str) -> int | str:
    """``--nlist``: an integer in [1, 2^20] or ``auto``."""
    if text == "auto":
        return text
    try:
        return _int_in(1, MAX_NLIST)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an integer from 1 to {MAX_NLIST}, got {text!r}") from None


def _budget(text: str) -> float:
    """argparse type of ``--bits-per-coordinate``: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of bits > 0 (e.g. 1 or 0.5), got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of bits > 0, got {text!r}")
    return value


#: library parameter names -> the flags that set them, for messages from the library
_FLAGS = {
    "bits_per_coordinate": "--bits-per-coordinate",
    "bits_l": "--bits-l",
    "bits_r": "--bits-r",
    "refine_iters": "--refine-iters",
    "codec": "--codec",
    "rank": "--rank",
    "seed": "--seed",
}


def _in_user_terms(message: str, names: dict[str, str]) -> str:
    """Rewrite a library message in the command line's terms.

    ``names`` maps the library's argument names (``X``, ``queries``) to what the
    user gave (``embeddings file emb.npy``): a one-letter name (``X``) wherever it
    stands as a word, a longer one only where it opens the message (``queries``
    is also an ordinary word); parameter names become their flags.
    """
    for name, flag in _FLAGS.items():  # "rank=40" -> "--rank 40"; "rank-1 index" stays
        message = re.sub(
            rf"(?<![\w-]){name}(?:(=)|(?![\w-]))",
            lambda m, flag=flag: flag + (" " if m.group(1) else ""),
            message,
        )
    for name, shown in names.items():
        where = r"(?<![\w-])" if len(name) == 1 else "^"
        message = re.sub(rf"{where}{re.escape(name)}\b", shown, message)
    return message


# ----------------------------------------------------------------- files
def _load_array(path: str, what: str, *, ndim: int = 2, column: str | None = None) -> np.ndarray:
    """Read the array of a command-line argument (the one place the CLI reads arrays).

    Any format of :mod:`lplr_index.vecio`: ``.npy``, ``.npz``, ``.fvecs``,
    ``.bvecs``, ``.ivecs``, ANN-benchmarks ``.hdf5``; ``PATH:NAME`` picks a
    member of an ``.npz`` or ``.hdf5`` file. An ``.hdf5`` file gives its
    ``test`` dataset for queries (``queries``, ``--test``) and ``train`` otherwise.
    Vectors (``ndim=2``) may also be Parquet (a file, a folder or a glob;
    :mod:`lplr_index.parquet`), read into memory as float32 from ``column``.

    Parameters
    ----------
    path : str
        File given on the command line.
    what : str
        The argument in the user's terms (``"embeddings"``, ``"--train"``),
        used in messages as ``"{what} file {path} ..."``.
    ndim : {1, 2}, default=2
        2: vectors, shape (n, dim), real finite numbers; 1: labels, shape (n,).

    Returns
    -------
    ndarray of shape (n, dim) or (n,)
        Memory-mapped read-only where possible.

    Raises
    ------
    UserError
        The file is missing, malformed (see :class:`lplr_index.vecio.VectorFileError`),
        an ``.hdf5`` file without h5py installed, or holds an array of the wrong shape or type.
    """
    if ndim == 2 and _is_parquet(path):
        return _parquet_source(path, what, column).read_or_fail()
    hdf5 = Path(path).suffix.lower() in (".hdf5", ".h5")
    dataset = "test" if hdf5 and what in ("queries", "--test") else None
    try:
        if ndim == 2:
            arr = read_vectors(path, what=what, dataset=dataset)
        else:
            arr = read_array(path, what=what, dataset=dataset)
    except FileNotFoundError:
        raise UserError(f"{what} file {path} does not exist") from None
    except (VectorFileError, ImportError) as exc:
        raise UserError(str(exc)) from None
    if arr.ndim != ndim:
        shape = "(n, dim)" if ndim == 2 else "(n,)"
        raise UserError(f"{what} file {path} must hold a {ndim}-D array {shape}, got shape {arr.shape}")
    if ndim == 2:
        _say_conversion(arr.dtype, what, path)
    return arr


def _say_conversion(dtype: np.dtype, what: str, path: str) -> None:
    """The index computes in float32: say so when a vector file holds another type."""
    if dtype == np.float32:
        return
    exact = np.can_cast(dtype, np.float32, casting="safe")
    (log.info if exact else log.warning)(
        "%s file %s holds %s values: converted to float32 as they are read (%s)", what, path, dtype,
        "exact" if exact else "rounded to float32's 24-bit precision")


def _is_parquet(path: str) -> bool:
    from .parquet import is_parquet_path

    return is_parquet_path(path)


class _ParquetInput:
    """A Parquet argument's :class:`lplr_index.parquet.ParquetSource`, its errors as :class:`UserError`."""

    def __init__(self, source, path: str, what: str):
        self.source, self.path, self.what = source, path, what

    def read_or_fail(self) -> np.ndarray:
        try:
            return self.source.read()
        except (VectorFileError, ValueError, OSError) as exc:
            raise UserError(str(exc)) from None


def _parquet_source(path: str, what: str, column: str | None, id_column: str | None = None,
                    read_rows: int | None = None) -> _ParquetInput:
    """The vectors of a Parquet argument, streamed (errors name the argument, file, row group, column)."""
    from .parquet import ParquetSource

    try:
        source = ParquetSource(path, column, id_column, name=what, read_rows=read_rows)
    except FileNotFoundError as exc:
        raise UserError(f"{what}: {exc.strerror.removeprefix(what + ': ')}") from None
    except (VectorFileError, ImportError, OSError, ValueError) as exc:
        raise UserError(str(exc)) from None
    return _ParquetInput(source, path, what)


def _load_vectors(args, path: str, what: str):
    """The vectors to build on or add: a Parquet source (streamed, with ``--column`` and
    ``--id-column``) or the array of any other format (memory-mapped where possible)."""
    if _is_parquet(path):
        if args.id_column is not None and getattr(args, "ids", None) is not None:
            raise UserError("give --ids FILE or --id-column COLUMN, not both")
        return _parquet_source(path, what, args.column, args.id_column, getattr(args, "block_rows", None)).source
    if args.column is not None or args.id_column is not None:
        flag = "--column" if args.column is not None else "--id-column"
        raise UserError(f"{flag} applies to Parquet files (.parquet, a folder or a glob of them), but {what} file "
                        f"{path} is not one")
    return _load_array(path, what)


def _check_output(path: str, flag: str) -> None:
    """Refuse an output that cannot be written (missing folder, a directory, no permission) before any work."""
    try:
        check_output_path(path)
    except OSError as exc:
        raise UserError(f"{flag}: {exc}") from None


# ----------------------------------------------------------------- output
def _json_number(x: float) -> float | None:
    """JSON has no inf/NaN: padding distances become null."""
    return float(x) if math.isfinite(x) else None


def _emit(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True, allow_nan=False))
        return
    width = max(len(k) for k in result)
    for key, value in result.items():
        if value is None:
            value = _NONE_SHOWN.get(key, "none")
        elif isinstance(value, float):
            value = f"{value:.6g}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        print(f"{key:<{width}}  {value}")


#: how ``None`` reads in the human-readable tables, per key
_NONE_SHOWN = {"budget_bits_per_coordinate": "none (explicit rank)"}


def _search_table(D: np.ndarray, I: np.ndarray) -> list[str]:
    """A compact table of the first queries' neighbours: query, rank, id, distance."""
    nq, k = I.shape
    shown_q, shown_k = min(nq, _SHOW_QUERIES), min(k, _SHOW_RANKS)
    id_width = max(2, len(str(int(I.max()))) if I.size else 2)
    lines = [f"{'query':>5}  {'rank':>4}  {'id':>{id_width}}  distance"]
    for q in range(shown_q):
        for r in range(shown_k):
            lines.append(f"{q:>5}  {r + 1:>4}  {int(I[q, r]):>{id_width}}  {float(D[q, r]):.6g}")
    if shown_q < nq or shown_k < k:
        lines.append(
            f"(showing {shown_q} of {nq} queries and {shown_k} of {k} neighbours each; "
            "all of them with -o results.npz or --json)"
        )
    return lines


def _warn_if_larger_than_float32(index: LPLRIndex) -> None:
    bits = index.bits_per_coordinate
    if bits > _FLOAT32_BITS:
        log.warning(
            "warning: this index stores %.4g bits per coordinate, more than the float32 vectors "
            "it replaces (%d): with %d vectors of %d dimensions at rank %d, its shared factor, "
            "quantizer levels and header outweigh the codes; index more vectors, or lower "
            "--rank or --bits-per-coordinate",
            bits, _FLOAT32_BITS, index.ntotal, index.dim, index.rank,
        )


_BASES = {"pca": "principal basis", "rotation": "seeded rotation"}


def describe_layout(layout: dict) -> str:
    """One line a person reads: what codes a built index stores per vector.

    >>> describe_layout({"codec": "vq", "encoder": "pca", "rank": 18, "codes_per_vector": 14,
    ...                  "bits_per_code": 4, "groups": [[1, 10, 1], [2, 4, 1]]})
    'grouped 4-bit codes: 18 directions of the principal basis in 14 codes (10 groups of 1, 4 groups of 2)'
    >>> describe_layout({"codec": "scalar", "encoder": "lplr", "rank": 32, "codes_per_vector": 32,
    ...                  "bits_per_code": 8})
    'scalar LPLR codes: 32 latent directions, 8 bits each'
    """
    if layout["codec"] != "vq":
        return f"scalar LPLR codes: {layout['rank']} latent directions, {layout['bits_per_code']} bits each"
    parts = [f"{count} group{'s' if count != 1 else ''} of {g}" + (" (two 4-bit codes each)" if levels == 2 else "")
             for g, count, levels in layout["groups"]]
    return (f"grouped 4-bit codes: {layout['rank']} directions of the "
            f"{_BASES.get(layout['encoder'], layout['encoder'])} in {layout['codes_per_vector']} codes "
            f"({', '.join(parts)})")


def _index_info(index: LPLRIndex, path: str | None = None) -> dict:
    layout = index.layout
    info = {
        "dim": index.dim,
        "ntotal": index.ntotal,
        "metric": index.metric,
        "codes": describe_layout(layout),
        "codec": index.codec,
        "encoder": index.encoder,
        "rank": index.rank,
        "bits_l": index.bits_l,
    }
    if index.codec == "vq":  # the scalar codes' settings do not apply to grouped codes
        info["groups"] = layout["groups"]
    else:
        info.update(bits_r=index.bits_r, quantizer=index.quantizer, refine_iters=index.refine_iters)
    info.update({
        "seed": index.seed,
        "budget_bits_per_coordinate": index.budget,
        "bits_per_coordinate": index.bits_per_coordinate,
        "nbytes": index.nbytes,
        "fit_error": index.fit_error,
        "n_clipped": index.n_clipped,
        "storage_bytes": index.storage_breakdown(),
        "rerank_factor": index.rerank_factor,  # fast-scan candidates per result, measured at build
    })
    if index.settings.nlist is not None:  # partitioned search: the lists built and the default nprobe
        info.update(nlist_setting=index.settings.nlist, nlist=index.nlist, nprobe=index.nprobe)
    if path is not None:
        info["file"] = str(path)
        info["file_size"] = os.path.getsize(path)
    return info


# ------------------------------------------------------------- index steps
def _progress_setting(args) -> bool | None:
    """None: a bar when stderr is a terminal; False with --no-progress."""
    return False if args.no_progress else None


def _make_index(args, dim: int) -> LPLRIndex:
    if args.bits_per_coordinate is None and args.rank is None:
        raise UserError("give --bits-per-coordinate B (a storage budget) or --rank R")
    if args.bits_per_coordinate is not None and args.rank is not None:
        raise UserError("give either --bits-per-coordinate or --rank, not both")
    try:
        return LPLRIndex(
            dim,
            bits_per_coordinate=args.bits_per_coordinate,
            rank=args.rank,
            bits_l=args.bits_l,
            bits_r=args.bits_r,
            metric=args.metric,
            quantizer=args.quantizer,
            refine_iters=args.refine_iters,
            seed=args.seed,
            codec=args.codec,
            nlist=getattr(args, "nlist", None),
        )
    except OverflowError as exc:
        raise _budget_overflow(args, exc) from None
    except (ValueError, TypeError) as exc:
        raise UserError(_in_user_terms(str(exc), {})) from None


def _budget_overflow(args, exc: OverflowError) -> UserError:
    """A budget so large that the arithmetic on it overflows (e.g. 1e308)."""
    return UserError(
        f"--bits-per-coordinate {args.bits_per_coordinate:g} is too large (the computation on it "
        f"overflows: {exc}); budgets above 32 bits per coordinate store more than the float32 vectors"
    )


def _build_index(args, X, what: str, path: str) -> LPLRIndex:
    """Validate the options, then build on ``X`` (read from the argument ``what``, file ``path``)."""
    index = _make_index(args, X.shape[1])
    log.info("building on %d x %d vectors ...", X.shape[0], X.shape[1])
    t0 = time.perf_counter()
    ids = _load_ids(args, len(X))
    try:
        index.build(_blocks_of(X, args), ids=ids, progress=_progress_setting(args))
    except OverflowError as exc:
        raise _budget_overflow(args, exc) from None
    except (ValueError, TypeError) as exc:
        raise UserError(_user_message(args, exc, {"X": f"{what} file {path}"})) from None
    log.info("built in %.2f s: %s, %.4f bits per coordinate",
             time.perf_counter() - t0, describe_layout(index.layout), index.bits_per_coordinate)
    _warn_if_larger_than_float32(index)
    return index


def _load_ids(args, n: int | None = None) -> np.ndarray | None:
    """The ``--ids FILE`` of a command (integer ids, shape (n,)), or None without it."""
    path = getattr(args, "ids", None)
    if path is None:
        return None
    ids = np.asarray(_load_array(path, "--ids", ndim=1))
    if ids.dtype.kind not in "iu":
        raise UserError(f"--ids file {path} must hold integer ids, got dtype {ids.dtype}")
    if n is not None and len(ids) != n:
        raise UserError(f"--ids file {path} holds {len(ids)} ids, but there are {n} vectors")
    return ids


def _user_message(args, exc: Exception, names: dict[str, str]) -> str:
    """The library's message in the user's terms; one about ``ids`` names the --ids file."""
    message = str(exc)
    if getattr(args, "ids", None) is not None and message.startswith("ids"):
        return f"--ids file {args.ids}: {message.removeprefix('ids').lstrip(': ')}"
    return _in_user_terms(message, names)


def _search_extras(args) -> dict:
    """``allowed`` and ``rescore_with`` of ``search --allowed / --rescore-with`` (loaded once)."""
    extras = getattr(args, "_search_extras", None)
    if extras is None:
        extras = {}
        if getattr(args, "allowed", None) is not None:
            allowed = np.asarray(_load_array(args.allowed, "--allowed", ndim=1))
            if allowed.dtype != bool and allowed.dtype.kind not in "iu":
                raise UserError(f"--allowed file {args.allowed} must hold integer ids or a boolean mask over "
                                f"ids, got dtype {allowed.dtype}")
            extras["allowed"] = allowed
        if getattr(args, "rescore_with", None) is not None:
            extras["rescore_with"] = _load_array(args.rescore_with, "--rescore-with")
        args._search_extras = extras
    return extras


def _blocks_of(X, args):
    """``X`` read ``--block-rows`` rows at a time (re-blocked: the index does not depend on it)."""
    from ._blocks import ArraySource, IterableSource

    if isinstance(X, IterableSource):  # a Parquet source: already reads --block-rows rows at a time
        return X
    return ArraySource(X, "X", read_rows=getattr(args, "block_rows", None))


def _save(index: LPLRIndex, path: str, args) -> None:
    t0 = time.perf_counter()
    nbytes = index.save(path, progress=_progress_setting(args))
    log.info("wrote %s (%s) in %.2f s", path, _size(nbytes), time.perf_counter() - t0)


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def _clamp_k(k: int, ntotal: int, flag: str, where: str = "in the index") -> int:
    """k above the number of vectors is clamped, never allocated (k = 10**6 on 19,000 vectors took 18 GB)."""
    if k > ntotal:
        log.warning(
            "warning: %s %d is more than the %d vectors %s: %d neighbours per query",
            flag, k, ntotal, where, ntotal,
        )
        return ntotal
    return k


def _check_result_size(n_queries: int, k: int, flag: str, what: str, path: str) -> None:
    """Refuse results above the library's cap before allocating them (n_queries * k * 12 bytes)."""
    nbytes = n_queries * k * 12
    if nbytes > MAX_RESULT_BYTES:
        raise UserError(
            f"{flag} {k} for the {n_queries} queries of {what} file {path} needs "
            f"{nbytes / 2**30:.1f} GiB of results, above the {MAX_RESULT_BYTES / 2**30:.0f} GiB limit: "
            f"lower {flag} or split the queries into files of at most "
            f"{MAX_RESULT_BYTES // (12 * k)} rows"
        )


def _check_queries(Q: np.ndarray, dim: int, what: str, path: str) -> None:
    if Q.shape[1] != dim:
        raise UserError(
            f"{what} file {path} has {Q.shape[1]} dimensions, but the index holds {dim}-dimensional vectors"
        )


def _index_search(index: LPLRIndex, Q, k: int, args, what: str, path: str, desc: str = "search"):
    """Search the queries ``Q`` (argument ``what``, file ``path``) in blocks, with a progress bar."""
    D = np.empty((len(Q), k), np.float32)
    I = np.empty((len(Q), k), np.int64)
    with Progress(len(Q), desc, unit="queries", enabled=_progress_setting(args)) as bar:
        for s in range(0, len(Q), _QUERY_BATCH):
            block = np.asarray(Q[s : s + _QUERY_BATCH])
            try:
                extra = {} if getattr(args, "nprobe", None) is None else {"nprobe": args.nprobe}
                D[s : s + len(block)], I[s : s + len(block)] = index.search(
                    block, k, mode=args.mode, **_search_extras(args), **extra)
            except (ValueError, TypeError) as exc:
                shown = f"{what} file {path}"
                names = {"Q": shown, "queries": shown, "nprobe": "--nprobe", "allowed": f"--allowed file {getattr(args, 'allowed', '')}",
                         "rescore_with": f"--rescore-with file {getattr(args, 'rescore_with', '')}"}
                raise UserError(_in_user_terms(str(exc), names)) from None
            bar.update(len(block))
    return D, I


# ------------------------------------------------------------- subcommands
def cmd_build(args) -> dict:
    _check_output(args.output, "-o/--output")
    X = _load_vectors(args, args.embeddings, "embeddings")
    index = _build_index(args, X, "embeddings", args.embeddings)
    _save(index, args.output, args)
    return _index_info(index, args.output)


def cmd_add(args) -> dict:
    target = args.output or args.index
    _check_output(target, "-o/--output" if args.output else "INDEX (updated in place)")
    index = LPLRIndex.load(args.index)
    X = _load_vectors(args, args.embeddings, "embeddings")
    _check_queries(X, index.dim, "embeddings", args.embeddings)
    before = index.ntotal
    ids = _load_ids(args, len(X))
    log.info("encoding %d vectors ...", len(X))
    try:
        index.add(_blocks_of(X, args), ids=ids, progress=_progress_setting(args))
    except (ValueError, TypeError) as exc:
        raise UserError(_user_message(args, exc, {"X": f"embeddings file {args.embeddings}"})) from None
    _warn_if_larger_than_float32(index)
    _save(index, target, args)
    info = _index_info(index, target)
    info["added"] = index.ntotal - before
    return info


def cmd_search(args) -> dict:
    if args.output is not None:
        if Path(args.output).suffix != ".npz":
            raise UserError(
                f"-o/--output {args.output}: search results are written as a NumPy .npz archive; "
                "give a file name ending in .npz"
            )
        _check_output(args.output, "-o/--output")
    index = LPLRIndex.load(args.index, mmap=args.mmap)
    Q = _load_array(args.queries, "queries", column=args.column)
    _check_queries(Q, index.dim, "queries", args.queries)
    k = _clamp_k(args.k, index.ntotal, "-k")
    _check_result_size(len(Q), k, "-k", "queries", args.queries)
    t0 = time.perf_counter()
    D, I = _index_search(index, Q, k, args, "queries", args.queries)
    elapsed = time.perf_counter() - t0
    result: dict[str, Any] = {"n_queries": len(Q), "k": k, "mode": args.mode, "seconds": elapsed}
    if args.output:
        with open(args.output, "wb") as f:  # a file object: numpy appends no suffix
            np.savez(f, distances=D, indices=I)
        result["output"] = args.output
    if args.json:
        result["indices"] = I.tolist()
        result["distances"] = [[_json_number(x) for x in row] for row in D.tolist()]
    elif not args.output:
        result["table"] = _search_table(D, I)
    return result


def cmd_remove(args) -> dict:
    target = args.output or args.index
    _check_output(target, "-o/--output" if args.output else "INDEX (updated in place)")
    index = LPLRIndex.load(args.index)
    ids = _load_ids(args)
    before = len(index)
    try:
        index.remove(ids)
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(_user_message(args, exc, {})) from None
    if args.compact:
        index.compact()
    _save(index, target, args)
    info = _index_info(index, target)
    info["removed"] = before - len(index)
    info["live"] = len(index)
    info["n_removed_stored"] = index.n_removed
    return info


def cmd_plan(args) -> dict:
    if args.bits_per_coordinate is None and args.rank is None:
        raise UserError("give --bits-per-coordinate B (a storage budget) or --rank R")
    if args.bits_per_coordinate is not None and args.rank is not None:
        raise UserError("give either --bits-per-coordinate or --rank, not both")
    sample = None
    if args.sample is not None:
        sample = _load_array(args.sample, "--sample")
        if sample.shape[1] != args.dim:
            raise UserError(f"--sample file {args.sample} has {sample.shape[1]} dimensions, but --dim is {args.dim}")
    try:
        plan = LPLRIndex.plan(
            args.n, args.dim, bits_per_coordinate=args.bits_per_coordinate, rank=args.rank,
            n_queries=args.queries, k=args.k, bits_l=args.bits_l, bits_r=args.bits_r, metric=args.metric,
            quantizer=args.quantizer, refine_iters=args.refine_iters, seed=args.seed, codec=args.codec,
            sample=sample,
        )
    except (ValueError, TypeError) as exc:
        raise UserError(_in_user_terms(str(exc), {"n": "--n", "dim": "--dim", "sample": "--sample"})) from None
    result = dataclasses.asdict(plan)
    if not args.json:
        for key in ("file_bytes", "build_peak_bytes", "search_peak_bytes", "fastscan_bytes"):
            result[key] = f"{result[key]} ({_size(result[key])})"
        if plan.codec == "vq" and sample is None and args.rank is None:  # the data choose the design
            result["rank"] = f"at most {plan.rank} (the data choose it; --sample FILE gives the build's)"
            result["file_bytes"] = f"at most {result['file_bytes']} (the budget)"
    return result


def cmd_info(args) -> dict:
    index = LPLRIndex.load(args.index)
    _warn_if_larger_than_float32(index)
    return _index_info(index, args.index)


def _file_ground_truth(args, n_train: int, n_queries: int, k: int) -> np.ndarray | None:
    """The ``neighbors`` of an ANN-benchmarks --train file, or None where exact search must run.

    Used when --train is an ``.hdf5`` file holding ``neighbors`` and the queries
    are its own ``test`` set (no --test, or --test naming the same file).
    """
    if Path(args.train).suffix.lower() not in (".hdf5", ".h5") or args.test not in (None, args.train):
        return None
    try:
        if "neighbors" not in hdf5_datasets(args.train):
            log.info("--train file %s holds no 'neighbors': computing exact search", args.train)
            return None
        file_metric = hdf5_metric(args.train)
        gt = read_ground_truth(args.train, what="--train")
    except (VectorFileError, ImportError) as exc:
        raise UserError(str(exc)) from None
    if file_metric is not None and file_metric != args.metric:
        raise UserError(
            f"--train file {args.train} holds ground truth for --metric {file_metric}, "
            f"but --metric is {args.metric}: give --metric {file_metric}"
        )
    if gt.shape[0] != n_queries:
        raise UserError(
            f"--train file {args.train} holds neighbors of {gt.shape[0]} queries, but its test set has {n_queries}"
        )
    if gt.size and (gt.min() < -1 or gt.max() >= n_train):
        raise UserError(
            f"--train file {args.train} holds neighbour ids in [{gt.min()}, {gt.max()}], "
            f"but its train set has {n_train} rows"
        )
    if gt.shape[1] < k:
        log.info(
            "--train file %s holds %d neighbours per query, fewer than %d: computing exact search",
            args.train, gt.shape[1], k,
        )
        return None
    return gt[:, :k]


def _eval_index(args, Xb) -> LPLRIndex:
    """``eval --index``: the saved index, checked to hold the --train rows as row numbers."""
    given = [flag for flag, value in (("--bits-per-coordinate", args.bits_per_coordinate), ("--rank", args.rank),
                                      ("--bits-l", args.bits_l)) if value is not None]
    if given:
        raise UserError(f"--index scores a saved index: {', '.join(given)} would build another; give one or the other")
    index = LPLRIndex.load(args.index)
    if index.dim != Xb.shape[1]:
        raise UserError(f"--index file {args.index} holds {index.dim}-dimensional vectors, "
                        f"but --train file {args.train} has {Xb.shape[1]} dimensions")
    if index.has_user_ids or index.n_removed or index.ntotal != len(Xb):
        raise UserError(f"--index file {args.index} must hold the {len(Xb)} --train rows in order with their row "
                        f"numbers as ids; it holds {len(index)} live vectors"
                        + (" with user ids" if index.has_user_ids else ""))
    args.metric = index.metric  # the exact search and the error follow the index's metric
    log.info("scoring %s: %s", args.index, describe_layout(index.layout))
    return index


def cmd_eval(args) -> dict:
    hdf5 = Path(args.train).suffix.lower() in (".hdf5", ".h5")
    if args.test is None and not hdf5:
        raise UserError("give --test (query embeddings); only an .hdf5 --train file holds its own queries")
    if (args.train_labels is None) != (args.test_labels is None):
        raise UserError("give both --train-labels and --test-labels, or neither (recall only)")
    Xb = _load_array(args.train, "--train", column=args.column)
    test = args.test or args.train
    Xq = _load_array(test, "--test", column=args.column)
    labelled = args.train_labels is not None
    if labelled:
        yb = _load_array(args.train_labels, "--train-labels", ndim=1)
        yq = _load_array(args.test_labels, "--test-labels", ndim=1)
        if len(yb) != len(Xb):
            raise UserError(
                f"--train-labels file {args.train_labels} has {len(yb)} labels, "
                f"but --train file {args.train} has {len(Xb)} rows"
            )
        if len(yq) != len(Xq):
            raise UserError(
                f"--test-labels file {args.test_labels} has {len(yq)} labels, "
                f"but --test file {test} has {len(Xq)} rows"
            )
    if Xq.shape[1] != Xb.shape[1]:
        raise UserError(
            f"--test file {test} has {Xq.shape[1]} dimensions, "
            f"but --train file {args.train} has {Xb.shape[1]}"
        )
    n = len(Xb)
    where = f"of --train {args.train}"
    k_vote = _clamp_k(args.k, n, "-k", where)
    recall_k = _clamp_k(args.recall_k, n, "--recall-k", where)
    k = max(k_vote, recall_k)
    _check_result_size(len(Xq), k, "--recall-k" if recall_k >= k_vote else "-k", "--test", test)
    I_true = _file_ground_truth(args, n, len(Xq), k)
    index = _eval_index(args, Xb) if args.index else _build_index(args, Xb, "--train", args.train)
    D, I = _index_search(index, Xq, k, args, "--test", test, desc="compressed search")
    if I_true is None:
        _, I_true = exact_knn(Xb, Xq, k, metric=args.metric, progress=_progress_setting(args))
        ground_truth = "exact search"
    else:
        ground_truth = f"{args.train}:neighbors"
    result = {
        "k": k_vote,
        "bits_per_coordinate": index.bits_per_coordinate,
        "rank": index.rank,
        "bits_l": index.bits_l,
    }
    if labelled:
        y_pred = knn_vote(I[:, :k_vote], yb)
        y_exact = knn_vote(I_true[:, :k_vote], yb)
        result.update({
            "accuracy": accuracy(yq, y_pred),
            "weighted_f1": weighted_f1(yq, y_pred),
            "exact_accuracy": accuracy(yq, y_exact),
            "exact_weighted_f1": weighted_f1(yq, y_exact),
        })
    from .evaluation import rate_distortion

    # cosine indexes store unit vectors: their error is against the normalised rows
    rd = rate_distortion(_unit_rows(Xb) if args.metric == "cosine" else Xb, index, index.bits_per_coordinate)
    result.update({
        f"recall_{recall_k}@{recall_k}": recall_at_k(I, I_true, recall_k),
        f"neighbour_overlap@{recall_k}": neighbour_overlap(I[:, :recall_k], I_true[:, :recall_k]),
        # the Gaussian rate-distortion reference of the --train vectors at the index's rate
        "rd_ratio": rd.ratio,
        "rd_equivalent_bits_per_coordinate": rd.equivalent_bits,
        # the ratio the index's code options reach at best on Gaussian data of that covariance
        "rd_floor_ratio": rd.floor_ratio,
        "relative_error": rd.relative_error,
        "rd_reference_relative_error": rd.reference_relative_error,
        "ground_truth": ground_truth,
        "fit_error": index.fit_error,
    })
    return result


# ------------------------------------------------------------------ parser
def _add_index_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bits-per-coordinate", "-b", type=_budget, metavar="B",
                   help="storage budget in bits per coordinate, everything counted (e.g. 1 or 0.5)")
    p.add_argument("--rank", type=_int_in(1), metavar="R", help="explicit rank instead of a budget")
    p.add_argument("--bits-l", type=_int_in(1, MAX_BITS), default=None, metavar="BITS",
                   help=f"bits per code of each vector, 1-{MAX_BITS} (default: chosen from the budget)")
    p.add_argument("--bits-r", type=_int_in(1, MAX_BITS), default=8, metavar="BITS",
                   help=f"bits per entry of the shared factor, 1-{MAX_BITS} (default: 8)")
    p.add_argument("--metric", choices=METRICS, default="l2", help="default: l2")
    p.add_argument("--quantizer", choices=SCHEMES, default="mse-col", help="default: mse-col")
    p.add_argument("--refine-iters", type=_int_in(0, 100), default=2, metavar="N",
                   help="alternating refinement rounds, 0-100 (default: 2)")
    p.add_argument("--seed", type=_int_in(0), default=0, help="seed of the sketch (default: 0)")
    p.add_argument("--codec", choices=CODECS, default="auto",
                   help="codes: 'vq' groups of principal directions sharing 4-bit codes, rates by variance; "
                        "'scalar' the paper's one code per direction; 'auto' (default) vq with a budget, "
                        "scalar with --rank or --bits-l"),


#: the vector files the commands read, for --help
_VECTOR_FILES = ".npy, .npz, .fvecs, .bvecs, .hdf5, or Parquet (a file, a folder or a glob of them; see --column)"


def _add_column(p: argparse.ArgumentParser, ids: bool = False) -> None:
    p.add_argument("--column", metavar="NAME",
                   help="Parquet files: the vector column, a list or fixed_size_list of float16/32/64 or binary "
                        "raw float32 (default: the only column of vectors); needs pip install "
                        "\"lplr-index[parquet]\"")
    if ids:
        p.add_argument("--id-column", metavar="NAME",
                       help="Parquet files: a column of integer ids of the vectors (instead of --ids)")


def _add_block_rows(p: argparse.ArgumentParser) -> None:
    p.add_argument("--block-rows", type=_int_in(1), default=None, metavar="N",
                   help="rows read from the embeddings file at a time (default: 16384); the index does not "
                        "depend on it, the file is never read whole into memory")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lplr-index`` (errors: one line, exit status 1)."""
    parser = _Parser(prog=PROG, description="Compressed k-NN index (LPLR).")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no log lines on stderr (warnings and errors still)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (shown only on a terminal anyway)")
    parser.add_argument("--threads", type=_int_in(1, 1024), default=DEFAULT_THREADS, metavar="N",
                        help=f"BLAS and faiss threads (default: {DEFAULT_THREADS}, the fastest measured on a busy "
                             "2-core machine; use the number of idle cores on a quiet one)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("build", help="build an index from an (n, dim) vector file (.npy, Parquet, ...)")
    p.add_argument("embeddings", help=f"(n, dim) vectors to index: {_VECTOR_FILES}")
    p.add_argument("-o", "--output", required=True, help="index file to write (its folder must exist)")
    p.add_argument("--ids", metavar="FILE", help="(n,) integer ids of the vectors (default: 0 .. n-1)")
    _add_column(p, ids=True)
    _add_index_options(p)
    p.add_argument("--nlist", type=_nlist, default=None, metavar="N|auto",
                   help="partitioned search: N coarse lists (1-2^20), or 'auto' (none below "
                        f"{AUTO_NLIST_MIN_ROWS:,} vectors); default: none (exhaustive search)")
    _add_block_rows(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("add", help="encode more vectors into an index (no refit)")
    p.add_argument("index", help="index file (replaced unless -o is given)")
    p.add_argument("embeddings", help=f"(n, dim) vectors to add: {_VECTOR_FILES}")
    p.add_argument("-o", "--output", help="write here instead of replacing INDEX")
    p.add_argument("--ids", metavar="FILE", help="(n,) integer ids of the vectors (default: after the largest id)")
    _add_column(p, ids=True)
    _add_block_rows(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_add)

    p = sub.add_parser("remove", help="remove vectors by id (searches never return them)")
    p.add_argument("index", help="index file (replaced unless -o is given)")
    p.add_argument("--ids", metavar="FILE", required=True, help="(m,) integer ids of the vectors to remove")
    p.add_argument("--compact", action="store_true", help="also drop the removed rows from the file")
    p.add_argument("-o", "--output", help="write here instead of replacing INDEX")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_remove)

    p = sub.add_parser("search", help="k nearest neighbours of each query")
    p.add_argument("index", help="index file")
    p.add_argument("queries", help=f"(n_queries, dim) query vectors: {_VECTOR_FILES}")
    _add_column(p)
    p.add_argument("-k", type=_int_in(1), default=10,
                   help="neighbours per query (default: 10; at most the index's size)")
    p.add_argument("-o", "--output", metavar="OUT.npz",
                   help="write distances and indices (n_queries, k) to this .npz file")
    p.add_argument("--mode", choices=SEARCH_MODES, default="auto",
                   help="default: auto (fast-scan with exact re-ranking for 4-bit codes, else the exact scan)")
    p.add_argument("--mmap", action="store_true", help="map the codes from the file")
    p.add_argument("--nprobe", type=_int_in(1), default=None, metavar="N",
                   help="an index built with --nlist: the lists to scan (default: the one measured at build)")
    p.add_argument("--allowed", metavar="FILE",
                   help="only these may be returned: (m,) integer ids, or a boolean mask over ids")
    p.add_argument("--rescore-with", metavar="FILE",
                   help="(ntotal, dim) original vectors in the index's row order: re-score the candidates exactly")
    p.add_argument("--json", action="store_true",
                   help="print every result as JSON (default: a table of the first queries)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("plan", help="rank, file size and peak memory of a build and a search, without data "
                                     "or from a sample of it")
    p.add_argument("--n", type=_int_in(1), required=True, metavar="N", help="vectors to index")
    p.add_argument("--dim", type=_int_in(1), required=True, metavar="D", help="their dimension")
    p.add_argument("--sample", metavar="FILE",
                   help="(m, dim) vectors of the data (any vector file): grouped codes then choose their "
                        "design on them as the build does, and the plan gives that design's exact file size "
                        "(all n rows: the build's own); without it, a budget's rank and file size are upper bounds")
    _add_index_options(p)
    p.add_argument("--queries", type=_int_in(1), default=1000, metavar="NQ",
                   help="queries per search call for the search peak (default: 1000)")
    p.add_argument("-k", type=_int_in(1), default=10, help="neighbours per query (default: 10)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("info", help="settings, size and measured bits of an index")
    p.add_argument("index", help="index file")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "eval",
        help="k-NN accuracy, F1 and recall of a compressed index against exact search",
        description="Build an index on --train, search it with --test, and compare with the true "
        "neighbours: the 'neighbors' of an ANN-benchmarks .hdf5 --train file (whose 'test' set is "
        "the queries when --test is not given), otherwise an exact search. With labels, also the "
        "k-NN accuracy and weighted F1. Files: .npy, .npz, .fvecs, .bvecs, .ivecs, .hdf5, Parquet "
        "(vectors, with --column); PATH:NAME picks a member of an .npz or .hdf5 file.",
    )
    p.add_argument("--train", required=True,
                   help="(n, dim) database embeddings, or an ANN-benchmarks .hdf5 file (train, test, neighbors)")
    p.add_argument("--train-labels", help="(n,) labels (optional: without labels, recall only)")
    p.add_argument("--test", help="(n_test, dim) query embeddings (default with an .hdf5 --train: its 'test' set)")
    p.add_argument("--test-labels", help="(n_test,) labels (with --train-labels)")
    p.add_argument("--index", metavar="FILE",
                   help="score this saved index (built on the --train rows, in order, without user ids) instead "
                        "of building one; the index options below are then not given")
    _add_column(p)
    p.add_argument("-k", type=_int_in(1), default=3, help="neighbours that vote (default: 3)")
    p.add_argument("--recall-k", type=_int_in(1), default=10, help="k of recall k@k (default: 10)")
    p.add_argument("--mode", choices=SEARCH_MODES, default="auto",
                   help="default: auto (fast-scan with exact re-ranking for 4-bit codes, else the exact scan)")
    _add_index_options(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_eval)
    for p in sub.choices.values():  # also after the command: lplr-index build ... --threads 2
        p.add_argument("--threads", type=_int_in(1, 1024), default=argparse.SUPPRESS, metavar="N",
                       help=f"BLAS and faiss threads (default: {DEFAULT_THREADS})")
    return parser


def _render(result: dict, args) -> None:
    table = result.pop("table", None)
    if table is not None and not args.json:
        _emit(result, False)
        print()
        print("\n".join(table))
    else:
        _emit(result, args.json)


@contextmanager
def _log_to_stderr(*, quiet: bool) -> Iterator[None]:
    """The library's log lines on stderr while a command runs (warnings only with -q).

    The handler sits on the ``lplr_index`` logger, not the root, and is removed
    afterwards, so ``main`` called from Python leaves the caller's logging as it was.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lplr-index`` console script.

    Parameters
    ----------
    argv : list of str, default=None
        Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    int
        0 on success (and after ``--help``), 1 after a user mistake (one line on
        stderr), 130 after Ctrl-C.
    """
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help, --version, or a parse error already printed
            return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        with limit_threads(args.threads), _log_to_stderr(quiet=args.quiet):
            result = args.func(args)
        _render(result, args)
    except (UserError, IndexFileError, ValueError, TypeError, RuntimeError, IndexError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except MemoryError as exc:
        print(f"{PROG}: error: not enough memory for this request ({exc or 'MemoryError'})", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `lplr-index search ... | head`: stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - suppress the flush error at exit
        return 0
    except OSError as exc:
        detail = exc.strerror or str(exc)
        if exc.filename and str(exc.filename) not in detail:
            detail = f"{detail}: {exc.filename}"
        print(f"{PROG}: error: {detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def _unit_rows(X):
    from .evaluation import _normalize_rows

    return _normalize_rows(np.asarray(X, np.float32))
